//! [`ShardedMap`]: a hash map split into shards behind `Arc`s, for tables that are published as
//! immutable snapshots and then changed a little at a time.
//!
//! Shards sit in groups, two levels of `Arc`ed arrays. A copy shares everything (it costs one
//! reference count). Changing a copy copies the list of groups (64 pointers), the touched group
//! (64 shard pointers) and the touched shard, so an update costs what changed plus a small
//! constant, not the whole table: a new snapshot of a 100k-route table copies about 25 entries
//! and 128 pointers instead of 100k entries. With one flat list of shards, every update would
//! touch the reference count of every shard, a cache miss each once the table is large.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use foldhash::fast::FixedState;
use hashbrown::HashTable;

/// Shards per group, and groups; powers of two.
const FANOUT: usize = 64;
/// How many shards in all.
const SHARDS: usize = FANOUT * FANOUT;

/// One shard: entries found by the hash computed once per lookup (which also picks the shard).
type Shard<K, V> = HashTable<(K, V)>;

/// A group of shards. Fixed-size arrays: thin pointers, and masked indexes need no bounds check.
type Group<K, V> = [Arc<Shard<K, V>>; FANOUT];

/// A map whose copies share storage until they are changed, shard by shard.
#[derive(Debug)]
pub(crate) struct ShardedMap<K, V> {
    hasher: FixedState,
    groups: Arc<[Arc<Group<K, V>>; FANOUT]>,
    len: usize,
}

impl<K, V> Clone for ShardedMap<K, V> {
    fn clone(&self) -> Self {
        ShardedMap {
            hasher: self.hasher.clone(),
            groups: self.groups.clone(),
            len: self.len,
        }
    }
}

impl<K, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        let hasher = FixedState::with_seed(0x005e_ed0f_ba5e);
        let empty = Arc::new(HashTable::new());
        let group = Arc::new(std::array::from_fn(|_| empty.clone()));
        ShardedMap {
            hasher,
            groups: Arc::new(std::array::from_fn(|_| group.clone())),
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

    fn shard(&self, index: usize) -> &Shard<K, V> {
        &self.groups[index / FANOUT][index % FANOUT]
    }

    /// The value of `key`.
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        self.shard(Self::shard_of(hash))
            .find(hash, |(k, _)| k.borrow() == key)
            .map(|(_, v)| v)
    }

    /// The key that hashes as `hash` (with this map's hasher, see
    /// [`ShardedMap::hash_with`]) and satisfies `eq`: a lookup by something that is not a key.
    pub(crate) fn find(&self, hash: u64, eq: impl Fn(&K) -> bool) -> Option<&K> {
        self.shard(Self::shard_of(hash))
            .find(hash, |(k, _)| eq(k))
            .map(|(k, _)| k)
    }

    /// The key held equal to `key` (for a map that keeps its values in its keys).
    pub(crate) fn get_key<Q>(&self, key: &Q) -> Option<&K>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        self.find(hash, |k| k.borrow() == key)
    }

    /// A hash computed as keys' hashes are, by `hash` feeding this map's hasher.
    pub(crate) fn hash_with(
        &self,
        hash: impl FnOnce(&mut foldhash::fast::FoldHasher<'static>),
    ) -> u64 {
        let mut state = self.hasher.build_hasher();
        hash(&mut state);
        state.finish()
    }

    fn shard_mut(&mut self, index: usize) -> &mut Shard<K, V> {
        // Shared with a published copy, this copy first gets its own list of the same groups,
        // then its own copy of the touched group, then of the touched shard.
        let group = &mut Arc::make_mut(&mut self.groups)[index / FANOUT];
        Arc::make_mut(&mut Arc::make_mut(group)[index % FANOUT])
    }

    /// Sets `key` to `value` (the key given replaces an equal one held); returns the value
    /// it replaced.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        let hash = self.hash(&key);
        let hasher = self.hasher.clone();
        let shard = self.shard_mut(Self::shard_of(hash));
        match shard.entry(hash, |(k, _)| *k == key, |(k, _)| hasher.hash_one(k)) {
            hashbrown::hash_table::Entry::Occupied(mut found) => {
                Some(std::mem::replace(found.get_mut(), (key, value)).1)
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
        self.shard(index).find(hash, |(k, _)| k.borrow() == key)?;
        let found = self
            .shard_mut(index)
            .find_entry(hash, |(k, _)| k.borrow() == key)
            .ok()?;
        let ((_, value), _) = found.remove();
        self.len -= 1;
        Some(value)
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
        self.entries().map(|(_, v)| v)
    }

    /// Every key, in no particular order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries().map(|(k, _)| k)
    }

    fn entries(&self) -> impl Iterator<Item = &(K, V)> {
        self.groups
            .iter()
            .flat_map(|group| group.iter())
            .flat_map(|shard| shard.iter())
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
        let shards = |m: &ShardedMap<Arc<str>, u32>| -> Vec<*const Shard<Arc<str>, u32>> {
            m.groups
                .iter()
                .flat_map(|group| group.iter().map(Arc::as_ptr))
                .collect()
        };
        let shared = shards(&map)
            .iter()
            .zip(shards(&snapshot))
            .filter(|(a, b)| **a == *b)
            .count();
        let groups_shared = map
            .groups
            .iter()
            .zip(snapshot.groups.iter())
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert!(
            groups_shared >= FANOUT - 2,
            "only the touched groups were copied"
        );
        assert!(
            shared >= SHARDS - 2,
            "only the touched shards were copied ({shared})"
        );
        assert_eq!(map.values().count(), 999);
    }
}
