//! Round robin: each route cycles through its usable addresses in order.
//!
//! When some addresses are unusable, the survivors share the load evenly (plain skip-to-next
//! would give the address after a dead one a double share).

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
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let index = turn % candidates.len();
        if candidates.is_usable(index) {
            return Some(index);
        }
        // Some are unusable: cycle over the usable ones only, so the one after a dead address
        // does not take its share as well.
        let usable = (0..candidates.len())
            .filter(|&i| candidates.is_usable(i))
            .count();
        if usable == 0 {
            return None;
        }
        (0..candidates.len())
            .filter(|&i| candidates.is_usable(i))
            .nth(turn % usable)
    }
}
