//! Merging per-instance registry entries into routes.
//!
//! A key-value registry holds one entry per (service id, instance). A route is the newest
//! descriptor among its entries plus the union of their addresses.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::codec::decode_route;
use super::key::{EntryKey, KeyLayout};
use super::model::{Address, ServiceDescriptor, ServiceRoute};
use crate::error::{Error, Result};

/// Decodes one raw entry, checking that the key and the value agree on the service id.
pub(crate) fn decode_entry(
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
    route: Arc<ServiceRoute>,
}

/// One service id's entries, sorted by instance id.
///
/// A sorted vector rather than a map: most service ids have a few instances, and a map node
/// sized for eleven entries per service id would cost about 2 KiB each (a route is large).
#[derive(Debug, Default, Clone)]
struct Instances(Vec<(String, Entry)>);

impl Instances {
    /// From entries in any order; of a repeated instance id the last entry stays.
    fn from_entries(mut entries: Vec<(String, Entry)>) -> Self {
        if !entries.windows(2).all(|pair| pair[0].0 < pair[1].0) {
            // A stable sort keeps repeats in input order; keep the last of each run.
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            entries.reverse();
            entries.dedup_by(|later, earlier| later.0 == earlier.0);
            entries.reverse();
        }
        entries.shrink_to_fit();
        Instances(entries)
    }

    fn position(&self, instance: &str) -> std::result::Result<usize, usize> {
        self.0.binary_search_by(|(id, _)| id.as_str().cmp(instance))
    }

    fn insert(&mut self, instance: String, entry: Entry) {
        match self.position(&instance) {
            Ok(at) => self.0[at].1 = entry,
            Err(at) => self.0.insert(at, (instance, entry)),
        }
    }

    fn remove(&mut self, instance: &str) {
        if let Ok(at) = self.position(instance) {
            self.0.remove(at);
        }
    }

    fn contains(&self, instance: &str) -> bool {
        self.position(instance).is_ok()
    }

    fn values(&self) -> impl Iterator<Item = &Entry> {
        self.0.iter().map(|(_, entry)| entry)
    }
}

/// All entries of a registry, grouped by service id, with the merged route of each id.
#[derive(Debug, Default, Clone)]
pub(crate) struct RouteEntries {
    services: BTreeMap<String, Instances>,
}

impl RouteEntries {
    /// How many entries (one per service id and instance) are held.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub(crate) fn key_count(&self) -> usize {
        self.services
            .values()
            .map(|instances| instances.0.len())
            .sum()
    }

    /// All entries of a listing at once. Listings come sorted by key (service id, then
    /// instance), and sorted input builds the maps in one pass instead of one insert per key;
    /// unsorted input is sorted first. A key given twice keeps its last entry.
    #[cfg_attr(not(any(feature = "etcd", feature = "consul")), allow(dead_code))]
    pub(crate) fn from_listing(
        listing: impl IntoIterator<Item = (EntryKey, u64, ServiceRoute)>,
    ) -> Self {
        let mut groups: Vec<(String, Vec<(String, Entry)>)> = Vec::new();
        for (key, version, route) in listing {
            let instance = key.instance_id.unwrap_or_default();
            let route = Arc::new(route);
            let entry = (instance, Entry { version, route });
            match groups.last_mut() {
                Some((id, entries)) if *id == key.service_id => entries.push(entry),
                _ => groups.push((key.service_id, vec![entry])),
            }
        }
        if !groups.windows(2).all(|pair| pair[0].0 < pair[1].0) {
            let mut by_id: BTreeMap<String, Vec<(String, Entry)>> = BTreeMap::new();
            for (id, entries) in groups {
                by_id.entry(id).or_default().extend(entries);
            }
            groups = by_id.into_iter().collect();
        }
        let services = groups
            .into_iter()
            .map(|(id, entries)| (id, Instances::from_entries(entries)))
            .collect();
        RouteEntries { services }
    }

    /// Stores (or replaces) one entry; returns the merged route of its service id afterwards.
    ///
    /// `version` orders entries (a backend revision or index): the highest supplies the descriptor.
    pub(crate) fn put(
        &mut self,
        key: &EntryKey,
        version: u64,
        route: ServiceRoute,
    ) -> Option<Arc<ServiceRoute>> {
        let instance = key.instance_id.clone().unwrap_or_default();
        let route = Arc::new(route);
        self.services
            .entry(key.service_id.clone())
            .or_default()
            .insert(instance, Entry { version, route });
        self.merged(&key.service_id)
    }

    /// Removes one entry; returns the merged route of its service id afterwards.
    pub(crate) fn remove(&mut self, key: &EntryKey) -> Option<Arc<ServiceRoute>> {
        let instance = key.instance_id.as_deref().unwrap_or_default();
        if let Some(entries) = self.services.get_mut(&key.service_id) {
            entries.remove(instance);
            if entries.0.is_empty() {
                self.services.remove(&key.service_id);
            }
        }
        self.merged(&key.service_id)
    }

    /// Whether an entry is stored under this key.
    pub(crate) fn contains(&self, key: &EntryKey) -> bool {
        let instance = key.instance_id.as_deref().unwrap_or_default();
        self.services
            .get(&key.service_id)
            .is_some_and(|entries| entries.contains(instance))
    }

    /// The merged route of one service id, or `None` when it has no address left. A service id
    /// with one entry shares that entry's route; otherwise the merge is a new route.
    pub(crate) fn merged(&self, service_id: &str) -> Option<Arc<ServiceRoute>> {
        let entries = self.services.get(service_id)?;
        if let [(_, only)] = entries.0.as_slice() {
            if !only.route.addresses.is_empty() && !has_repeated_endpoint(&only.route) {
                return Some(only.route.clone());
            }
        }
        let newest = entries.values().max_by_key(|e| e.version)?;
        let mut route = ServiceRoute::new(newest.route.descriptor.clone(), Vec::new());
        for entry in entries.values() {
            for address in &entry.route.addresses {
                if !route.addresses.iter().any(|a| a.same_endpoint(address)) {
                    route.addresses.push(address.clone());
                }
            }
        }
        (!route.addresses.is_empty()).then(|| Arc::new(route))
    }

    /// Every merged route, in service id order, consuming the entries (copying only routes
    /// that are shared elsewhere).
    #[cfg_attr(not(any(feature = "etcd", feature = "consul")), allow(dead_code))]
    pub(crate) fn into_merged(self) -> Vec<ServiceRoute> {
        self.services
            .into_values()
            .filter_map(|entries| merge_owned(entries.0.into_iter().map(|(_, entry)| entry)))
            .collect()
    }

    /// Every merged route, by service id.
    pub(crate) fn all_merged(&self) -> BTreeMap<String, Arc<ServiceRoute>> {
        self.services
            .keys()
            .filter_map(|id| Some((id.clone(), self.merged(id)?)))
            .collect()
    }
}

/// Whether two addresses of the route name one endpoint (a merge would keep one of them).
fn has_repeated_endpoint(route: &ServiceRoute) -> bool {
    let addresses = &route.addresses;
    (1..addresses.len()).any(|i| {
        addresses[..i]
            .iter()
            .any(|a| a.same_endpoint(&addresses[i]))
    })
}

/// The route of one service id's entries: the newest descriptor (the last of equal versions)
/// and the union of the addresses, moved rather than copied.
fn merge_owned(entries: impl Iterator<Item = Entry>) -> Option<ServiceRoute> {
    let mut newest: Option<(u64, ServiceDescriptor)> = None;
    let mut addresses: Vec<Address> = Vec::new();
    for Entry { version, route } in entries {
        let route = Arc::unwrap_or_clone(route);
        for address in route.addresses {
            if !addresses.iter().any(|a| a.same_endpoint(&address)) {
                addresses.push(address);
            }
        }
        if newest.as_ref().is_none_or(|(best, _)| version >= *best) {
            newest = Some((version, route.descriptor));
        }
    }
    let (_, descriptor) = newest?;
    (!addresses.is_empty()).then(|| ServiceRoute::new(descriptor, addresses))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(service: &str, instance: &str) -> EntryKey {
        EntryKey {
            service_id: service.to_owned(),
            instance_id: Some(instance.to_owned()),
        }
    }

    fn route(service: &str, path: &str, port: u16) -> ServiceRoute {
        ServiceRoute::new(
            ServiceDescriptor::new(service, path),
            vec![Address::new("10.0.0.1", port)],
        )
    }

    fn ports(route: &ServiceRoute) -> Vec<u16> {
        route.addresses.iter().map(|a| a.port).collect()
    }

    #[test]
    fn a_listing_in_any_order_merges_like_one_put_at_a_time() {
        let listing = vec![
            (key("B", "i2"), 5, route("B", "api/b-old", 2)),
            (key("A", "i1"), 1, route("A", "api/a", 1)),
            (key("B", "i1"), 9, route("B", "api/b-new", 1)),
            (key("B", "i2"), 7, route("B", "api/b-old", 3)),
        ];
        let mut one_at_a_time = RouteEntries::default();
        for (key, version, route) in listing.clone() {
            one_at_a_time.put(&key, version, route);
        }
        let bulk = RouteEntries::from_listing(listing);
        assert_eq!(bulk.key_count(), 3, "the repeated key keeps one entry");
        assert_eq!(bulk.all_merged(), one_at_a_time.all_merged());
        let b = bulk.merged("B").unwrap();
        assert_eq!(
            b.route_path(),
            "api/b-new",
            "the newest version's descriptor"
        );
        assert_eq!(ports(&b), [1, 3], "the last entry of a repeated key wins");
        let owned = bulk.clone().into_merged();
        let shared: Vec<ServiceRoute> = bulk
            .all_merged()
            .into_values()
            .map(Arc::unwrap_or_clone)
            .collect();
        assert_eq!(owned, shared);
    }

    #[test]
    fn entries_are_replaced_removed_and_found_by_instance() {
        let mut entries = RouteEntries::from_listing(vec![
            (key("A", "i1"), 1, route("A", "api/a", 1)),
            (key("A", "i3"), 1, route("A", "api/a", 3)),
        ]);
        let merged = entries
            .put(&key("A", "i2"), 2, route("A", "api/a", 2))
            .unwrap();
        assert_eq!(ports(&merged), [1, 2, 3], "instances stay in id order");
        assert!(entries.contains(&key("A", "i2")));
        let merged = entries.remove(&key("A", "i1")).unwrap();
        assert_eq!(ports(&merged), [2, 3]);
        assert!(!entries.contains(&key("A", "i1")));
        entries.remove(&key("A", "i2"));
        assert!(entries.remove(&key("A", "i3")).is_none(), "no address left");
        assert_eq!(entries.key_count(), 0);
    }
}
