//! Consistent hashing: a key keeps its address while membership is unchanged, and only about
//! 1/n of keys move when one of n addresses leaves.

use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64;

use super::{Candidates, Pick, Selector};
use crate::route::Address;

/// Ring points per address; 160 is the ketama convention.
pub(crate) const DEFAULT_VIRTUAL_NODES: u32 = 160;

/// A hash ring with virtual nodes, keyed by the caller's affinity key. Without a key it picks at
/// random. When the key's address is unusable the next address clockwise takes over.
#[derive(Debug, Clone, Copy)]
pub struct ConsistentHash {
    virtual_nodes: u32,
}

impl ConsistentHash {
    /// A ring with `virtual_nodes` points per address (at least 1).
    pub fn new(virtual_nodes: u32) -> Self {
        ConsistentHash {
            virtual_nodes: virtual_nodes.max(1),
        }
    }
}

impl Default for ConsistentHash {
    fn default() -> Self {
        ConsistentHash::new(DEFAULT_VIRTUAL_NODES)
    }
}

impl Selector for ConsistentHash {
    fn name(&self) -> &'static str {
        "consistent_hash"
    }

    fn build(&self, addresses: &[Arc<Address>]) -> Box<dyn Pick> {
        // Points depend on the address, not its index, so other addresses keep their points
        // when one leaves.
        let mut ring: Vec<(u64, u32)> =
            Vec::with_capacity(addresses.len() * self.virtual_nodes as usize);
        for (index, address) in addresses.iter().enumerate() {
            let identity = address.to_string().to_ascii_lowercase();
            for node in 0..self.virtual_nodes {
                let point = xxh3_64(format!("{identity}#{node}").as_bytes());
                ring.push((point, index as u32));
            }
        }
        ring.sort_unstable();
        Box::new(RingPick { ring })
    }
}

#[derive(Debug)]
struct RingPick {
    ring: Vec<(u64, u32)>,
}

impl RingPick {
    /// The ring's candidates clockwise from where `key` lands (anywhere without a key).
    fn clockwise(&self, key: Option<&[u8]>) -> impl Iterator<Item = usize> + '_ {
        let hash = match key {
            Some(key) => xxh3_64(key),
            None => fastrand::u64(..),
        };
        let start = self.ring.partition_point(|(point, _)| *point < hash);
        let (before, from) = self.ring.split_at(start);
        from.iter().chain(before).map(|&(_, index)| index as usize)
    }
}

impl Pick for RingPick {
    fn pick(&self, candidates: &Candidates<'_>, key: Option<&[u8]>) -> Option<usize> {
        if self.ring.is_empty() || candidates.is_empty() {
            return None;
        }
        self.clockwise(key)
            .find(|&index| index < candidates.len() && candidates.is_usable(index))
    }

    /// The next distinct usable addresses clockwise from the key: where its calls go when
    /// the chosen one leaves.
    fn alternates(
        &self,
        candidates: &Candidates<'_>,
        key: Option<&[u8]>,
        chosen: usize,
        out: &mut [usize],
    ) -> usize {
        let mut written = 0;
        for index in self.clockwise(key) {
            if written == out.len() {
                break;
            }
            if index != chosen
                && index < candidates.len()
                && candidates.is_usable(index)
                && !out[..written].contains(&index)
            {
                out[written] = index;
                written += 1;
            }
        }
        written
    }
}
