//! Weighted random: addresses chosen in proportion to their weight (`Wt`, default 1).

use super::{Candidates, Pick, Selector};
use crate::route::Address;

/// Picks at random in proportion to each address's weight; weight 0 is never chosen while any
/// address has a positive weight.
#[derive(Debug, Default, Clone, Copy)]
pub struct Weighted;

impl Selector for Weighted {
    fn name(&self) -> &'static str {
        "weighted"
    }

    fn build(&self, addresses: &[Address]) -> Box<dyn Pick> {
        let weights: Vec<u64> = addresses
            .iter()
            .map(|a| u64::from(a.weight.unwrap_or(1)))
            .collect();
        let all_zero = weights.iter().all(|w| *w == 0);
        let mut total = 0;
        let cumulative = weights
            .iter()
            .map(|w| {
                total += if all_zero { 1 } else { *w };
                total
            })
            .collect();
        Box::new(WeightedPick { cumulative, total })
    }
}

#[derive(Debug)]
struct WeightedPick {
    /// Running sums of the weights: address `i` owns `[cumulative[i-1], cumulative[i])`.
    cumulative: Vec<u64>,
    total: u64,
}

impl WeightedPick {
    fn draw(&self) -> usize {
        let ticket = fastrand::u64(..self.total);
        self.cumulative.partition_point(|&end| end <= ticket)
    }
}

impl Pick for WeightedPick {
    fn pick(&self, candidates: &Candidates<'_>, _key: Option<&[u8]>) -> Option<usize> {
        if candidates.is_empty() || self.total == 0 || self.cumulative.len() != candidates.len() {
            return None;
        }
        let first = self.draw();
        if candidates.is_usable(first) {
            return Some(first);
        }
        // Redraw a few times before walking to the next usable address.
        (0..4)
            .map(|_| self.draw())
            .find(|&i| candidates.is_usable(i))
            .or_else(|| candidates.first_usable_from(first))
    }
}
