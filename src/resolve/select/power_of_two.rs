//! Power of two choices: two random usable addresses, the less loaded wins.

use std::sync::Arc;

use super::{Candidates, Pick, Selector};
use crate::route::Address;

/// Draws two distinct addresses at random and takes the one with fewer calls in flight.
#[derive(Debug, Default, Clone, Copy)]
pub struct PowerOfTwoChoices;

impl Selector for PowerOfTwoChoices {
    fn name(&self) -> &'static str {
        "p2c"
    }

    fn build(&self, _addresses: &[Arc<Address>]) -> Box<dyn Pick> {
        Box::new(PowerOfTwoPick)
    }

    fn uses_load(&self) -> bool {
        true
    }
}

#[derive(Debug)]
struct PowerOfTwoPick;

impl Pick for PowerOfTwoPick {
    fn pick(&self, candidates: &Candidates<'_>, _key: Option<&[u8]>) -> Option<usize> {
        two_choices(candidates, |a, b| {
            candidates.in_flight(b) < candidates.in_flight(a)
        })
    }
}

/// Draws two distinct candidates at random and keeps the usable one, or `b` over `a` when both
/// are usable and `b_is_better(a, b)`; when neither is usable, the first usable one after `a`.
/// The draw every load-aware selector shares (Mitzenmacher's "power of two choices").
pub(crate) fn two_choices(
    candidates: &Candidates<'_>,
    b_is_better: impl Fn(usize, usize) -> bool,
) -> Option<usize> {
    let n = candidates.len();
    match n {
        0 => None,
        1 => candidates.first_usable_from(0),
        _ => {
            let a = fastrand::usize(..n);
            let b = (a + 1 + fastrand::usize(..n - 1)) % n;
            match (candidates.is_usable(a), candidates.is_usable(b)) {
                (true, true) if b_is_better(a, b) => Some(b),
                (true, _) => Some(a),
                (false, true) => Some(b),
                (false, false) => candidates.first_usable_from(a),
            }
        }
    }
}
