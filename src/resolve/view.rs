//! The resolver's view of the registry: what the registry says, the addresses it removed that
//! are still held (empty protection), and the prepared entries and shared endpoints built from
//! both.
//!
//! Empty protection (after Dubbo's empty-push protection, gRPC's A57 does-not-exist timer and
//! Envoy's eventually consistent discovery): when a route would lose its last address, its last
//! addresses stay for a grace period, so that a liveness blip (an agent dying under a healthy
//! instance, a registry restarted empty) costs no lookups. After a registry-wide reset every
//! removal is held the same way. A held address leaves when its grace ends, when local health
//! marks it unhealthy (discovery and health agree), or when the registry lists the route with
//! addresses again (after a reset: when it lists that address again). A route that keeps other
//! addresses drops a removed one at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use foldhash::fast::RandomState;
use tokio::time::Instant;

use super::endpoint::{Endpoint, EndpointKey};
use super::resolver::ResolverConfig;
use super::slow_start;
use super::table::{is_template, path_key, RouteEntry, RouteTable, Templates};
use super::users::Users;
use crate::route::{Address, RouteSet, ServiceRoute};
use crate::watch::RouteEvent;

/// How often held addresses are checked against local health while any is held.
const HELD_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// `now + grace`, or a year from now for a grace too long to add.
fn deadline(now: Instant, grace: Duration) -> Instant {
    now.checked_add(grace)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

/// Addresses of one route that the registry removed but the resolver still serves.
struct Held {
    /// The route as last listed with them (its descriptor serves while the registry has none).
    route: Arc<ServiceRoute>,
    /// Each held address and when its grace ends.
    addresses: Vec<(Arc<Address>, Instant)>,
}

/// The resolver task's state.
pub(crate) struct View {
    /// What the registry says, by service id.
    registry: RouteSet,
    held: HashMap<String, Held, RandomState>,
    /// The working copy of the table, changed route by route and published as snapshots that
    /// share what did not change.
    table: RouteTable,
    /// Every endpoint in use, with how many entries use it (and adopted ones with none yet).
    endpoints: Users,
    /// Exact paths that several ids claim, with those ids; the table serves one (listed before
    /// held, then the smallest id). A path with one claimant is only in the table.
    contested: HashMap<Arc<str>, Vec<Arc<str>>, RandomState>,
    /// Entries with templated paths; their index is rebuilt when one changes.
    templated: BTreeMap<Arc<str>, Arc<RouteEntry>>,
    templates_dirty: bool,
    /// Whether the set of endpoints changed since the last [`View::take_endpoints_changed`].
    endpoints_changed: bool,
    grace: Duration,
    /// Until when every removal is held, after a registry-wide reset.
    reset_until: Option<Instant>,
    /// The watch's reset count already accounted for.
    resets_seen: u64,
    /// Whether the first whole view was loaded (addresses seen after it are new to the client).
    loaded: bool,
}

impl View {
    /// An empty view whose protection lasts `grace` (zero turns it off).
    pub(crate) fn new(grace: Duration) -> Self {
        View {
            registry: RouteSet::default(),
            held: HashMap::default(),
            table: RouteTable::default(),
            endpoints: Users::default(),
            contested: HashMap::default(),
            templated: BTreeMap::new(),
            templates_dirty: false,
            endpoints_changed: true,
            grace,
            reset_until: None,
            resets_seen: 0,
            loaded: false,
        }
    }

    /// Takes `count` as the watch's resets already reflected in what it replays.
    pub(crate) fn baseline_resets(&mut self, count: u64) {
        self.resets_seen = count;
    }

    /// Notes a reset when the watch's count rose past what was accounted for.
    pub(crate) fn observe_resets(&mut self, count: u64, now: Instant) {
        if count > self.resets_seen {
            self.resets_seen = count;
            self.note_reset(now);
        }
    }

    /// Reuses these endpoints (and their health) for addresses they serve.
    pub(crate) fn adopt_endpoints<'a>(
        &mut self,
        endpoints: impl Iterator<Item = &'a Arc<Endpoint>>,
    ) {
        for endpoint in endpoints {
            self.endpoints.adopt(endpoint);
        }
    }

    /// The registry reset as a whole: for the grace period, every removal is held.
    pub(crate) fn note_reset(&mut self, now: Instant) {
        if !self.grace.is_zero() {
            tracing::warn!(grace = ?self.grace, "the registry reset; holding removed addresses");
            self.reset_until = Some(deadline(now, self.grace));
        }
    }

    fn holding_every_removal(&self, now: Instant) -> bool {
        self.reset_until.is_some_and(|until| now < until)
    }

    /// Applies one event of the registry's watch.
    pub(crate) fn apply(&mut self, event: RouteEvent, config: &ResolverConfig, now: Instant) {
        match event {
            RouteEvent::Created(route) | RouteEvent::Changed(route) => {
                let id = route.id().to_owned();
                let old = self.registry.insert(route.clone());
                if let Some(old) = old.filter(|_| self.holding_every_removal(now)) {
                    let gone = old
                        .addresses
                        .iter()
                        .filter(|a| !route.addresses.iter().any(|b| b.same_endpoint(a)));
                    let gone: Vec<Arc<Address>> = gone.cloned().collect();
                    self.hold(&old, gone, now);
                }
                let resetting = self.holding_every_removal(now);
                if let Some(held) = self.held.get_mut(&id) {
                    if resetting {
                        // Others may still be refilling the registry: only those listed leave.
                        held.addresses
                            .retain(|(a, _)| !route.addresses.iter().any(|b| b.same_endpoint(a)));
                    } else if !route.addresses.is_empty() {
                        // The route has live addresses again: it no longer needs the old ones.
                        held.addresses.clear();
                    }
                    if held.addresses.is_empty() {
                        self.held.remove(&id);
                    }
                }
                self.rebuild(&id, config);
            }
            RouteEvent::Removed(route) => {
                let id = route.id().to_owned();
                self.registry.remove(&id);
                self.hold(&route, route.addresses.clone(), now);
                self.rebuild(&id, config);
            }
            _ => {}
        }
    }

    /// Replaces the registry's side with `routes` (a first good read replacing a snapshot):
    /// listed routes are taken outright; a route the read no longer lists loses its last
    /// addresses, so it is held as any such route is.
    pub(crate) fn replace(
        &mut self,
        routes: Vec<Arc<ServiceRoute>>,
        config: &ResolverConfig,
        now: Instant,
    ) {
        self.registry
            .reserve(routes.len().saturating_sub(self.registry.len()));
        let mut fresh = RouteSet::default();
        fresh.reserve(routes.len());
        for route in routes {
            fresh.insert(route);
        }
        self.held.clear();
        let gone: Vec<Arc<ServiceRoute>> = self
            .registry
            .iter()
            .filter(|route| !fresh.contains(route.id()))
            .cloned()
            .collect();
        for route in gone {
            self.registry.remove(route.id());
            self.hold(&route, route.addresses.clone(), now);
            self.rebuild(route.id(), config);
        }
        for route in fresh.iter() {
            if self.registry.get(route.id()) != Some(route) {
                self.registry.insert(route.clone());
                self.rebuild(route.id(), config);
            }
        }
        self.loaded = true;
    }

    fn hold(&mut self, route: &Arc<ServiceRoute>, addresses: Vec<Arc<Address>>, now: Instant) {
        if self.grace.is_zero() || addresses.is_empty() {
            return;
        }
        let until = deadline(now, self.grace);
        let held = self
            .held
            .entry(route.id().to_owned())
            .or_insert_with(|| Held {
                route: route.clone(),
                addresses: Vec::new(),
            });
        held.route = route.clone();
        for address in addresses {
            if !held
                .addresses
                .iter()
                .any(|(a, _)| a.same_endpoint(&address))
            {
                tracing::info!(service_id = %route.id(), %address, grace = ?self.grace, "holding an address the registry removed");
                held.addresses.push((address, until));
            }
        }
    }

    /// Releases held addresses whose grace ended or that local health marks unhealthy; returns
    /// whether the view changed.
    pub(crate) fn release_due(&mut self, config: &ResolverConfig, now: Instant) -> bool {
        let endpoints = &self.endpoints;
        let mut changed = Vec::new();
        for (id, held) in &mut self.held {
            let before = held.addresses.len();
            held.addresses.retain(|(address, until)| {
                let unhealthy = endpoints
                    .get(&EndpointKey::shared(address))
                    .is_some_and(|e| !e.is_healthy());
                let keep = now < *until && !unhealthy;
                if !keep {
                    tracing::info!(service_id = %id, %address, unhealthy, "released a held address");
                }
                keep
            });
            if held.addresses.len() != before {
                changed.push(id.clone());
            }
        }
        self.held.retain(|_, held| !held.addresses.is_empty());
        for id in &changed {
            self.rebuild(id, config);
        }
        !changed.is_empty()
    }

    /// When [`View::release_due`] should run next; `None` while nothing is held.
    pub(crate) fn next_release(&self, now: Instant) -> Option<Instant> {
        let earliest = self
            .held
            .values()
            .flat_map(|held| held.addresses.iter().map(|(_, until)| *until))
            .min()?;
        Some(earliest.min(now + HELD_CHECK_INTERVAL))
    }

    /// Routes holding addresses the registry removed.
    pub(crate) fn protected_routes(&self) -> usize {
        self.held.len()
    }

    /// The route the resolver serves for `id`: the registry's, plus held addresses.
    fn effective(&self, id: &str) -> Option<Arc<ServiceRoute>> {
        let listed = self.registry.get(id);
        let Some(held) = self.held.get(id) else {
            return listed.cloned();
        };
        let (descriptor, mut addresses) = match listed {
            Some(route) => (route.descriptor.clone(), route.addresses.clone()),
            None => (held.route.descriptor.clone(), Vec::new()),
        };
        addresses.extend(held.addresses.iter().map(|(a, _)| a.clone()));
        Some(Arc::new(ServiceRoute::shared(descriptor, addresses)))
    }

    fn rebuild(&mut self, id: &str, config: &ResolverConfig) {
        match self.effective(id) {
            Some(route) if !route.addresses.is_empty() => self.upsert(route, config),
            _ => self.place(id, None),
        }
    }

    /// Prepares one route's entry, sharing endpoints with every other route at the same address.
    pub(crate) fn upsert(&mut self, route: Arc<ServiceRoute>, config: &ResolverConfig) {
        let (endpoints, table, changed) = (
            &mut self.endpoints,
            &mut self.table,
            &mut self.endpoints_changed,
        );
        let selector = config.selector_for(route.id());
        let initial = !self.loaded;
        let slow_start = &config.slow_start;
        let entry = RouteEntry::new(route, selector, config.guards(), slow_start, |address| {
            let key = EndpointKey::shared(address);
            let (endpoint, first) =
                endpoints.take(&key, || Arc::new(Endpoint::with_key(key.clone())));
            if first {
                slow_start::begin(slow_start, &endpoint, address, initial);
                table.set_endpoint(&key, Some(endpoint.clone()));
                *changed = true;
            }
            endpoint
        });
        let entry = Arc::new(entry);
        let route = entry.route.clone();
        self.place(route.id(), Some(entry));
    }

    /// Sets (or removes) the entry of `id` in the table and its path indexes; releases the
    /// endpoints of the entry it replaces (after the new one took its own, so shared endpoints
    /// keep their health).
    fn place(&mut self, id: &str, entry: Option<Arc<RouteEntry>>) {
        let old = self.table.by_id(id).cloned();
        self.table.set_entry(id, entry.clone());
        match (&old, &entry) {
            // The same exact path, claimed by this id alone (a change of addresses, the usual
            // change): it only points at the new entry.
            (Some(old), Some(new))
                if old.route().route_path() == new.route().route_path()
                    && !is_template(new.route().route_path())
                    && !self
                        .contested
                        .contains_key(&*path_key(new.route().route_path())) =>
            {
                self.table
                    .set_path(&path_key(new.route().route_path()), Some(new.clone()));
            }
            _ => {
                if let Some(old) = &old {
                    let path = old.route().route_path();
                    if is_template(path) {
                        self.templated.remove(id);
                        self.templates_dirty = true;
                    } else {
                        self.unclaim(&path_key(path), id);
                    }
                }
                if let Some(entry) = &entry {
                    let path = entry.route().route_path();
                    if is_template(path) {
                        self.templated.insert(Arc::from(id), entry.clone());
                        self.templates_dirty = true;
                    } else {
                        self.claim(&path_key(path), entry);
                    }
                }
            }
        }
        if let Some(old) = old {
            for endpoint in old.endpoints() {
                self.release(endpoint.key());
            }
        }
    }

    fn release(&mut self, key: &EndpointKey) {
        if self.endpoints.release(key) {
            self.table.set_endpoint(key, None);
            self.endpoints_changed = true;
        }
    }

    fn claim(&mut self, path: &str, entry: &Arc<RouteEntry>) {
        let id = entry.route().id();
        if let Some(ids) = self.contested.get_mut(path) {
            if !ids.iter().any(|claimant| **claimant == *id) {
                ids.push(Arc::from(id));
            }
        } else {
            match self.table.exact_path(path) {
                Some(other) if other.route().id() != id => {
                    let ids = vec![Arc::from(other.route().id()), Arc::from(id)];
                    tracing::warn!(path = %path, ids = ?ids, "several service ids publish the same route path; one is served");
                    self.contested.insert(Arc::from(path), ids);
                }
                _ => {
                    self.table.set_path(path, Some(entry.clone()));
                    return;
                }
            }
        }
        self.serve_path(path);
    }

    fn unclaim(&mut self, path: &str, id: &str) {
        let Some(ids) = self.contested.get_mut(path) else {
            if self
                .table
                .exact_path(path)
                .is_some_and(|served| served.route().id() == id)
            {
                self.table.set_path(path, None);
            }
            return;
        };
        ids.retain(|claimant| **claimant != *id);
        if ids.len() < 2 {
            let last = ids.pop();
            self.contested.remove(path);
            let entry = last.and_then(|last| self.table.by_id(&last).cloned());
            self.table.set_path(path, entry);
        } else {
            self.serve_path(path);
        }
    }

    /// Points a contested path at its claimant: one the registry lists before a held one, then
    /// the smallest id.
    fn serve_path(&mut self, path: &str) {
        let Some(ids) = self.contested.get(path) else {
            return;
        };
        let registry = &self.registry;
        let winner = ids
            .iter()
            .min_by_key(|id| (!registry.contains(id), Arc::clone(id)));
        let entry = winner.and_then(|id| self.table.by_id(id).cloned());
        self.table.set_path(path, entry);
    }

    /// Whether the set of endpoints changed since the last call (the health monitor's targets).
    pub(crate) fn take_endpoints_changed(&mut self) -> bool {
        std::mem::take(&mut self.endpoints_changed)
    }

    /// The table as it stands, to publish: a copy that shares everything with the working one
    /// until that changes.
    pub(crate) fn table(&mut self) -> RouteTable {
        if std::mem::take(&mut self.templates_dirty) {
            let registry = &self.registry;
            let (listed, held_only): (Vec<_>, Vec<_>) = self
                .templated
                .iter()
                .partition(|(id, _)| registry.contains(id));
            let templates =
                Templates::build(listed.into_iter().chain(held_only).map(|(_, entry)| entry));
            self.table.set_templates(templates);
        }
        self.table.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::ServiceDescriptor;

    fn route(ports: &[u16]) -> Arc<ServiceRoute> {
        Arc::new(ServiceRoute::new(
            ServiceDescriptor::new("A.IDemoService.Get", "api/demo/get"),
            ports
                .iter()
                .map(|p| Address::new("127.0.0.1", *p))
                .collect(),
        ))
    }

    fn ports(view: &mut View) -> Vec<u16> {
        let table = view.table();
        let mut ports: Vec<u16> = table
            .by_path("api/demo/get")
            .map(|e| e.route().addresses.iter().map(|a| a.port).collect())
            .unwrap_or_default();
        ports.sort();
        ports
    }

    #[test]
    fn after_a_reset_every_removal_is_held_until_listed_again_or_due() {
        let config = ResolverConfig::default();
        let mut view = View::new(Duration::from_secs(10));
        let start = Instant::now();
        view.apply(RouteEvent::Created(route(&[1, 2, 3])), &config, start);
        // Outside a reset, a route that keeps other addresses drops a removed one at once.
        view.apply(RouteEvent::Changed(route(&[1, 2])), &config, start);
        assert_eq!(ports(&mut view), [1, 2]);
        assert_eq!(view.protected_routes(), 0);
        // After a reset, the registry refills: the first answer lists only one instance.
        view.note_reset(start);
        view.apply(RouteEvent::Changed(route(&[1])), &config, start);
        assert_eq!(ports(&mut view), [1, 2], "2 is held");
        assert_eq!(view.protected_routes(), 1);
        view.apply(RouteEvent::Changed(route(&[1, 2])), &config, start);
        assert_eq!(view.protected_routes(), 0, "2 is listed again");
        view.apply(RouteEvent::Changed(route(&[2])), &config, start);
        assert!(view.next_release(start).is_some());
        assert!(!view.release_due(&config, start + Duration::from_secs(1)));
        assert_eq!(ports(&mut view), [1, 2]);
        assert!(view.release_due(&config, start + Duration::from_secs(11)));
        assert_eq!(ports(&mut view), [2], "the grace ended");
        // Once the reset window is over, removals are ordinary again.
        let later = start + Duration::from_secs(12);
        view.apply(RouteEvent::Changed(route(&[2, 4])), &config, later);
        view.apply(RouteEvent::Changed(route(&[4])), &config, later);
        assert_eq!(ports(&mut view), [4]);
    }

    fn at(id: &str, path: &str, port: u16) -> Arc<ServiceRoute> {
        Arc::new(ServiceRoute::new(
            ServiceDescriptor::new(id, path),
            vec![Address::new("127.0.0.1", port)],
        ))
    }

    fn served(view: &mut View, path: &str) -> Option<String> {
        view.table()
            .by_path(path)
            .map(|entry| entry.route().id().to_owned())
    }

    #[test]
    fn a_path_goes_to_a_listed_claimant_before_a_held_one_and_passes_on() {
        let config = ResolverConfig::default();
        let mut view = View::new(Duration::from_secs(10));
        let now = Instant::now();
        view.apply(
            RouteEvent::Created(at("A.Old", "api/x/get", 1)),
            &config,
            now,
        );
        assert_eq!(served(&mut view, "api/x/get").as_deref(), Some("A.Old"));
        // The path moves to another id while the old one is held: the listed one serves it.
        view.apply(
            RouteEvent::Removed(at("A.Old", "api/x/get", 1)),
            &config,
            now,
        );
        view.apply(
            RouteEvent::Created(at("B.New", "API/X/Get", 2)),
            &config,
            now,
        );
        assert_eq!(view.protected_routes(), 1);
        assert_eq!(served(&mut view, "api/x/get").as_deref(), Some("B.New"));
        // The new one goes too: the held one serves the path again until its grace ends.
        view.apply(
            RouteEvent::Removed(at("B.New", "API/X/Get", 2)),
            &config,
            now,
        );
        let later = now + Duration::from_secs(1);
        view.release_due(&config, later);
        assert_eq!(served(&mut view, "api/x/get").as_deref(), Some("A.Old"));
        view.release_due(&config, now + Duration::from_secs(11));
        assert_eq!(served(&mut view, "api/x/get"), None);
        assert_eq!(
            view.table().endpoint_count(),
            0,
            "endpoints are forgotten with their routes"
        );
    }

    #[test]
    fn zero_grace_holds_nothing_even_after_a_reset() {
        let config = ResolverConfig::default();
        let mut view = View::new(Duration::ZERO);
        let now = Instant::now();
        view.apply(RouteEvent::Created(route(&[1])), &config, now);
        view.note_reset(now);
        view.apply(RouteEvent::Removed(route(&[1])), &config, now);
        assert_eq!(ports(&mut view), Vec::<u16>::new());
        assert!(view.next_release(now).is_none());
    }
}
