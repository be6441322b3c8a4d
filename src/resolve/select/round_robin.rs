//! Round robin: each route cycles through its usable addresses in order, from a random start.
//!
//! When some addresses are unusable, the survivors share the load evenly (plain skip-to-next
//! would give the address after a dead one a double share).

use std::sync::Arc;

use std::sync::atomic::{AtomicU32, Ordering};

use super::{Candidates, Pick, Selector};
use crate::route::Address;

/// Cycles through a route's addresses; each route keeps its own position.
#[derive(Debug, Default, Clone, Copy)]
pub struct RoundRobin;

impl Selector for RoundRobin {
    fn name(&self) -> &'static str {
        "round_robin"
    }

    fn build(&self, addresses: &[Arc<Address>]) -> Box<dyn Pick> {
        // A random start, so clients that rebuild at the same moment do not all begin with
        // the first address.
        Box::new(RoundRobinPick {
            next: AtomicU32::new(fastrand::u32(..)),
            modulo: FastModulo::new(addresses.len() as u32),
        })
    }
}

#[derive(Debug)]
struct RoundRobinPick {
    next: AtomicU32,
    modulo: FastModulo,
}

impl Pick for RoundRobinPick {
    fn pick(&self, candidates: &Candidates<'_>, _key: Option<&[u8]>) -> Option<usize> {
        let n = candidates.len();
        if n == 0 {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let index = if n as u32 == self.modulo.divisor {
            self.modulo.apply(turn) as usize
        } else {
            turn as usize % n
        };
        if candidates.is_usable(index) {
            return Some(index);
        }
        // Some are unusable: cycle over the usable ones only, so the one after a dead address
        // does not take its share as well.
        let usable = (0..n).filter(|&i| candidates.is_usable(i)).count();
        if usable == 0 {
            return None;
        }
        (0..n)
            .filter(|&i| candidates.is_usable(i))
            .nth(turn as usize % usable)
    }
}

/// `x % divisor` for 32-bit `x` with two multiplications instead of a division (Lemire, Kaser
/// and Kurz, "Faster Remainder by Direct Computation", 2019). A hardware division costs tens of
/// cycles, a noticeable share of a resolution.
#[derive(Debug, Clone, Copy)]
struct FastModulo {
    divisor: u32,
    magic: u64,
}

impl FastModulo {
    fn new(divisor: u32) -> Self {
        let magic = match divisor {
            0 => 0,
            d => (u64::MAX / u64::from(d)).wrapping_add(1),
        };
        FastModulo { divisor, magic }
    }

    fn apply(&self, x: u32) -> u32 {
        let low = self.magic.wrapping_mul(u64::from(x));
        ((u128::from(low) * u128::from(self.divisor)) >> 64) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::FastModulo;

    #[test]
    fn fast_modulo_matches_the_remainder() {
        for divisor in 1..=70u32 {
            let modulo = FastModulo::new(divisor);
            for x in (0..5000u32).chain([u32::MAX - 3, u32::MAX - 2, u32::MAX - 1, u32::MAX]) {
                assert_eq!(modulo.apply(x), x % divisor, "{x} % {divisor}");
            }
        }
    }
}
