//! Selectors: how one address is picked among a route's usable addresses.
//!
//! A [`Selector`] builds a [`Pick`] for each route whenever the route's addresses change (off the
//! hot path: rings and weight tables are built here); the `Pick` then chooses among the route's
//! [`Candidates`] on every resolution without locking or allocating.

mod consistent_hash;
mod least_connections;
mod least_resource;
mod peak_ewma;
mod power_of_two;
mod random;
mod round_robin;
mod weighted;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use consistent_hash::ConsistentHash;
pub use least_connections::LeastConnections;
pub use least_resource::LeastResource;
pub use peak_ewma::{PeakEwma, PeakEwmaConfig};
pub use power_of_two::PowerOfTwoChoices;
pub use random::Random;
pub use round_robin::RoundRobin;
pub use weighted::Weighted;

use super::endpoint::Endpoint;
use crate::error::{Error, Result};
use crate::route::Address;

/// A selection algorithm: builds the per-route state that picks addresses.
pub trait Selector: Send + Sync + fmt::Debug {
    /// The name used in configuration (`round_robin`, `consistent_hash`, ...).
    fn name(&self) -> &'static str;

    /// Builds the picking state for a route with these addresses (in this order).
    fn build(&self, addresses: &[Arc<Address>]) -> Box<dyn Pick>;

    /// Whether picks read in-flight counts. Only then does a resolution count its call (two
    /// atomic updates that selectors blind to load are spared).
    fn uses_load(&self) -> bool {
        false
    }

    /// Whether picks learn from finished calls ([`Pick::completed`]). Only then does a
    /// resolution read the clock, to time its call.
    fn times_calls(&self) -> bool {
        false
    }
}

/// How a call to a resolved address ended, as the caller told it.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// [`Resolved::succeeded`](crate::resolve::Resolved::succeeded).
    Succeeded,
    /// [`Resolved::failed`](crate::resolve::Resolved::failed).
    Failed,
    /// Dropped without a verdict: the call's time is known, its result is not.
    Unknown,
}

/// A finished call to a resolved address.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// From the resolution to the verdict (or the drop).
    pub latency: Duration,
    /// How it ended.
    pub outcome: Outcome,
}

/// Per-route picking state, built by a [`Selector`].
pub trait Pick: Send + Sync + fmt::Debug {
    /// The index of the chosen candidate, or `None` if no candidate is usable.
    /// `key` is the caller's affinity key (used by consistent hashing).
    fn pick(&self, candidates: &Candidates<'_>, key: Option<&[u8]>) -> Option<usize>;

    /// Fills `out` with distinct usable candidates other than `chosen`, in the order a retry
    /// should try them; returns how many it wrote. By default: the usable candidates after
    /// `chosen` in turn (round robin's next turns).
    fn alternates(
        &self,
        candidates: &Candidates<'_>,
        _key: Option<&[u8]>,
        chosen: usize,
        out: &mut [usize],
    ) -> usize {
        let n = candidates.len();
        let mut written = 0;
        for step in 1..n {
            if written == out.len() {
                break;
            }
            let i = (chosen + step) % n;
            if candidates.is_usable(i) {
                out[written] = i;
                written += 1;
            }
        }
        written
    }

    /// A call to candidate `index` finished (only for selectors that
    /// [time calls](Selector::times_calls)). By default nothing is learnt.
    fn completed(&self, _candidates: &Candidates<'_>, _index: usize, _call: Completion) {}
}

/// The addresses of one route as a selector sees them: usable or not, and their load.
#[derive(Debug)]
pub struct Candidates<'a> {
    endpoints: &'a [Arc<Endpoint>],
    ignore_health: bool,
    /// Of the first 64 candidates, those ejected as outliers (bit `i` for candidate `i`).
    ejected: u64,
}

impl<'a> Candidates<'a> {
    /// Candidates over `endpoints`; with `ignore_health` every one is usable (fail-open).
    pub fn new(endpoints: &'a [Arc<Endpoint>], ignore_health: bool) -> Self {
        Candidates {
            endpoints,
            ignore_health,
            ejected: 0,
        }
    }

    /// Candidates of which those in the `ejected` mask are out as outliers too.
    pub(crate) fn with_ejected(endpoints: &'a [Arc<Endpoint>], ejected: u64) -> Self {
        Candidates {
            endpoints,
            ignore_health: false,
            ejected,
        }
    }

    /// How many addresses the route has.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether the route has no address.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// Whether candidate `i` may be chosen: healthy and not ejected, or any candidate when
    /// failing open (panic mode).
    pub fn is_usable(&self, i: usize) -> bool {
        self.ignore_health
            || (self.endpoints[i].is_healthy() && (i >= 64 || self.ejected & (1 << i) == 0))
    }

    /// Calls in flight to candidate `i`.
    pub fn in_flight(&self, i: usize) -> usize {
        self.endpoints[i].in_flight()
    }

    /// Candidate `i`'s endpoint (the state selectors in this crate keep per address).
    pub(crate) fn endpoint(&self, i: usize) -> &Endpoint {
        &self.endpoints[i]
    }

    /// The address of candidate `i`.
    pub fn address(&self, i: usize) -> &Address {
        self.endpoints[i].address()
    }

    /// The first usable candidate at or after `start`, wrapping around.
    pub fn first_usable_from(&self, start: usize) -> Option<usize> {
        let n = self.len();
        let start = if n == 0 { 0 } else { start % n };
        (start..n).chain(0..start).find(|&i| self.is_usable(i))
    }
}

/// The built-in selectors, by configuration name.
pub const SELECTOR_NAMES: &[&str] = &[
    "round_robin",
    "random",
    "consistent_hash",
    "least_connections",
    "p2c",
    "weighted",
    "peak_ewma",
    "least_resource",
];

/// A built-in selector by its configuration name (see [`SELECTOR_NAMES`]).
pub fn selector_by_name(name: &str) -> Result<Arc<dyn Selector>> {
    Ok(match name {
        "round_robin" => Arc::new(RoundRobin),
        "random" => Arc::new(Random),
        "consistent_hash" => Arc::new(ConsistentHash::default()),
        "least_connections" => Arc::new(LeastConnections),
        "p2c" => Arc::new(PowerOfTwoChoices),
        "weighted" => Arc::new(Weighted),
        "peak_ewma" => Arc::new(PeakEwma::default()),
        "least_resource" => Arc::new(LeastResource),
        other => {
            return Err(Error::invalid_input(format!(
                "unknown selector {other:?}; known: {}",
                SELECTOR_NAMES.join(", ")
            )))
        }
    })
}
