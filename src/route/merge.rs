//! Merging per-instance registry entries into routes.
//!
//! A key-value registry holds one entry per (service id, instance). A route is the newest
//! descriptor among its entries plus the union of their addresses.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use foldhash::fast::FixedState;

use super::codec::{decode_route, Decoded, RunDecoder};
use super::key::{EntryKey, KeyLayout};
use super::model::{Address, ServiceDescriptor, ServiceRoute};
use crate::error::{Error, Result};

/// Decodes one raw entry, checking that the key and the value agree on the service id.
pub(crate) fn decode_entry(
    layout: &KeyLayout,
    key: &str,
    value: &[u8],
) -> Result<(EntryKey, ServiceRoute)> {
    let entry_key = parse_key(layout, key)?;
    let route = decode_route(value)?;
    check_entry(key, &entry_key, route.id(), &route.addresses)?;
    Ok((entry_key, route))
}

/// Decodes one raw entry of a listing read in key order (see [`RunDecoder`]), checking that
/// the key and the value agree on the service id.
#[cfg_attr(not(any(feature = "etcd", feature = "consul")), allow(dead_code))]
pub(crate) fn decode_listed(
    decoder: &mut RunDecoder,
    layout: &KeyLayout,
    key: &str,
    value: &[u8],
) -> Result<(EntryKey, Decoded)> {
    let entry_key = parse_key(layout, key)?;
    let decoded = decoder.decode(value)?;
    if let Err(err) = check_entry(key, &entry_key, decoder.id_of(&decoded), &decoded.addresses) {
        // The listing skips it: the next value must not take its descriptor as the one before.
        decoder.forget();
        return Err(err);
    }
    Ok((entry_key, decoded))
}

fn parse_key(layout: &KeyLayout, key: &str) -> Result<EntryKey> {
    layout.parse(key).ok_or_else(|| {
        Error::malformed(format!(
            "key {key:?} is not <prefix><service-id>[/<instance-id>]"
        ))
    })
}

fn check_entry(
    key: &str,
    entry_key: &EntryKey,
    id: &str,
    addresses: &[Arc<Address>],
) -> Result<()> {
    if id != entry_key.service_id {
        return Err(Error::malformed(format!(
            "key {key:?} holds a route for another service id {id:?}"
        )));
    }
    if addresses.is_empty() {
        return Err(Error::malformed(format!(
            "key {key:?} holds no valid address"
        )));
    }
    Ok(())
}

/// An address as an endpoint: equal and hashed by port and host, ignoring ASCII case (see
/// [`Address::same_endpoint`]).
struct EndpointOf<'a>(&'a Address);

impl PartialEq for EndpointOf<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0.same_endpoint(other.0)
    }
}

impl Eq for EndpointOf<'_> {}

impl Hash for EndpointOf<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.port.hash(state);
        let ip = self.0.ip.as_bytes();
        if ip.iter().any(u8::is_ascii_uppercase) {
            state.write(&ip.to_ascii_lowercase());
        } else {
            // Addresses are nearly always lower case already: hash the bytes in one call.
            state.write(ip);
        }
    }
}

/// One instance's entry: what its value added to the route.
#[derive(Debug, Clone)]
struct Entry {
    version: u64,
    kept: Kept,
}

/// How an entry is kept. Nearly every entry is [`Kept::At`]: its value held one address, which
/// the merged route keeps; its instance id is that address's (`host_port`, wayfinder's layout);
/// and its descriptor is the merged one. Such an entry costs its version and an index, with no
/// allocation of its own.
#[derive(Debug, Clone)]
enum Kept {
    /// The merged route's address at this index; the instance id is derived from it.
    At(u32),
    /// Anything else.
    Own(Box<OwnEntry>),
}

/// An entry's own parts.
#[derive(Debug, Clone)]
struct OwnEntry {
    instance: Box<str>,
    addresses: Addresses,
    /// Its descriptor, or `None` when it is the merged route's (the usual case: every instance
    /// of a service id publishes the same one, and the merged route keeps the only copy).
    descriptor: Option<Arc<ServiceDescriptor>>,
}

/// Where an entry's addresses are kept.
#[derive(Debug, Clone)]
enum Addresses {
    /// They are exactly the merged route's (a service id with one entry, as in Surging's layout).
    Merged,
    /// Its one address is the merged route's at this index.
    MergedAt(u32),
    /// Its own copy: several addresses, or one the merge did not keep (a repeated endpoint).
    Own(Box<[Arc<Address>]>),
}

impl Addresses {
    /// The addresses, given the merged route's as they were when this was set.
    fn resolve<'a>(&'a self, merged: &'a [Arc<Address>]) -> &'a [Arc<Address>] {
        match self {
            Addresses::Merged => merged,
            Addresses::MergedAt(at) => std::slice::from_ref(&merged[*at as usize]),
            Addresses::Own(own) => own,
        }
    }
}

/// The port's decimal digits.
fn port_digits(port: u16) -> ([u8; 5], usize) {
    let mut digits = [0u8; 5];
    let mut len = 0;
    let mut rest = port;
    loop {
        digits[len] = b'0' + (rest % 10) as u8;
        len += 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    digits[..len].reverse();
    (digits, len)
}

/// Compares the instance id derived from `address` (`host_port`, see [`instance_id`]) with
/// `instance`, without building it.
///
/// [`instance_id`]: super::key::instance_id
fn cmp_derived(address: &Address, instance: &str) -> Ordering {
    let (digits, len) = port_digits(address.port);
    address
        .ip
        .bytes()
        .chain(std::iter::once(b'_'))
        .chain(digits[..len].iter().copied())
        .cmp(instance.bytes())
}

/// Whether `instance` is the id derived from `address` in the form an entry may leave out: a
/// host with no `:` or brackets (an IPv6 literal is encoded).
fn is_derived(instance: &str, address: &Address) -> bool {
    !address.ip.contains([':', '[', ']']) && cmp_derived(address, instance) == Ordering::Equal
}

impl Entry {
    /// A decoded entry, standing alone.
    fn standalone(
        instance: &str,
        version: u64,
        descriptor: Arc<ServiceDescriptor>,
        addresses: Vec<Arc<Address>>,
    ) -> Self {
        Entry {
            version,
            kept: Kept::Own(Box::new(OwnEntry {
                instance: instance.into(),
                addresses: Addresses::Own(addresses.into_boxed_slice()),
                descriptor: Some(descriptor),
            })),
        }
    }

    /// Orders it against an instance id (`merged`: the addresses its index points into).
    fn cmp_instance(&self, merged: &[Arc<Address>], instance: &str) -> Ordering {
        match &self.kept {
            Kept::At(at) => cmp_derived(&merged[*at as usize], instance),
            Kept::Own(own) => (*own.instance).cmp(instance),
        }
    }

    fn addresses<'a>(&'a self, merged: &'a [Arc<Address>]) -> &'a [Arc<Address>] {
        match &self.kept {
            Kept::At(at) => std::slice::from_ref(&merged[*at as usize]),
            Kept::Own(own) => own.addresses.resolve(merged),
        }
    }

    /// Its own descriptor; `None` when it is the merged route's.
    fn descriptor(&self) -> Option<&ServiceDescriptor> {
        match &self.kept {
            Kept::At(_) => None,
            Kept::Own(own) => own.descriptor.as_deref(),
        }
    }

    /// Its own parts, spelled out first if it was kept by index into `merged`.
    fn own(&mut self, merged: &[Arc<Address>]) -> &mut OwnEntry {
        if let Kept::At(at) = self.kept {
            let address = &merged[at as usize];
            self.kept = Kept::Own(Box::new(OwnEntry {
                instance: format!("{}_{}", address.ip, address.port).into(),
                addresses: Addresses::MergedAt(at),
                descriptor: None,
            }));
        }
        match &mut self.kept {
            Kept::Own(own) => own,
            Kept::At(_) => unreachable!("spelled out above"),
        }
    }

    /// Sets how the merged route keeps its addresses (`None`: it does not; `before`: the
    /// merged addresses it pointed into until now); kept by index alone when it can be.
    fn keep(&mut self, kept: Option<Addresses>, before: &[Arc<Address>], merged: &[Arc<Address>]) {
        if let Some(Addresses::MergedAt(at)) = kept {
            let compact = match &self.kept {
                Kept::At(_) => true,
                Kept::Own(own) => {
                    own.descriptor.is_none() && is_derived(&own.instance, &merged[at as usize])
                }
            };
            if compact {
                self.kept = Kept::At(at);
                return;
            }
        }
        let own = self.own(before);
        own.addresses = match (
            kept,
            std::mem::replace(&mut own.addresses, Addresses::Merged),
        ) {
            (Some(kept), _) => kept,
            (None, Addresses::Own(addresses)) => Addresses::Own(addresses),
            (None, shared) => Addresses::Own(shared.resolve(before).into()),
        };
    }
}

/// One service id's entries, sorted by instance id, and the route they merge into.
///
/// A sorted vector rather than a map: most service ids have a few instances. Descriptors are
/// kept once per service id, in the merged route (which watchers share), so a key per route per
/// instance costs its version and an index, not another copy of the descriptor or address.
#[derive(Debug, Default, Clone)]
struct Instances {
    entries: Vec<Entry>,
    /// The merged route; `None` until an entry arrives.
    merged: Option<Arc<ServiceRoute>>,
}

impl Instances {
    /// The addresses entries kept by index point into.
    fn merged_addresses(&self) -> &[Arc<Address>] {
        self.merged.as_deref().map_or(&[], |route| &route.addresses)
    }

    fn position(&self, instance: &str) -> std::result::Result<usize, usize> {
        let merged = self.merged_addresses();
        self.entries
            .binary_search_by(|entry| entry.cmp_instance(merged, instance))
    }

    #[cfg(test)]
    fn contains(&self, instance: &str) -> bool {
        self.position(instance).is_ok()
    }

    /// Stores an entry (replacing the instance's previous one) without merging.
    fn store(
        &mut self,
        instance: &str,
        version: u64,
        descriptor: Arc<ServiceDescriptor>,
        addresses: Vec<Arc<Address>>,
    ) {
        let entry = Entry::standalone(instance, version, descriptor, addresses);
        self.store_entry(instance, entry);
    }

    /// Puts `entry` in its place by instance id, replacing one of the same instance.
    fn store_entry(&mut self, instance: &str, entry: Entry) {
        match self.position(instance) {
            Ok(at) => self.entries[at] = entry,
            Err(at) => self.entries.insert(at, entry),
        }
    }

    /// Takes in another group of the same service id (later entries replace earlier ones of
    /// the same instance) and merges again.
    #[cfg_attr(not(any(feature = "etcd", feature = "consul")), allow(dead_code))]
    fn absorb(&mut self, other: Instances) {
        let Instances { entries, merged } = other;
        let (descriptor, merged): (_, &[Arc<Address>]) = match &merged {
            Some(route) => (Some(Arc::new(route.descriptor.clone())), &route.addresses),
            None => (None, &[]),
        };
        for mut entry in entries {
            // Its shared parts leave the route they pointed into.
            let own = entry.own(merged);
            if own.descriptor.is_none() {
                own.descriptor = descriptor.clone();
            }
            if !matches!(own.addresses, Addresses::Own(_)) {
                own.addresses = Addresses::Own(own.addresses.resolve(merged).into());
            }
            let instance = own.instance.clone();
            self.store_entry(&instance, entry);
        }
        self.merge();
    }

    /// Removes the instance's entry; returns whether there was one.
    fn remove(&mut self, instance: &str) -> bool {
        let found = self.position(instance);
        if let Ok(at) = found {
            self.entries.remove(at);
        }
        found.is_ok()
    }

    /// Merges the entries again: the newest descriptor (the last of equal versions) and the
    /// union of the addresses; entries whose descriptor is the merged one drop their copy.
    fn merge(&mut self) {
        let old = self.merged.take();
        let before: &[Arc<Address>] = old.as_deref().map_or(&[], |route| &route.addresses);
        // `max_by_key` keeps the last of equal maxima: the last entry of the newest version.
        let Some(newest) = (0..self.entries.len()).max_by_key(|&at| self.entries[at].version)
        else {
            return;
        };
        let newest_own = match &mut self.entries[newest].kept {
            Kept::Own(own) => own.descriptor.take(),
            Kept::At(_) => None,
        };
        let descriptor = match newest_own {
            // The newest entry's own descriptor moves into the merged route. If it differs from
            // the one the others shared, they keep a copy of that.
            Some(own) => {
                if let Some(old) = old.as_ref().filter(|old| old.descriptor != *own) {
                    let shared = Arc::new(old.descriptor.clone());
                    for (at, entry) in self.entries.iter_mut().enumerate() {
                        if at != newest && entry.descriptor().is_none() {
                            entry.own(before).descriptor = Some(shared.clone());
                        }
                    }
                }
                // Entries sharing it (a listing's instances) let go first, so it moves.
                for entry in &mut self.entries {
                    if let Kept::Own(other) = &mut entry.kept {
                        if other
                            .descriptor
                            .as_ref()
                            .is_some_and(|d| Arc::ptr_eq(d, &own))
                        {
                            other.descriptor = None;
                        }
                    }
                }
                Arc::unwrap_or_clone(own)
            }
            // It shared the merged descriptor, which stays.
            None => match &old {
                Some(old) => old.descriptor.clone(),
                None => return,
            },
        };
        for entry in &mut self.entries {
            if let Kept::Own(own) = &mut entry.kept {
                if own.descriptor.as_deref() == Some(&descriptor) {
                    own.descriptor = None;
                }
            }
        }
        let (addresses, kept) = union(&self.entries, before);
        for (entry, kept) in self.entries.iter_mut().zip(kept) {
            entry.keep(kept, before, &addresses);
        }
        self.merged =
            (!addresses.is_empty()).then(|| Arc::new(ServiceRoute::shared(descriptor, addresses)));
    }
}

/// The entries' addresses (`before`: the previous merged route's, which entries may point
/// into), each endpoint once (the first seen), in entry order; and for each entry, how the new
/// merged route keeps its addresses (`None`: it does not, the entry keeps its own). A route
/// served by a thousand instances is merged in linear time, not quadratic.
fn union(
    entries: &[Entry],
    before: &[Arc<Address>],
) -> (Vec<Arc<Address>>, Vec<Option<Addresses>>) {
    let slices: Vec<&[Arc<Address>]> = entries
        .iter()
        .map(|entry| entry.addresses(before))
        .collect();
    let mut addresses: Vec<Arc<Address>> = Vec::with_capacity(slices.iter().map(|s| s.len()).sum());
    let small = addresses.capacity() <= 16;
    let mut seen: HashSet<EndpointOf<'_>, FixedState> = HashSet::default();
    let mut kept = Vec::with_capacity(entries.len());
    for slice in &slices {
        let start = addresses.len();
        let mut all_new = true;
        for address in *slice {
            let new = if small {
                !addresses.iter().any(|a| a.same_endpoint(address))
            } else {
                seen.insert(EndpointOf(address))
            };
            if new {
                addresses.push(address.clone());
            } else {
                all_new = false;
            }
        }
        kept.push(match (all_new, slice.len(), entries.len()) {
            (true, 1, _) => Some(Addresses::MergedAt(start as u32)),
            (true, _, 1) => Some(Addresses::Merged),
            _ => None,
        });
    }
    addresses.shrink_to_fit();
    (addresses, kept)
}

/// One service id's entries from a listing, already merged; built where the listing is decoded
/// (on a blocking thread, page by page), so a cold load holds merged routes, not every
/// instance's decoded copy of its descriptor.
#[cfg_attr(not(any(feature = "etcd", feature = "consul")), allow(dead_code))]
pub(crate) struct Group(ServiceKey, Instances);

#[cfg_attr(not(any(feature = "etcd", feature = "consul")), allow(dead_code))]
impl Group {
    /// The groups of a listing, one per run of keys of one service id, in listing order
    /// (listings come sorted by key; [`RouteEntries::from_groups`] sorts any that do not).
    pub(crate) fn listing(
        listing: impl IntoIterator<Item = (EntryKey, u64, Decoded)>,
    ) -> Vec<Group> {
        let mut groups: Vec<Group> = Vec::new();
        // The descriptor of the previous entry, which a repeated one shares.
        let mut previous: Option<Arc<ServiceDescriptor>> = None;
        for (key, version, decoded) in listing {
            let instance = key.instance_id.as_deref().unwrap_or_default();
            let same_group = groups
                .last()
                .is_some_and(|Group(id, _)| id.as_str() == key.service_id);
            let descriptor = match (decoded.descriptor, &previous) {
                (Some(own), _) => Arc::new(own),
                (None, Some(previous)) if same_group => previous.clone(),
                (None, _) => {
                    tracing::warn!(service_id = %key.service_id, "skipping an entry whose descriptor repeats one not listed before it");
                    continue;
                }
            };
            previous = Some(descriptor.clone());
            if !same_group {
                let id = ServiceKey::Own(key.service_id.as_str().into());
                groups.push(Group(id, Instances::default()));
            }
            if let Some(Group(_, instances)) = groups.last_mut() {
                instances.store(instance, version, descriptor, decoded.addresses);
            }
        }
        drop(previous);
        for Group(id, instances) in &mut groups {
            instances.entries.shrink_to_fit();
            instances.merge();
            // Keyed by the merged route from here on: the id's own copy is freed on the thread
            // that made it, while its neighbours are still being made.
            *id = ServiceKey::of(id.as_str(), instances);
        }
        groups
    }
}

/// A service id as the entries' map holds it: through its merged route, which holds the id
/// already, or as text of its own while it has none.
#[derive(Clone)]
enum ServiceKey {
    Merged(Arc<ServiceRoute>),
    Own(Box<str>),
}

impl ServiceKey {
    /// The key of a service id's instances.
    fn of(id: &str, instances: &Instances) -> Self {
        match &instances.merged {
            Some(route) => ServiceKey::Merged(route.clone()),
            None => ServiceKey::Own(id.into()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            ServiceKey::Merged(route) => route.id(),
            ServiceKey::Own(id) => id,
        }
    }
}

impl std::fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

impl PartialEq for ServiceKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for ServiceKey {}

impl PartialOrd for ServiceKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ServiceKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Borrow<str> for ServiceKey {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

/// A listing of routes as decoded entries that each have their own descriptor.
#[cfg(test)]
fn decoded(
    listing: impl IntoIterator<Item = (EntryKey, u64, ServiceRoute)>,
) -> impl Iterator<Item = (EntryKey, u64, Decoded)> {
    listing.into_iter().map(|(key, version, route)| {
        let decoded = Decoded {
            descriptor: Some(route.descriptor),
            addresses: route.addresses,
        };
        (key, version, decoded)
    })
}

/// All entries of a registry, grouped by service id, with the merged route of each id.
#[derive(Debug, Default, Clone)]
pub(crate) struct RouteEntries {
    services: BTreeMap<ServiceKey, Instances>,
    /// Service ids stored to or removed from since [`RouteEntries::take_changed`].
    changed: BTreeSet<String>,
}

impl RouteEntries {
    /// How many entries (one per service id and instance) are held.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub(crate) fn key_count(&self) -> usize {
        self.services
            .values()
            .map(|instances| instances.entries.len())
            .sum()
    }

    /// All entries of a listing at once (see [`Group::listing`]).
    #[cfg(test)]
    pub(crate) fn from_listing(
        listing: impl IntoIterator<Item = (EntryKey, u64, ServiceRoute)>,
    ) -> Self {
        Self::from_groups(Group::listing(decoded(listing)))
    }

    /// The entries of merged groups, in the order they were listed (pages, or halves of pages
    /// decoded apart): a service id split between two groups is joined, and groups out of
    /// order are sorted first. A key given twice keeps its last entry.
    #[cfg_attr(not(any(feature = "etcd", feature = "consul")), allow(dead_code))]
    pub(crate) fn from_groups(groups: impl IntoIterator<Item = Group>) -> Self {
        let mut joined: Vec<(ServiceKey, Instances)> = Vec::new();
        let mut sorted = true;
        let join = |joined: &mut Vec<(ServiceKey, Instances)>, Group(id, instances)| match joined
            .last_mut()
        {
            Some((last, into)) if *last == id => into.absorb(instances),
            _ => joined.push((id, instances)),
        };
        for group in groups {
            sorted &= joined.last().is_none_or(|(last, _)| *last <= group.0);
            join(&mut joined, group);
        }
        if !sorted {
            // Stable: groups of one id keep their order, so the last entry of a key stays.
            let mut groups: Vec<Group> = joined.into_iter().map(|(id, i)| Group(id, i)).collect();
            groups.sort_by(|a, b| a.0.cmp(&b.0));
            joined = Vec::with_capacity(groups.len());
            for group in groups {
                join(&mut joined, group);
            }
        }
        RouteEntries {
            services: joined
                .into_iter()
                .map(|(id, instances)| (ServiceKey::of(id.as_str(), &instances), instances))
                .collect(),
            changed: BTreeSet::new(),
        }
    }

    /// Stores (or replaces) one entry. Its service id is merged again at the next
    /// [`RouteEntries::take_changed`], once however many of its entries changed meanwhile.
    ///
    /// `version` orders entries (a backend revision or index): the highest supplies the descriptor.
    pub(crate) fn put(&mut self, key: &EntryKey, version: u64, route: ServiceRoute) {
        let instance = key.instance_id.as_deref().unwrap_or_default();
        let id = key.service_id.as_str();
        let (descriptor, addresses) = (Arc::new(route.descriptor), route.addresses);
        match self.services.get_mut(id) {
            Some(instances) => instances.store(instance, version, descriptor, addresses),
            None => {
                let mut instances = Instances::default();
                instances.store(instance, version, descriptor, addresses);
                self.services.insert(ServiceKey::Own(id.into()), instances);
            }
        }
        self.changed.insert(key.service_id.clone());
    }

    /// Removes one entry, if stored (see [`RouteEntries::put`]).
    pub(crate) fn remove(&mut self, key: &EntryKey) {
        let instance = key.instance_id.as_deref().unwrap_or_default();
        let removed = self
            .services
            .get_mut(key.service_id.as_str())
            .is_some_and(|instances| instances.remove(instance));
        if removed {
            self.changed.insert(key.service_id.clone());
        }
    }

    /// The merged route of every service id changed since the last call (`None`: no address
    /// left), in service id order. A batch of a watch's events costs one merge per service id it
    /// touched, not one per event: under churn, a route of a thousand instances is merged once
    /// per batch.
    pub(crate) fn take_changed(&mut self) -> Vec<(String, Option<Arc<ServiceRoute>>)> {
        let changed = std::mem::take(&mut self.changed);
        changed
            .into_iter()
            .map(|id| {
                let Some((_, mut instances)) = self.services.remove_entry(id.as_str()) else {
                    return (id, None);
                };
                if instances.entries.is_empty() {
                    return (id, None);
                }
                instances.merge();
                let merged = instances.merged.clone();
                // Keyed anew: the key holds the merged route, which just changed.
                self.services
                    .insert(ServiceKey::of(&id, &instances), instances);
                (id, merged)
            })
            .collect()
    }

    /// Whether an entry is stored under this key.
    #[cfg(test)]
    pub(crate) fn contains(&self, key: &EntryKey) -> bool {
        let instance = key.instance_id.as_deref().unwrap_or_default();
        self.services
            .get(key.service_id.as_str())
            .is_some_and(|instances| instances.contains(instance))
    }

    /// The merged route of one service id, or `None` when it has no address left.
    #[cfg(test)]
    pub(crate) fn merged(&self, service_id: &str) -> Option<Arc<ServiceRoute>> {
        self.services.get(service_id)?.merged.clone()
    }

    /// Every merged route, in service id order, consuming the entries (a route no one else
    /// holds is moved, not copied).
    #[cfg_attr(not(any(feature = "etcd", feature = "consul")), allow(dead_code))]
    pub(crate) fn into_merged(self) -> Vec<ServiceRoute> {
        self.services
            .into_values()
            .filter_map(|instances| instances.merged.map(Arc::unwrap_or_clone))
            .collect()
    }

    /// Every merged route, in service id order.
    pub(crate) fn all_merged(&self) -> Vec<Arc<ServiceRoute>> {
        self.services
            .values()
            .filter_map(|instances| instances.merged.clone())
            .collect()
    }
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

    /// Stores an entry and merges: the route of its service id afterwards.
    fn put(
        entries: &mut RouteEntries,
        key: &EntryKey,
        version: u64,
        route: ServiceRoute,
    ) -> Option<Arc<ServiceRoute>> {
        entries.put(key, version, route);
        entries.take_changed().pop()?.1
    }

    /// Removes an entry and merges: the route of its service id afterwards.
    fn remove(entries: &mut RouteEntries, key: &EntryKey) -> Option<Arc<ServiceRoute>> {
        entries.remove(key);
        entries.take_changed().pop()?.1
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
            put(&mut one_at_a_time, &key, version, route);
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
            .into_iter()
            .map(Arc::unwrap_or_clone)
            .collect();
        assert_eq!(owned, shared);
    }

    #[test]
    fn a_listing_decoded_in_pieces_merges_like_the_whole() {
        let listing = vec![
            (key("A", "i1"), 1, route("A", "api/a", 1)),
            (key("B", "i1"), 2, route("B", "api/b-old", 1)),
            (key("B", "i2"), 3, route("B", "api/b-new", 2)),
            (key("B", "i3"), 1, route("B", "api/b-old", 3)),
            (key("C", "i1"), 4, route("C", "api/c", 4)),
        ];
        let whole = RouteEntries::from_listing(listing.clone()).all_merged();
        for at in 0..=listing.len() {
            let (first, second) = listing.split_at(at);
            let pieces = [
                Group::listing(decoded(first.to_vec())),
                Group::listing(decoded(second.to_vec())),
            ];
            let joined = RouteEntries::from_groups(pieces.into_iter().flatten());
            assert_eq!(joined.all_merged(), whole, "split at {at}");
            assert_eq!(joined.key_count(), listing.len());
        }
    }

    #[test]
    fn the_newest_descriptor_wins_and_an_older_one_returns_when_the_newest_leaves() {
        let mut entries = RouteEntries::default();
        put(&mut entries, &key("A", "i1"), 1, route("A", "api/old", 1));
        put(&mut entries, &key("A", "i2"), 2, route("A", "api/old", 2));
        let shared = |entries: &RouteEntries| {
            entries
                .services
                .get("A")
                .unwrap()
                .entries
                .iter()
                .filter(|entry| entry.descriptor().is_none())
                .count()
        };
        assert_eq!(
            shared(&entries),
            2,
            "one descriptor copy, in the merged route"
        );
        let merged = put(&mut entries, &key("A", "i3"), 3, route("A", "api/new", 3)).unwrap();
        assert_eq!(merged.route_path(), "api/new");
        assert_eq!(ports(&merged), [1, 2, 3]);
        assert_eq!(
            shared(&entries),
            1,
            "the older instances keep their own descriptor"
        );
        let merged = remove(&mut entries, &key("A", "i3")).unwrap();
        assert_eq!(merged.route_path(), "api/old");
        assert_eq!(ports(&merged), [1, 2]);
        assert_eq!(shared(&entries), 2);
    }

    #[test]
    fn an_instance_repeating_an_endpoint_keeps_its_own_details_for_when_the_first_leaves() {
        let mut entries = RouteEntries::default();
        let weighted = |weight| {
            let mut address = Address::new("10.0.0.1", 1);
            address.weight = Some(weight);
            ServiceRoute::new(ServiceDescriptor::new("A", "api/a"), vec![address])
        };
        put(&mut entries, &key("A", "i1"), 1, weighted(5));
        let merged = put(&mut entries, &key("A", "i2"), 2, weighted(9)).unwrap();
        assert_eq!(merged.addresses.len(), 1, "one endpoint");
        assert_eq!(merged.addresses[0].weight, Some(5), "the first entry's");
        put(&mut entries, &key("A", "i3"), 3, route("A", "api/a", 3));
        let merged = remove(&mut entries, &key("A", "i1")).unwrap();
        assert_eq!(ports(&merged), [1, 3]);
        assert_eq!(
            merged.addresses[0].weight,
            Some(9),
            "the second entry's own copy"
        );
        let merged = remove(&mut entries, &key("A", "i2")).unwrap();
        assert_eq!(
            ports(&merged),
            [3],
            "an address kept by index follows its entry"
        );
    }

    #[test]
    fn entries_in_wayfinder_layout_are_kept_by_index_and_still_found_by_instance() {
        let at = |port: u16| {
            let address = Address::new("10.0.0.1", port);
            let instance = crate::route::instance_id(&address).unwrap();
            (key("A", &instance), route("A", "api/a", port))
        };
        let compact = |entries: &RouteEntries| {
            entries
                .services
                .get("A")
                .unwrap()
                .entries
                .iter()
                .filter(|entry| matches!(entry.kept, Kept::At(_)))
                .count()
        };
        let mut entries = RouteEntries::default();
        for port in [3, 1, 20, 2] {
            let (key, route) = at(port);
            put(&mut entries, &key, 1, route);
        }
        assert_eq!(compact(&entries), 4, "no entry keeps anything of its own");
        assert!(entries.contains(&key("A", "10.0.0.1_2")));
        assert!(!entries.contains(&key("A", "10.0.0.1_4")));
        let (key2, mut newer) = at(2);
        newer.descriptor.route_path = "api/a2".into();
        let merged = put(&mut entries, &key2, 2, newer).unwrap();
        assert_eq!(merged.route_path(), "api/a2");
        assert_eq!(compact(&entries), 1, "the others keep the older descriptor");
        let merged = remove(&mut entries, &key2).unwrap();
        assert_eq!(merged.route_path(), "api/a");
        assert_eq!(ports(&merged), [1, 20, 3], "in instance id order");
        assert_eq!(compact(&entries), 3);
        // An instance id that is not its address's stays with its entry.
        put(&mut entries, &key("A", "other"), 1, route("A", "api/a", 9));
        assert!(entries.contains(&key("A", "other")));
        assert_eq!(compact(&entries), 3);
    }

    #[test]
    fn a_listing_parses_a_repeated_descriptor_once_and_still_checks_every_key() {
        let layout = KeyLayout::new("p/").unwrap();
        let value = |id: &str, port: u16| {
            let route = ServiceRoute::new(
                ServiceDescriptor::new(id, "api/a").with_metadata("HttpMethod", "GET"),
                vec![Address::new("10.0.0.1", port)],
            );
            crate::route::encode_route(&route).unwrap()
        };
        let mut decoder = RunDecoder::default();
        let (_, first) = decode_listed(&mut decoder, &layout, "p/A/i1", &value("A", 1)).unwrap();
        let (_, second) = decode_listed(&mut decoder, &layout, "p/A/i2", &value("A", 2)).unwrap();
        assert!(first.descriptor.is_some());
        assert!(
            second.descriptor.is_none(),
            "the same text is not parsed again"
        );
        assert_eq!(second.addresses[0].port, 2);
        // The repeated descriptor names A, so it cannot sit under B's key.
        let err = decode_listed(&mut decoder, &layout, "p/B/i1", &value("A", 3)).unwrap_err();
        assert!(err.to_string().contains("another service id"), "{err}");
        // An older value with the token in its address has a descriptor of its own.
        let tokened = br#"{"AddressDescriptors":[{"Type":"x","Value":"{\"Ip\":\"10.0.0.1\",\"Port\":4,\"Token\":\"t\"}"}],"ServiceDescriptor":{"Id":"A","RoutePath":"api/a","Metadatas":{"HttpMethod":"GET"}}}"#;
        let (_, own) = decode_listed(&mut decoder, &layout, "p/A/i4", tokened).unwrap();
        assert_eq!(own.descriptor.unwrap().token.as_deref(), Some("t"));
        let listing = [("i1", 1), ("i2", 2), ("i3", 3)].map(|(instance, port)| {
            let key = format!("p/A/{instance}");
            decode_listed(&mut decoder, &layout, &key, &value("A", port)).unwrap()
        });
        let groups = Group::listing(listing.into_iter().map(|(key, decoded)| (key, 1, decoded)));
        let merged = RouteEntries::from_groups(groups).merged("A").unwrap();
        assert_eq!(ports(&merged), [1, 2, 3]);
        assert_eq!(merged.descriptor.metadata.get("HttpMethod").unwrap(), "GET");
    }

    #[test]
    fn a_skipped_value_lends_its_descriptor_to_no_other() {
        let layout = KeyLayout::new("p/").unwrap();
        let value = |id: &str, path: &str, port: u16| {
            let route = ServiceRoute::new(
                ServiceDescriptor::new(id, path),
                vec![Address::new("10.0.0.1", port.max(1))],
            );
            let text = String::from_utf8(crate::route::encode_route(&route).unwrap()).unwrap();
            // Port 0 is no valid address: the value is skipped.
            text.replace(r#"\"Port\":1}"#, &format!(r#"\"Port\":{port}}}"#))
        };
        // As etcd's and Consul's listings do: skip what does not decode, group the rest.
        let list = |values: &[(&str, String)]| {
            let mut decoder = RunDecoder::default();
            let decoded = values.iter().filter_map(|(key, value)| {
                decode_listed(&mut decoder, &layout, key, value.as_bytes())
                    .ok()
                    .map(|(key, decoded)| (key, 1, decoded))
            });
            RouteEntries::from_groups(Group::listing(decoded))
        };
        let entries = list(&[
            ("p/A/i1", value("A", "api/old", 1)),
            ("p/A/i2", value("A", "api/new", 0)),
            ("p/A/i3", value("A", "api/new", 3)),
        ]);
        let merged = entries.merged("A").unwrap();
        assert_eq!(merged.route_path(), "api/new", "i3's own descriptor");
        assert_eq!(ports(&merged), [1, 3]);
        let entries = list(&[
            ("p/A/i1", value("A", "api/a", 1)),
            ("p/B/i1", value("B", "api/b", 0)),
            ("p/B/i2", value("B", "api/b", 2)),
            ("p/B/i3", value("B", "api/b", 3)),
        ]);
        assert_eq!(ports(&entries.merged("B").unwrap()), [2, 3]);
    }

    #[test]
    fn entries_are_replaced_removed_and_found_by_instance() {
        let mut entries = RouteEntries::from_listing(vec![
            (key("A", "i1"), 1, route("A", "api/a", 1)),
            (key("A", "i3"), 1, route("A", "api/a", 3)),
        ]);
        let merged = put(&mut entries, &key("A", "i2"), 2, route("A", "api/a", 2)).unwrap();
        assert_eq!(ports(&merged), [1, 2, 3], "instances stay in id order");
        assert!(entries.contains(&key("A", "i2")));
        let merged = remove(&mut entries, &key("A", "i1")).unwrap();
        assert_eq!(ports(&merged), [2, 3]);
        assert!(!entries.contains(&key("A", "i1")));
        remove(&mut entries, &key("A", "i2"));
        assert!(
            remove(&mut entries, &key("A", "i3")).is_none(),
            "no address left"
        );
        assert_eq!(entries.key_count(), 0);
    }
}
