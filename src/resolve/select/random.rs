//! Random: a uniformly random usable address.

use std::sync::Arc;

use super::{Candidates, Pick, Selector};
use crate::route::Address;

/// Picks uniformly at random among usable addresses.
#[derive(Debug, Default, Clone, Copy)]
pub struct Random;

impl Selector for Random {
    fn name(&self) -> &'static str {
        "random"
    }

    fn build(&self, _addresses: &[Arc<Address>]) -> Box<dyn Pick> {
        Box::new(RandomPick)
    }
}

#[derive(Debug)]
struct RandomPick;

impl Pick for RandomPick {
    fn pick(&self, candidates: &Candidates<'_>, _key: Option<&[u8]>) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        let start = fastrand::usize(..candidates.len());
        if candidates.is_usable(start) {
            return Some(start);
        }
        // Rare path: draw again among the usable ones so the choice stays uniform.
        let usable = (0..candidates.len())
            .filter(|&i| candidates.is_usable(i))
            .count();
        if usable == 0 {
            return None;
        }
        let nth = fastrand::usize(..usable);
        (0..candidates.len())
            .filter(|&i| candidates.is_usable(i))
            .nth(nth)
    }
}
