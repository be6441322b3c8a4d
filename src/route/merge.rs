//! Merging per-instance registry entries into routes.
//!
//! A key-value registry holds one entry per (service id, instance). A route is the newest
//! descriptor among its entries plus the union of their addresses.

use std::collections::BTreeMap;

use super::codec::decode_route;
use super::key::{EntryKey, KeyLayout};
use super::model::ServiceRoute;
use crate::error::{Error, Result};

/// Decodes one raw entry, checking that the key and the value agree on the service id.
pub fn decode_entry(
    layout: &KeyLayout,
    key: &str,
    value: &[u8],
) -> Result<(EntryKey, ServiceRoute)> {
    let entry_key = layout.parse(key).ok_or_else(|| {
        Error::malformed(format!(
            "key {key:?} is not <prefix><service-id>[/<instance-id>]"
        ))
    })?;
    let route = decode_route(value)?;
    if route.id() != entry_key.service_id {
        return Err(Error::malformed(format!(
            "key {key:?} holds a route for another service id {:?}",
            route.id()
        )));
    }
    if route.addresses.is_empty() {
        return Err(Error::malformed(format!(
            "key {key:?} holds no valid address"
        )));
    }
    Ok((entry_key, route))
}

#[derive(Debug, Clone)]
struct Entry {
    version: u64,
    route: ServiceRoute,
}

/// All entries of a registry, grouped by service id, with the merged route of each id.
#[derive(Debug, Default, Clone)]
pub struct RouteEntries {
    services: BTreeMap<String, BTreeMap<String, Entry>>,
}

impl RouteEntries {
    /// How many entries (one per service id and instance) are held.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub fn key_count(&self) -> usize {
        self.services.values().map(BTreeMap::len).sum()
    }

    /// Stores (or replaces) one entry, without merging (for bulk loads).
    #[cfg_attr(not(any(feature = "etcd", feature = "consul")), allow(dead_code))]
    pub fn insert(&mut self, key: &EntryKey, version: u64, route: ServiceRoute) {
        let instance = key.instance_id.clone().unwrap_or_default();
        self.services
            .entry(key.service_id.clone())
            .or_default()
            .insert(instance, Entry { version, route });
    }

    /// Stores (or replaces) one entry; returns the merged route of its service id afterwards.
    ///
    /// `version` orders entries (a backend revision or index): the highest supplies the descriptor.
    pub fn put(
        &mut self,
        key: &EntryKey,
        version: u64,
        route: ServiceRoute,
    ) -> Option<ServiceRoute> {
        let instance = key.instance_id.clone().unwrap_or_default();
        self.services
            .entry(key.service_id.clone())
            .or_default()
            .insert(instance, Entry { version, route });
        self.merged(&key.service_id)
    }

    /// Removes one entry; returns the merged route of its service id afterwards.
    pub fn remove(&mut self, key: &EntryKey) -> Option<ServiceRoute> {
        let instance = key.instance_id.clone().unwrap_or_default();
        if let Some(entries) = self.services.get_mut(&key.service_id) {
            entries.remove(&instance);
            if entries.is_empty() {
                self.services.remove(&key.service_id);
            }
        }
        self.merged(&key.service_id)
    }

    /// Whether an entry is stored under this key.
    pub fn contains(&self, key: &EntryKey) -> bool {
        let instance = key.instance_id.as_deref().unwrap_or_default();
        self.services
            .get(&key.service_id)
            .is_some_and(|entries| entries.contains_key(instance))
    }

    /// The merged route of one service id, or `None` when it has no address left.
    pub fn merged(&self, service_id: &str) -> Option<ServiceRoute> {
        let entries = self.services.get(service_id)?;
        let newest = entries.values().max_by_key(|e| e.version)?;
        let mut route = ServiceRoute::new(newest.route.descriptor.clone(), Vec::new());
        for entry in entries.values() {
            for address in &entry.route.addresses {
                if !route.addresses.iter().any(|a| a.same_endpoint(address)) {
                    route.addresses.push(address.clone());
                }
            }
        }
        (!route.addresses.is_empty()).then_some(route)
    }

    /// Every merged route, by service id, consuming the entries (no copies).
    #[cfg_attr(not(any(feature = "etcd", feature = "consul")), allow(dead_code))]
    pub fn into_merged(self) -> BTreeMap<String, ServiceRoute> {
        let mut merged = BTreeMap::new();
        for (id, entries) in self.services {
            let newest = entries
                .iter()
                .max_by_key(|(_, e)| e.version)
                .map(|(instance, _)| instance.clone());
            let mut route: Option<ServiceRoute> = None;
            let mut addresses: Vec<crate::route::Address> = Vec::new();
            for (instance, entry) in entries {
                let ServiceRoute {
                    descriptor,
                    addresses: own,
                } = entry.route;
                for address in own {
                    if !addresses.iter().any(|a| a.same_endpoint(&address)) {
                        addresses.push(address);
                    }
                }
                if Some(&instance) == newest.as_ref() {
                    route = Some(ServiceRoute::new(descriptor, Vec::new()));
                }
            }
            if let Some(mut route) = route.filter(|_| !addresses.is_empty()) {
                route.addresses = addresses;
                merged.insert(id, route);
            }
        }
        merged
    }

    /// Every merged route, by service id.
    pub fn all_merged(&self) -> BTreeMap<String, ServiceRoute> {
        self.services
            .keys()
            .filter_map(|id| Some((id.clone(), self.merged(id)?)))
            .collect()
    }
}
