//! Round robin: each route cycles through its usable addresses in order.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Candidates, Pick, Selector};
use crate::route::Address;

/// Cycles through a route's addresses; each route keeps its own position.
#[derive(Debug, Default, Clone, Copy)]
pub struct RoundRobin;

impl Selector for RoundRobin {
    fn name(&self) -> &'static str {
        "round_robin"
    }

    fn build(&self, _addresses: &[Address]) -> Box<dyn Pick> {
        Box::new(RoundRobinPick {
            next: AtomicUsize::new(0),
        })
    }
}

#[derive(Debug)]
struct RoundRobinPick {
    next: AtomicUsize,
}

impl Pick for RoundRobinPick {
    fn pick(&self, candidates: &Candidates<'_>, _key: Option<&[u8]>) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % candidates.len();
        candidates.first_usable_from(start)
    }
}
