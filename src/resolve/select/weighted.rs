//! Weighted random: addresses chosen in proportion to their weight (`Wt`, default 1).

use std::sync::Arc;

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

    fn build(&self, addresses: &[Arc<Address>]) -> Box<dyn Pick> {
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
        let weights = weights
            .iter()
            .map(|w| if all_zero { 1 } else { *w })
            .collect();
        Box::new(WeightedPick {
            weights,
            cumulative,
            total,
        })
    }
}

#[derive(Debug)]
struct WeightedPick {
    /// Each address's weight (after the all-zero rule).
    weights: Vec<u64>,
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
        // Some are unusable: draw again over the usable addresses' weights only.
        let usable_weight = |i: usize| {
            if candidates.is_usable(i) {
                self.weights[i]
            } else {
                0
            }
        };
        let total: u64 = (0..candidates.len()).map(usable_weight).sum();
        if total == 0 {
            // Only zero-weight addresses are usable: take any of them.
            return candidates.first_usable_from(first);
        }
        let mut ticket = fastrand::u64(..total);
        (0..candidates.len()).find(|&i| {
            let weight = usable_weight(i);
            if ticket < weight {
                return true;
            }
            ticket -= weight;
            false
        })
    }
}
