//! Least connections: the usable address with the fewest calls in flight.

use std::sync::Arc;

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Candidates, Pick, Selector};
use crate::route::Address;

/// Picks the usable address with the fewest in-flight calls (counted by the guards that
/// resolutions return); ties rotate.
#[derive(Debug, Default, Clone, Copy)]
pub struct LeastConnections;

impl Selector for LeastConnections {
    fn name(&self) -> &'static str {
        "least_connections"
    }

    fn build(&self, _addresses: &[Arc<Address>]) -> Box<dyn Pick> {
        Box::new(LeastConnectionsPick {
            rotation: AtomicUsize::new(0),
        })
    }

    fn uses_load(&self) -> bool {
        true
    }
}

#[derive(Debug)]
struct LeastConnectionsPick {
    rotation: AtomicUsize,
}

impl Pick for LeastConnectionsPick {
    fn pick(&self, candidates: &Candidates<'_>, _key: Option<&[u8]>) -> Option<usize> {
        let n = candidates.len();
        if n == 0 {
            return None;
        }
        let start = self.rotation.fetch_add(1, Ordering::Relaxed) % n;
        (start..n)
            .chain(0..start)
            .filter(|&i| candidates.is_usable(i))
            .min_by_key(|&i| candidates.in_flight(i))
    }
}
