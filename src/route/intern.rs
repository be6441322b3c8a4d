//! One shared copy of each distinct decoded address.
//!
//! In wayfinder's layout an instance writes the same address into every route it serves: a
//! host serving 300 routes would otherwise be decoded into 300 copies, and the resolver's
//! endpoint would hold one more. Decoding goes through [`address`], which hands out the copy
//! already in use when there is one. Copies no route holds any longer are swept out once the
//! set has doubled since the last sweep, so the set stays within twice what is in use.

use std::hash::BuildHasher;
use std::sync::{Arc, LazyLock, Mutex};

use foldhash::fast::RandomState;
use hashbrown::HashTable;

use super::model::Address;

/// Sweeps start once this many copies are kept.
const FIRST_SWEEP: usize = 4096;

/// Every field of an address (`processor_time` by its bits): only identical values share a copy.
#[allow(clippy::type_complexity)]
fn fields(
    a: &Address,
) -> (
    &str,
    u16,
    Option<&str>,
    [Option<u16>; 3],
    Option<u64>,
    Option<u32>,
    Option<i64>,
) {
    (
        &a.ip,
        a.port,
        a.wan_ip.as_deref(),
        [a.ws_port, a.mqtt_port, a.http_port],
        a.processor_time.map(f64::to_bits),
        a.weight,
        a.timestamp,
    )
}

#[derive(Default)]
struct Interner {
    kept: HashTable<Arc<Address>>,
    hasher: RandomState,
    next_sweep: usize,
}

static ADDRESSES: LazyLock<Mutex<Interner>> = LazyLock::new(Mutex::default);

/// The shared copy of `address`.
pub(crate) fn address(address: Address) -> Arc<Address> {
    let mut guard = ADDRESSES.lock().unwrap_or_else(|e| e.into_inner());
    let interner = &mut *guard;
    let hasher = interner.hasher.clone();
    let hash = hasher.hash_one(fields(&address));
    if let Some(kept) = interner
        .kept
        .find(hash, |kept| fields(kept) == fields(&address))
    {
        return kept.clone();
    }
    if interner.kept.len() >= interner.next_sweep.max(FIRST_SWEEP) {
        interner.kept.retain(|kept| Arc::strong_count(kept) > 1);
        interner.next_sweep = 2 * interner.kept.len();
    }
    let shared = Arc::new(address);
    interner
        .kept
        .insert_unique(hash, shared.clone(), |kept| hasher.hash_one(fields(kept)));
    shared
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_addresses_share_one_copy_and_different_ones_do_not() {
        let a = address(Address::new("10.9.8.7", 9000));
        let b = address(Address::new("10.9.8.7", 9000));
        assert!(Arc::ptr_eq(&a, &b));
        let mut weighted = Address::new("10.9.8.7", 9000);
        weighted.weight = Some(3);
        let c = address(weighted);
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(c.weight, Some(3));
    }

    #[test]
    fn copies_no_one_holds_are_swept() {
        for i in 0..3 * FIRST_SWEEP {
            drop(address(Address::new(
                format!("10.250.{}.{}", i / 250, i % 250),
                1,
            )));
        }
        let kept = ADDRESSES.lock().unwrap().kept.len();
        assert!(kept <= 2 * FIRST_SWEEP, "{kept} kept");
    }
}
