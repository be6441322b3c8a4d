//! Selectors: how one address is picked among a route's usable addresses.
//!
//! A [`Selector`] builds a [`Pick`] for each route whenever the route's addresses change (off the
//! hot path: rings and weight tables are built here); the `Pick` then chooses among the route's
//! [`Candidates`] on every resolution without locking or allocating.

mod consistent_hash;
mod least_connections;
mod power_of_two;
mod random;
mod round_robin;
mod weighted;

use std::fmt;
use std::sync::Arc;

pub use consistent_hash::ConsistentHash;
pub use least_connections::LeastConnections;
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
}

/// Per-route picking state, built by a [`Selector`].
pub trait Pick: Send + Sync + fmt::Debug {
    /// The index of the chosen candidate, or `None` if no candidate is usable.
    /// `key` is the caller's affinity key (used by consistent hashing).
    fn pick(&self, candidates: &Candidates<'_>, key: Option<&[u8]>) -> Option<usize>;
}

/// The addresses of one route as a selector sees them: usable or not, and their load.
#[derive(Debug)]
pub struct Candidates<'a> {
    endpoints: &'a [Arc<Endpoint>],
    ignore_health: bool,
}

impl<'a> Candidates<'a> {
    /// Candidates over `endpoints`; with `ignore_health` every one is usable (fail-open).
    pub fn new(endpoints: &'a [Arc<Endpoint>], ignore_health: bool) -> Self {
        Candidates {
            endpoints,
            ignore_health,
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

    /// Whether candidate `i` may be chosen (healthy, or every candidate when failing open).
    pub fn is_usable(&self, i: usize) -> bool {
        self.ignore_health || self.endpoints[i].is_healthy()
    }

    /// Calls in flight to candidate `i`.
    pub fn in_flight(&self, i: usize) -> usize {
        self.endpoints[i].in_flight()
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
        other => {
            return Err(Error::invalid_input(format!(
                "unknown selector {other:?}; known: {}",
                SELECTOR_NAMES.join(", ")
            )))
        }
    })
}
