//! One shared copy of each distinct decoded address and metadata.
//!
//! In wayfinder's layout an instance writes the same address into every route it serves, and
//! most routes publish one of a few metadata maps: a host serving 300 routes would otherwise
//! be decoded into 300 copies, and the resolver's endpoint would hold one more. Decoding goes
//! through [`address`] and [`metadata`], which hand out the copy already in use when there is
//! one. Copies no route holds any longer are swept out when a new value finds the pool twice as
//! large as after its last sweep: a pool holds at most twice what was in use then.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, LazyLock, Mutex};

use foldhash::fast::RandomState;
use hashbrown::HashTable;
use serde_json::{Map, Value};

use super::model::Address;

/// Sweeps start once a pool keeps this many copies.
const FIRST_SWEEP: usize = 4096;

/// What a pool needs of its values: a hash of their content and content equality.
trait Content {
    fn hash_content(&self, state: &mut impl Hasher);
    fn same_content(&self, other: &Self) -> bool;
}

impl Address {
    /// Every field (`processor_time` by its bits): only identical addresses share a copy.
    #[allow(clippy::type_complexity)]
    fn fields(
        &self,
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
            &self.ip,
            self.port,
            self.wan_ip.as_deref(),
            [self.ws_port, self.mqtt_port, self.http_port],
            self.processor_time.map(f64::to_bits),
            self.weight,
            self.timestamp,
        )
    }
}

impl Content for Address {
    fn hash_content(&self, state: &mut impl Hasher) {
        self.fields().hash(state);
    }

    fn same_content(&self, other: &Self) -> bool {
        self.fields() == other.fields()
    }
}

/// Maps share a copy only when their entries are equal in the same order, so a value encodes
/// back exactly as it was written.
impl Content for Map<String, Value> {
    fn hash_content(&self, state: &mut impl Hasher) {
        self.len().hash(state);
        for (key, value) in self {
            key.hash(state);
            hash_value(value, state);
        }
    }

    fn same_content(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self
                .iter()
                .zip(other)
                .all(|((k1, v1), (k2, v2))| k1 == k2 && same_value(v1, v2))
    }
}

fn hash_value(value: &Value, state: &mut impl Hasher) {
    match value {
        Value::Null => 0u8.hash(state),
        Value::Bool(b) => (1u8, b).hash(state),
        Value::Number(n) => (2u8, n.to_string()).hash(state),
        Value::String(s) => (3u8, s).hash(state),
        Value::Array(items) => {
            (4u8, items.len()).hash(state);
            items.iter().for_each(|item| hash_value(item, state));
        }
        Value::Object(map) => {
            5u8.hash(state);
            map.hash_content(state);
        }
    }
}

/// Equality as written: numbers by their text, objects in order.
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) => a.to_string() == b.to_string(),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same_value(a, b))
        }
        (Value::Object(a), Value::Object(b)) => a.same_content(b),
        (a, b) => a == b,
    }
}

/// The map with exactly its entries' room: parsing grows a map in steps, and the spare room of
/// a one-entry map is most of its memory. Order is kept.
fn compact(map: Map<String, Value>) -> Map<String, Value> {
    let mut exact = Map::with_capacity(map.len());
    exact.extend(map);
    exact
}

/// Shared copies of one kind of value.
struct Pool<T> {
    kept: HashTable<Arc<T>>,
    hasher: RandomState,
    next_sweep: usize,
}

impl<T: Content> Pool<T> {
    fn new() -> Mutex<Self> {
        Mutex::new(Pool {
            kept: HashTable::new(),
            hasher: RandomState::default(),
            next_sweep: FIRST_SWEEP,
        })
    }

    fn hash(&self, value: &T) -> u64 {
        let mut state = self.hasher.build_hasher();
        value.hash_content(&mut state);
        state.finish()
    }

    /// The kept copy equal to `value`, or `value` kept as the copy (after `keep`).
    fn share(&mut self, value: T, keep: impl FnOnce(T) -> T) -> Arc<T> {
        let hash = self.hash(&value);
        if let Some(kept) = self.kept.find(hash, |kept| kept.same_content(&value)) {
            return kept.clone();
        }
        if self.kept.len() >= self.next_sweep {
            self.kept.retain(|kept| Arc::strong_count(kept) > 1);
            self.next_sweep = FIRST_SWEEP.max(2 * self.kept.len());
        }
        let shared = Arc::new(keep(value));
        let hasher = self.hasher.clone();
        self.kept.insert_unique(hash, shared.clone(), |kept| {
            let mut state = hasher.build_hasher();
            kept.hash_content(&mut state);
            state.finish()
        });
        shared
    }
}

static ADDRESSES: LazyLock<Mutex<Pool<Address>>> = LazyLock::new(Pool::new);
static METADATA: LazyLock<Mutex<Pool<Map<String, Value>>>> = LazyLock::new(Pool::new);

/// The shared copy of `address`.
pub(crate) fn address(address: Address) -> Arc<Address> {
    let mut pool = ADDRESSES.lock().unwrap_or_else(|e| e.into_inner());
    pool.share(address, |address| address)
}

/// The shared copy of `metadata`.
pub(crate) fn metadata(metadata: Map<String, Value>) -> Arc<Map<String, Value>> {
    let mut pool = METADATA.lock().unwrap_or_else(|e| e.into_inner());
    pool.share(metadata, compact)
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
    fn metadata_shares_a_copy_only_when_written_alike() {
        let parse = |text: &str| serde_json::from_str::<Map<String, Value>>(text).unwrap();
        let one = metadata(parse(r#"{"HttpMethod":"GET","Auth":true,"n":[1,{"x":2}]}"#));
        let same = metadata(parse(r#"{"HttpMethod":"GET","Auth":true,"n":[1,{"x":2}]}"#));
        let reordered = metadata(parse(r#"{"n":[1,{"x":2}],"Auth":true,"HttpMethod":"GET"}"#));
        let other = metadata(parse(
            r#"{"HttpMethod":"POST","Auth":true,"n":[1,{"x":2}]}"#,
        ));
        assert!(Arc::ptr_eq(&one, &same));
        assert!(!Arc::ptr_eq(&one, &other));
        assert!(
            !Arc::ptr_eq(&one, &reordered),
            "the order it was written in is kept"
        );
        assert_eq!(reordered.keys().next().unwrap(), "n");
    }

    impl Pool<Address> {
        fn share_address(&mut self, address: Address) -> Arc<Address> {
            self.share(address, |a| a)
        }
    }

    #[test]
    fn copies_no_one_holds_are_swept() {
        let mut pool = Pool::<Address>::new().into_inner().unwrap();
        let held = pool.share_address(Address::new("10.250.0.0", 1));
        for i in 1..3 * FIRST_SWEEP {
            drop(pool.share_address(Address::new(format!("10.250.{}.{}", i / 250, i % 250), 1)));
        }
        assert!(
            pool.kept.len() <= 2 * FIRST_SWEEP,
            "{} kept",
            pool.kept.len()
        );
        assert!(Arc::ptr_eq(
            &held,
            &pool.share_address(Address::new("10.250.0.0", 1))
        ));
    }
}
