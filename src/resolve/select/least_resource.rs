//! Least resource: of two addresses drawn at random, the one whose instance reports the lower
//! load (Surging's `ProcessorTime`, published by a registration's load function on its
//! heartbeat; see [`Instance::with_load`](crate::Instance::with_load)). Two draws rather than
//! the single least-loaded address, because every client reads the same reports: all of them
//! would pile onto one instance until its next report.

use std::sync::Arc;

use super::power_of_two::two_choices;
use super::{Candidates, Pick, Selector};
use crate::load::within_deadband;
use crate::route::Address;

/// Picks by reported load; between loads within 5% of each other (`LOAD_DEADBAND`, the change
/// an instance does not publish), the address with fewer calls in flight. An address that
/// reports no load counts as the mean of those that do.
#[derive(Debug, Default, Clone, Copy)]
pub struct LeastResource;

impl Selector for LeastResource {
    fn name(&self) -> &'static str {
        "least_resource"
    }

    fn build(&self, addresses: &[Arc<Address>]) -> Box<dyn Pick> {
        let reported: Vec<f64> = addresses
            .iter()
            .filter_map(|a| a.processor_time)
            .filter(|load| load.is_finite())
            .collect();
        let mean = if reported.is_empty() {
            0.0
        } else {
            reported.iter().sum::<f64>() / reported.len() as f64
        };
        let loads = addresses
            .iter()
            .map(|a| {
                a.processor_time
                    .filter(|load| load.is_finite())
                    .unwrap_or(mean)
            })
            .collect();
        Box::new(LeastResourcePick { loads })
    }

    fn uses_load(&self) -> bool {
        true
    }
}

#[derive(Debug)]
struct LeastResourcePick {
    /// Each address's reported load, in the route's order.
    loads: Box<[f64]>,
}

impl Pick for LeastResourcePick {
    fn pick(&self, candidates: &Candidates<'_>, _key: Option<&[u8]>) -> Option<usize> {
        if self.loads.len() != candidates.len() {
            return None;
        }
        two_choices(candidates, |a, b| {
            let (load_a, load_b) = (self.loads[a], self.loads[b]);
            if within_deadband(load_a, load_b) {
                candidates.in_flight(b) < candidates.in_flight(a)
            } else {
                load_b < load_a
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::Endpoint;

    fn loaded(loads: &[Option<f64>]) -> Vec<Arc<Address>> {
        loads
            .iter()
            .enumerate()
            .map(|(i, load)| {
                let mut address = Address::new("127.0.0.1", 9000 + i as u16);
                address.processor_time = *load;
                Arc::new(address)
            })
            .collect()
    }

    fn shares(addresses: &[Arc<Address>], draws: usize) -> Vec<usize> {
        let endpoints: Vec<Arc<Endpoint>> = addresses
            .iter()
            .map(|a| Arc::new(Endpoint::new(a.clone())))
            .collect();
        let pick = LeastResource.build(addresses);
        let candidates = Candidates::new(&endpoints, false);
        let mut counts = vec![0; addresses.len()];
        for _ in 0..draws {
            counts[pick.pick(&candidates, None).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn the_less_loaded_instance_wins_every_comparison() {
        assert_eq!(shares(&loaded(&[Some(0.9), Some(0.1)]), 100), vec![0, 100]);
    }

    #[test]
    fn three_instances_share_by_rank() {
        // Of the three pairs, the least loaded wins two and the middle one wins one; the most
        // loaded never wins.
        let counts = shares(&loaded(&[Some(30.0), Some(10.0), Some(20.0)]), 3_000);
        assert_eq!(counts[0], 0, "{counts:?}");
        assert!(counts[1] > 1_700 && counts[2] > 800, "{counts:?}");
    }

    #[test]
    fn loads_within_the_deadband_go_by_calls_in_flight() {
        let addresses = loaded(&[Some(50.0), Some(51.0)]);
        let endpoints: Vec<Arc<Endpoint>> = addresses
            .iter()
            .map(|a| Arc::new(Endpoint::new(a.clone())))
            .collect();
        endpoints[0].begin_call();
        let pick = LeastResource.build(&addresses);
        let candidates = Candidates::new(&endpoints, false);
        for _ in 0..100 {
            assert_eq!(pick.pick(&candidates, None), Some(1));
        }
    }

    #[test]
    fn an_unreported_load_counts_as_the_mean() {
        let counts = shares(&loaded(&[Some(10.0), None, Some(30.0)]), 3_000);
        assert_eq!(counts[2], 0, "{counts:?}");
        assert!(counts[0] > 1_700 && counts[1] > 800, "{counts:?}");
    }
}
