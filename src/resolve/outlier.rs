//! Outlier ejection (gRPC A50, linkerd's failure accrual): callers' reported outcomes take an
//! address out of selection for a while when it fails too often, for a time that grows with each
//! repeat ejection. When that time ends the address gets a trial: its next reported outcome
//! decides (a failure ejects it again at once, a success clears it).
//!
//! Two detectors, as A50 has them: consecutive failures (checked as each outcome is reported),
//! and failure percentage over an interval among addresses with enough requests (checked by the
//! resolver's sweep every interval, which also ends ejections that are due). A route never has
//! more than `max_ejection_percent` of its addresses (at least one) out at once: the rest stay
//! usable (see [`crate::resolve::RouteEntry`]).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;

use super::endpoint::{note_disrupted, Endpoint};
use crate::config::duration;

/// Outlier ejection settings; the defaults are gRPC A50's.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutlierConfig {
    /// Whether reported outcomes eject addresses at all.
    pub enabled: bool,
    /// Consecutive reported failures that eject an address (0 turns this detector off).
    pub consecutive_failures: u32,
    /// How often the failure percentage is evaluated and due ejections end.
    #[serde(deserialize_with = "duration::deserialize")]
    pub interval: Duration,
    /// Failure percentage over one interval that ejects an address (0 turns this detector off).
    pub failure_percentage: u32,
    /// Reported outcomes an address needs in an interval before its percentage counts.
    pub minimum_requests: u32,
    /// How long a first ejection lasts; the n-th lasts n times as long.
    #[serde(deserialize_with = "duration::deserialize")]
    pub base_ejection: Duration,
    /// The longest an ejection lasts.
    #[serde(deserialize_with = "duration::deserialize")]
    pub max_ejection: Duration,
    /// The largest share of a route's addresses out at once, in percent (at least one address,
    /// unless 0). Applied to a route's first 64 addresses, lowest index first.
    pub max_ejection_percent: u32,
}

impl OutlierConfig {
    /// Refuses percentages over 100.
    pub fn validate(&self) -> crate::error::Result<()> {
        for (name, value) in [
            ("failure_percentage", self.failure_percentage),
            ("max_ejection_percent", self.max_ejection_percent),
        ] {
            if value > 100 {
                return Err(crate::error::Error::invalid_input(format!(
                    "outlier.{name} {value} is over 100"
                )));
            }
        }
        Ok(())
    }
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            enabled: true,
            consecutive_failures: 5,
            interval: Duration::from_secs(10),
            failure_percentage: 85,
            minimum_requests: 50,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 10,
        }
    }
}

/// How many of a route's `addresses` may be ejected at once with at most `percent` of them
/// out (at least one); none when ejection is off (`None`).
pub(crate) fn ejection_budget(percent: Option<u32>, addresses: usize) -> usize {
    match percent {
        None | Some(0) => 0,
        Some(percent) => (addresses * percent.min(100) as usize / 100).max(1),
    }
}

/// One endpoint's outlier state. Selection reads one flag; everything else changes only when
/// outcomes are reported and at sweeps.
#[derive(Debug, Default)]
pub(crate) struct Outlier {
    /// When the current ejection ends (ms since the epoch); 0 when not ejected.
    ejected_until_ms: AtomicU64,
    /// Ejections so far (the multiplier of the next one's length).
    ejections: AtomicU32,
    consecutive_failures: AtomicU32,
    /// Outcomes in the current interval.
    window_ok: AtomicU32,
    window_failed: AtomicU32,
    /// An ejection just ended: the next outcome decides.
    on_trial: AtomicBool,
}

impl Outlier {
    /// Whether the endpoint is out of selection now.
    pub(crate) fn is_ejected(&self) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) != 0
    }

    /// Ejections so far.
    #[cfg(test)]
    pub(crate) fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }
}

/// Records one reported outcome for `endpoint`; returns whether it ejected the endpoint.
pub(crate) fn record(config: &OutlierConfig, endpoint: &Endpoint, ok: bool, now_ms: u64) -> bool {
    if !config.enabled {
        return false;
    }
    let state = &endpoint.outlier;
    if ok {
        state.window_ok.fetch_add(1, Ordering::Relaxed);
        state.consecutive_failures.store(0, Ordering::Relaxed);
        if state.on_trial.swap(false, Ordering::Relaxed) {
            tracing::info!(address = %endpoint.address(), "address passed its trial after an ejection");
        }
        return false;
    }
    state.window_failed.fetch_add(1, Ordering::Relaxed);
    let failures = state.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
    if state.is_ejected() {
        return false;
    }
    if state.on_trial.swap(false, Ordering::Relaxed) {
        return eject(config, endpoint, now_ms, "failed its trial");
    }
    if config.consecutive_failures > 0 && failures >= config.consecutive_failures {
        return eject(config, endpoint, now_ms, "consecutive failures");
    }
    false
}

/// Ends due ejections (each address then gets its trial) and ejects addresses whose failure
/// percentage over the interval just ended is too high; starts the next interval. Returns how
/// many it ejected.
pub(crate) fn sweep<'a>(
    config: &OutlierConfig,
    endpoints: impl IntoIterator<Item = &'a Endpoint>,
    now_ms: u64,
) -> usize {
    let mut ejected = 0;
    for endpoint in endpoints {
        let state = &endpoint.outlier;
        let until = state.ejected_until_ms.load(Ordering::Relaxed);
        let ok = state.window_ok.swap(0, Ordering::Relaxed);
        let failed = state.window_failed.swap(0, Ordering::Relaxed);
        if until != 0 && now_ms >= until {
            if state.ejected_until_ms.swap(0, Ordering::Relaxed) != 0 {
                note_disrupted(false);
            }
            state.consecutive_failures.store(0, Ordering::Relaxed);
            state.on_trial.store(true, Ordering::Relaxed);
            tracing::info!(address = %endpoint.address(), "ejection over; the address is on trial");
            // The interval just ended ran mostly while it was out: its trial decides, not that.
            continue;
        }
        if until == 0 && !state.on_trial.load(Ordering::Relaxed) {
            // A50: an interval without ejection lowers the next ejection's multiplier.
            let _ = state
                .ejections
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
        let total = u64::from(ok) + u64::from(failed);
        if config.enabled
            && config.failure_percentage > 0
            && total > 0
            && total >= u64::from(config.minimum_requests)
            && u64::from(failed) * 100 >= u64::from(config.failure_percentage) * total
            && !state.is_ejected()
            && eject(config, endpoint, now_ms, "failure percentage")
        {
            ejected += 1;
        }
    }
    ejected
}

/// Ejects `endpoint` unless it is out already (of two reports racing, one ejects).
fn eject(config: &OutlierConfig, endpoint: &Endpoint, now_ms: u64, why: &str) -> bool {
    let state = &endpoint.outlier;
    let count = state.ejections.load(Ordering::Relaxed) + 1;
    let length = config
        .base_ejection
        .saturating_mul(count)
        .min(config.max_ejection.max(config.base_ejection));
    let until = now_ms.saturating_add(length.as_millis() as u64).max(1);
    if state
        .ejected_until_ms
        .compare_exchange(0, until, Ordering::Relaxed, Ordering::Relaxed)
        .is_err()
    {
        return false;
    }
    state.ejections.fetch_add(1, Ordering::Relaxed);
    note_disrupted(true);
    state.consecutive_failures.store(0, Ordering::Relaxed);
    tracing::warn!(address = %endpoint.address(), reason = why, ejection = count, ?length, "address ejected");
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Address;

    fn config() -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(3),
            minimum_requests: 10,
            failure_percentage: 50,
            ..OutlierConfig::default()
        }
    }

    #[test]
    fn consecutive_failures_eject_for_longer_each_time_then_a_trial_decides() {
        let (config, endpoint) = (config(), Endpoint::new(Address::new("10.0.0.1", 1)));
        assert!(!record(&config, &endpoint, false, 0));
        assert!(
            !record(&config, &endpoint, true, 0),
            "a success resets the count"
        );
        assert!(!record(&config, &endpoint, false, 0));
        assert!(!record(&config, &endpoint, false, 0));
        assert!(record(&config, &endpoint, false, 0));
        assert!(endpoint.outlier.is_ejected());
        assert_eq!(sweep(&config, [&endpoint], 999), 0);
        assert!(endpoint.outlier.is_ejected(), "not due yet");
        sweep(&config, [&endpoint], 1000);
        assert!(!endpoint.outlier.is_ejected(), "due: on trial");
        // The trial fails: out again at once, for twice as long.
        assert!(record(&config, &endpoint, false, 1000));
        sweep(&config, [&endpoint], 2999);
        assert!(endpoint.outlier.is_ejected());
        sweep(&config, [&endpoint], 3000);
        assert!(!endpoint.outlier.is_ejected());
        // The trial passes: back for good.
        assert!(!record(&config, &endpoint, true, 3000));
        assert!(!record(&config, &endpoint, false, 3000));
        assert!(!endpoint.outlier.is_ejected());
        assert_eq!(endpoint.outlier.ejections(), 2);
    }

    #[test]
    fn a_high_failure_percentage_ejects_once_there_are_enough_requests() {
        let config = OutlierConfig {
            consecutive_failures: 0,
            ..config()
        };
        let endpoint = Endpoint::new(Address::new("10.0.0.1", 1));
        for i in 0..8 {
            record(&config, &endpoint, i % 2 == 0, 0);
        }
        assert_eq!(sweep(&config, [&endpoint], 0), 0, "too few requests");
        for i in 0..10 {
            record(&config, &endpoint, i % 2 == 0, 0);
        }
        assert_eq!(sweep(&config, [&endpoint], 0), 1);
        assert!(endpoint.outlier.is_ejected());
        assert_eq!(ejection_budget(Some(10), 3), 1);
        assert_eq!(ejection_budget(Some(10), 40), 4);
        assert_eq!(ejection_budget(None, 40), 0);
        assert_eq!(ejection_budget(Some(0), 40), 0);
    }
}
