//! [`ShardedMap`]: a hash map split into shards behind `Arc`s, for tables that are published as
//! immutable snapshots and then changed a little at a time.
//!
//! A copy shares every shard (it costs one reference count). Changing a copy first copies the
//! list of shard pointers (1,024 of them) and then only the shard it touches, so an update costs
//! what changed plus a constant, not the whole table: a new snapshot of a 100k-route table
//! copies about 100 entries instead of 100k.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use foldhash::fast::FixedState;
use hashbrown::HashTable;

/// How many shards; a power of two.
const SHARDS: usize = 1024;

/// One shard: entries found by the hash computed once per lookup (which also picks the shard).
type Shard<K, V> = HashTable<(K, V)>;

/// A map whose copies share storage until they are changed, shard by shard.
#[derive(Debug)]
pub(crate) struct ShardedMap<K, V> {
    hasher: FixedState,
    /// A fixed-size array: a thin pointer, and a masked index needs no bounds check.
    shards: Arc<[Arc<Shard<K, V>>; SHARDS]>,
    len: usize,
}

impl<K, V> Clone for ShardedMap<K, V> {
    fn clone(&self) -> Self {
        ShardedMap {
            hasher: self.hasher.clone(),
            shards: self.shards.clone(),
            len: self.len,
        }
    }
}

impl<K, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        let hasher = FixedState::with_seed(0x005e_ed0f_ba5e);
        let empty = Arc::new(HashTable::new());
        ShardedMap {
            hasher,
            shards: Arc::new(std::array::from_fn(|_| empty.clone())),
            len: 0,
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> ShardedMap<K, V> {
    fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The shard of a hash: middle bits, since a shard's table indexes by the low ones and tags
    /// entries with the top ones.
    fn shard_of(hash: u64) -> usize {
        (hash >> 32) as usize & (SHARDS - 1)
    }

    /// The value of `key`.
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        self.shards[Self::shard_of(hash)]
            .find(hash, |(k, _)| k.borrow() == key)
            .map(|(_, v)| v)
    }

    fn shard_mut(&mut self, index: usize) -> &mut Shard<K, V> {
        // Shared with a published copy, this copy first gets its own list of the same shards.
        Arc::make_mut(&mut Arc::make_mut(&mut self.shards)[index])
    }

    /// Sets `key` to `value`; returns the value it replaced.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        let hash = self.hash(&key);
        let hasher = self.hasher.clone();
        let shard = self.shard_mut(Self::shard_of(hash));
        match shard.entry(hash, |(k, _)| *k == key, |(k, _)| hasher.hash_one(k)) {
            hashbrown::hash_table::Entry::Occupied(mut found) => {
                Some(std::mem::replace(&mut found.get_mut().1, value))
            }
            hashbrown::hash_table::Entry::Vacant(slot) => {
                slot.insert((key, value));
                self.len += 1;
                None
            }
        }
    }

    /// Removes `key`; returns its value.
    pub(crate) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        let index = Self::shard_of(hash);
        self.shards[index].find(hash, |(k, _)| k.borrow() == key)?;
        let found = self
            .shard_mut(index)
            .find_entry(hash, |(k, _)| k.borrow() == key)
            .ok()?;
        let ((_, value), _) = found.remove();
        self.len -= 1;
        Some(value)
    }

    /// Sets `key` to `value`, or removes it with `None`.
    pub(crate) fn set(&mut self, key: &K, value: Option<V>) {
        match value {
            Some(value) => {
                self.insert(key.clone(), value);
            }
            None => {
                self.remove(key);
            }
        }
    }

    /// How many keys the map holds.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether the map is empty.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every value, in no particular order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.shards
            .iter()
            .flat_map(|shard| shard.iter().map(|(_, v)| v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_share_until_changed_and_changes_stay_their_own() {
        let mut map: ShardedMap<Arc<str>, u32> = ShardedMap::default();
        for i in 0..1000 {
            assert_eq!(map.insert(Arc::from(format!("k{i}")), i), None);
        }
        assert_eq!(map.len(), 1000);
        let snapshot = map.clone();
        assert_eq!(map.insert(Arc::from("k1"), 7), Some(1));
        assert_eq!(map.remove("k2"), Some(2));
        assert_eq!(map.remove("k2"), None);
        assert_eq!(map.len(), 999);
        assert_eq!(snapshot.get("k1"), Some(&1), "the snapshot did not change");
        assert_eq!(snapshot.get("k2"), Some(&2));
        assert_eq!(snapshot.len(), 1000);
        assert_eq!(map.get("k1"), Some(&7));
        let shared = map
            .shards
            .iter()
            .zip(snapshot.shards.iter())
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert!(
            shared >= SHARDS - 2,
            "only the touched shards were copied ({shared})"
        );
        assert_eq!(map.values().count(), 999);
    }
}
