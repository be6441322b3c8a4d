//! Peak EWMA (linkerd's and Finagle's default balancer): of two addresses drawn at random, the
//! one whose expected wait is shorter, where the wait is the address's round-trip time estimate
//! (see the estimate's rules in the resolver's `latency` module) times its calls in flight plus
//! one. Completed calls feed the estimate: their latency, and a failure counts as a slow call,
//! so an address that fails fast does not draw traffic for being fast.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::power_of_two::two_choices;
use super::{Candidates, Completion, Outcome, Pick, Selector};
use crate::clock::monotonic_ms;
use crate::config::duration;
use crate::resolve::latency::stamp;
use crate::route::Address;

/// Peak-EWMA settings (linkerd's defaults).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeakEwmaConfig {
    /// The estimate of an address with no completed call yet; default 30 ms.
    #[serde(deserialize_with = "duration::deserialize")]
    pub default_rtt: Duration,
    /// The time constant of the moving average: how long a peak is remembered, and how fast
    /// an idle address's estimate fades; default 10 s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub decay: Duration,
}

impl Default for PeakEwmaConfig {
    fn default() -> Self {
        PeakEwmaConfig {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
        }
    }
}

/// How much slower than the worst of its latency, the current estimate and the default RTT a
/// failed call counts (so failures in a row push an address's estimate up quickly)...
const FAILURE_PENALTY: f64 = 2.0;

/// ...up to this many default RTTs (or twice its own latency, if longer), so that a burst of
/// failures costs an address its traffic for about `decay` x ln(this), not for minutes:
/// ejection is what takes out an address that keeps failing.
const FAILURE_CEILING: f64 = 10.0;

/// Picks by expected wait, learning from every completed call (see the module docs).
#[derive(Debug, Default, Clone)]
pub struct PeakEwma {
    config: PeakEwmaConfig,
}

impl PeakEwma {
    /// A peak-EWMA selector with these settings.
    pub fn new(config: PeakEwmaConfig) -> Self {
        PeakEwma { config }
    }
}

impl Selector for PeakEwma {
    fn name(&self) -> &'static str {
        "peak_ewma"
    }

    fn build(&self, _addresses: &[Arc<Address>]) -> Box<dyn Pick> {
        Box::new(PeakEwmaPick {
            default_us: self.config.default_rtt.as_secs_f64() * 1e6,
            // At least a millisecond: the decay divides by it.
            decay_ms: (self.config.decay.as_secs_f64() * 1e3).max(1.0),
        })
    }

    fn uses_load(&self) -> bool {
        true
    }

    fn times_calls(&self) -> bool {
        true
    }
}

#[derive(Debug)]
struct PeakEwmaPick {
    default_us: f64,
    decay_ms: f64,
}

impl PeakEwmaPick {
    /// Candidate `i`'s expected wait at `now`: its estimate times its calls in flight plus one.
    fn cost(&self, candidates: &Candidates<'_>, i: usize, now: u32) -> f64 {
        let rtt = candidates
            .endpoint(i)
            .rtt
            .estimate_us(now, self.decay_ms, self.default_us);
        rtt * (candidates.in_flight(i) + 1) as f64
    }
}

impl Pick for PeakEwmaPick {
    fn pick(&self, candidates: &Candidates<'_>, _key: Option<&[u8]>) -> Option<usize> {
        two_choices(candidates, |a, b| {
            let now = stamp(monotonic_ms());
            self.cost(candidates, b, now) < self.cost(candidates, a, now)
        })
    }

    fn completed(&self, candidates: &Candidates<'_>, index: usize, call: Completion) {
        let now = stamp(monotonic_ms());
        let rtt = &candidates.endpoint(index).rtt;
        let mut sample = call.latency.as_secs_f64() * 1e6;
        if call.outcome == Outcome::Failed {
            let estimate = rtt.estimate_us(now, self.decay_ms, self.default_us);
            let ceiling = (self.default_us * FAILURE_CEILING).max(sample * FAILURE_PENALTY);
            sample = (sample.max(estimate).max(self.default_us) * FAILURE_PENALTY).min(ceiling);
        }
        rtt.observe(sample, now, self.decay_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::Endpoint;

    fn endpoints(n: u16) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| Arc::new(Endpoint::new(Address::new("127.0.0.1", 9000 + i))))
            .collect()
    }

    fn shares(pick: &dyn Pick, endpoints: &[Arc<Endpoint>], draws: usize) -> Vec<usize> {
        let candidates = Candidates::new(endpoints, false);
        let mut counts = vec![0; endpoints.len()];
        for _ in 0..draws {
            counts[pick.pick(&candidates, None).unwrap()] += 1;
        }
        counts
    }

    fn finish(pick: &dyn Pick, endpoints: &[Arc<Endpoint>], i: usize, ms: u64, outcome: Outcome) {
        let call = Completion {
            latency: Duration::from_millis(ms),
            outcome,
        };
        pick.completed(&Candidates::new(endpoints, false), i, call);
    }

    #[test]
    fn the_faster_address_wins_every_comparison() {
        let endpoints = endpoints(2);
        let pick = PeakEwma::default().build(&[]);
        finish(pick.as_ref(), &endpoints, 0, 2, Outcome::Succeeded);
        finish(pick.as_ref(), &endpoints, 1, 40, Outcome::Succeeded);
        assert_eq!(shares(pick.as_ref(), &endpoints, 200), vec![200, 0]);
    }

    #[test]
    fn calls_in_flight_count_against_an_address() {
        let endpoints = endpoints(2);
        let pick = PeakEwma::default().build(&[]);
        finish(pick.as_ref(), &endpoints, 0, 10, Outcome::Succeeded);
        finish(pick.as_ref(), &endpoints, 1, 15, Outcome::Succeeded);
        // Twice as fast, but three calls waiting: 10 ms x 4 is longer than 15 ms x 1.
        for _ in 0..3 {
            endpoints[0].begin_call();
        }
        assert_eq!(shares(pick.as_ref(), &endpoints, 200), vec![0, 200]);
    }

    #[test]
    fn a_fast_failure_counts_as_a_slow_call() {
        let endpoints = endpoints(2);
        let pick = PeakEwma::default().build(&[]);
        finish(pick.as_ref(), &endpoints, 0, 1, Outcome::Failed);
        finish(pick.as_ref(), &endpoints, 1, 20, Outcome::Succeeded);
        assert_eq!(shares(pick.as_ref(), &endpoints, 200), vec![0, 200]);
    }

    #[test]
    fn failures_in_a_row_raise_the_estimate_to_a_ceiling() {
        let endpoints = endpoints(1);
        let pick = PeakEwma::default().build(&[]);
        for _ in 0..20 {
            finish(pick.as_ref(), &endpoints, 0, 1, Outcome::Failed);
        }
        let now = stamp(monotonic_ms());
        let estimate = endpoints[0].rtt.estimate_us(now, 10_000.0, 30_000.0);
        // Ten default RTTs (300 ms), not 2^20 x 30 ms.
        assert!((250_000.0..=300_000.0).contains(&estimate), "{estimate}");
    }

    #[test]
    fn unsampled_addresses_tie_and_share() {
        let endpoints = endpoints(3);
        let pick = PeakEwma::default().build(&[]);
        let counts = shares(pick.as_ref(), &endpoints, 3_000);
        assert!(counts.iter().all(|&c| c > 500), "{counts:?}");
    }
}
