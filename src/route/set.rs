//! [`RouteSet`]: routes by service id, with no key stored beside them.
//!
//! A map from id to route keeps the id twice (the key and the route's own); with 100k routes
//! that is several megabytes per map. The set finds a route by hashing its own id.

use std::hash::BuildHasher;
use std::sync::Arc;

use foldhash::fast::RandomState;
use hashbrown::hash_table::Entry;
use hashbrown::HashTable;

use super::model::ServiceRoute;

/// Routes by service id, at most one per id, in no particular order.
#[derive(Default, Clone)]
pub(crate) struct RouteSet {
    routes: HashTable<Arc<ServiceRoute>>,
    hasher: RandomState,
}

impl RouteSet {
    fn hash(&self, id: &str) -> u64 {
        self.hasher.hash_one(id)
    }

    /// The route of `id`.
    pub(crate) fn get(&self, id: &str) -> Option<&Arc<ServiceRoute>> {
        self.routes.find(self.hash(id), |route| route.id() == id)
    }

    /// Whether `id` has a route.
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.get(id).is_some()
    }

    /// Sets the route of its id; returns the one it replaced.
    pub(crate) fn insert(&mut self, route: Arc<ServiceRoute>) -> Option<Arc<ServiceRoute>> {
        let hasher = &self.hasher;
        let hash = hasher.hash_one(route.id());
        let entry = self.routes.entry(
            hash,
            |kept| kept.id() == route.id(),
            |kept| hasher.hash_one(kept.id()),
        );
        match entry {
            Entry::Occupied(mut found) => Some(std::mem::replace(found.get_mut(), route)),
            Entry::Vacant(slot) => {
                slot.insert(route);
                None
            }
        }
    }

    /// Removes the route of `id`; returns it.
    pub(crate) fn remove(&mut self, id: &str) -> Option<Arc<ServiceRoute>> {
        let hash = self.hash(id);
        match self.routes.find_entry(hash, |route| route.id() == id) {
            Ok(found) => Some(found.remove().0),
            Err(_) => None,
        }
    }

    /// Room for `more` routes.
    pub(crate) fn reserve(&mut self, more: usize) {
        let hasher = &self.hasher;
        self.routes.reserve(more, |kept| hasher.hash_one(kept.id()));
    }

    /// Every route.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<ServiceRoute>> {
        self.routes.iter()
    }

    /// How many routes.
    pub(crate) fn len(&self) -> usize {
        self.routes.len()
    }
}

impl std::fmt::Debug for RouteSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter().map(|r| r.id())).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{Address, ServiceDescriptor};

    fn route(id: &str, port: u16) -> Arc<ServiceRoute> {
        Arc::new(ServiceRoute::new(
            ServiceDescriptor::new(id, "api/x"),
            vec![Address::new("10.0.0.1", port)],
        ))
    }

    #[test]
    fn routes_are_found_replaced_and_removed_by_id() {
        let mut set = RouteSet::default();
        assert!(set.insert(route("A", 1)).is_none());
        assert!(set.insert(route("B", 2)).is_none());
        let replaced = set.insert(route("A", 3)).unwrap();
        assert_eq!(replaced.addresses[0].port, 1);
        assert_eq!(set.get("A").unwrap().addresses[0].port, 3);
        assert_eq!(set.len(), 2);
        assert_eq!(set.remove("B").unwrap().id(), "B");
        assert!(!set.contains("B") && set.remove("B").is_none());
        assert_eq!(set.iter().count(), 1);
    }
}
