//! [`Users`]: the endpoints a view holds, each with how many route entries use it.
//!
//! One slot per endpoint: the endpoint (found by its own key, not stored a second time) and a
//! count. An endpoint adopted from an earlier table waits here with no user until a route takes
//! it, so it keeps its health.

use std::hash::BuildHasher;
use std::sync::Arc;

use foldhash::fast::RandomState;
use hashbrown::HashTable;

use super::endpoint::{Endpoint, EndpointKey};

/// Endpoints and their users.
#[derive(Default)]
pub(crate) struct Users {
    slots: HashTable<(Arc<Endpoint>, u32)>,
    hasher: RandomState,
}

impl Users {
    /// The endpoint of `key`, if held.
    pub(crate) fn get(&self, key: &EndpointKey) -> Option<&Arc<Endpoint>> {
        let hash = self.hasher.hash_one(key);
        self.slots
            .find(hash, |(e, _)| e.key() == key)
            .map(|(e, _)| e)
    }

    /// Holds `endpoint` with no user, unless its key is held already.
    pub(crate) fn adopt(&mut self, endpoint: &Arc<Endpoint>) {
        self.slot(endpoint.key(), || endpoint.clone());
    }

    /// One more user of the endpoint of `key` (made by `make` if not held); returns it and
    /// whether it was unused before.
    pub(crate) fn take(
        &mut self,
        key: &EndpointKey,
        make: impl FnOnce() -> Arc<Endpoint>,
    ) -> (Arc<Endpoint>, bool) {
        let (endpoint, users) = self.slot(key, make);
        *users += 1;
        (endpoint.clone(), *users == 1)
    }

    /// One user fewer of the endpoint of `key`; returns whether that was its last.
    pub(crate) fn release(&mut self, key: &EndpointKey) -> bool {
        let hash = self.hasher.hash_one(key);
        let Ok(mut found) = self.slots.find_entry(hash, |(e, _)| e.key() == key) else {
            return false;
        };
        let users = &mut found.get_mut().1;
        *users = users.saturating_sub(1);
        if *users > 0 {
            return false;
        }
        found.remove();
        true
    }

    fn slot(
        &mut self,
        key: &EndpointKey,
        make: impl FnOnce() -> Arc<Endpoint>,
    ) -> &mut (Arc<Endpoint>, u32) {
        let hasher = &self.hasher;
        let hash = hasher.hash_one(key);
        self.slots
            .entry(
                hash,
                |(e, _)| e.key() == key,
                |(e, _)| hasher.hash_one(e.key()),
            )
            .or_insert_with(|| (make(), 0))
            .into_mut()
    }
}
