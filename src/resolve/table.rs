//! [`RouteTable`]: an immutable snapshot of every route, indexed for resolution.
//!
//! Exact route paths (case-insensitive) and service ids resolve with one hash lookup; templated
//! paths (`api/user/get/{id}`) are tried after that, fewest parameters first. Templates are
//! grouped by segment count and by the literal segments before their first parameter, so a
//! lookup costs one hash probe per segment of the path, not a scan of every template. Lookups
//! take no lock and allocate nothing for paths of up to 256 bytes.

use std::borrow::{Borrow, Cow};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::endpoint::{any_disrupted, Endpoint, EndpointKey};
use super::outlier::ejection_budget;
use super::select::{Candidates, Completion, Pick, Selector};
use super::sharded::ShardedMap;
use super::slow_start::{self, SlowStartConfig};
use crate::route::{parameter_name, Address, ServiceRoute};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// One route ready for selection: its endpoints and its selector's state.
#[derive(Debug)]
pub struct RouteEntry {
    pub(crate) route: Arc<ServiceRoute>,
    endpoints: Box<[Arc<Endpoint>]>,
    pick: Box<dyn Pick>,
    counts_calls: bool,
    /// Whether its selector learns from finished calls (they are timed).
    times_calls: bool,
    /// Fewer usable addresses than this and selection panics: it picks among all of them.
    min_usable: usize,
    /// How many of its addresses may be out as outliers at once.
    ejection_budget: usize,
    /// Slow start, when on.
    slow_start: Option<SlowStartConfig>,
    last_fail_open_log_ms: AtomicU64,
}

/// How a route picks among its addresses besides its selector: the panic threshold and the
/// outlier ejection budget.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Guards {
    /// Panic threshold: the usable share (0..=1) below which every address is used.
    pub panic_threshold: f64,
    /// Largest share of a route's addresses ejected at once, in percent (at least one).
    pub ejection_percent: Option<u32>,
}

/// A route's health as a whole (see [`RouteEntry::state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteState {
    /// Every address is usable (healthy, not ejected).
    Healthy,
    /// Some are not, but at least the panic threshold's share is.
    Degraded,
    /// Fewer than the panic threshold's share are: selection uses all of them.
    Panic,
    /// The route has no address.
    Empty,
}

impl RouteState {
    /// The state's name, as in metrics labels and the agent's answers.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteState::Healthy => "healthy",
            RouteState::Degraded => "degraded",
            RouteState::Panic => "panic",
            RouteState::Empty => "empty",
        }
    }
}

/// What [`RouteEntry::select`] chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Choice {
    pub index: usize,
    pub fail_open: bool,
}

impl RouteEntry {
    /// Prepares a route: one endpoint per address (from `endpoint_of`), and the selector's state.
    pub(crate) fn new(
        route: Arc<ServiceRoute>,
        selector: &dyn Selector,
        guards: Guards,
        slow_start: &SlowStartConfig,
        mut endpoint_of: impl FnMut(&Arc<crate::route::Address>) -> Arc<Endpoint>,
    ) -> Self {
        let endpoints: Box<[Arc<Endpoint>]> =
            route.addresses.iter().map(&mut endpoint_of).collect();
        let pick = selector.build(&route.addresses);
        let n = endpoints.len();
        let threshold = guards.panic_threshold.clamp(0.0, 1.0);
        RouteEntry {
            route,
            pick,
            counts_calls: selector.uses_load(),
            times_calls: selector.times_calls(),
            // Less a hair, so that 0.55 x 100 (55.000000000000007 in floating point) needs 55.
            min_usable: ((threshold * n as f64 - 1e-9).ceil() as usize).max(1),
            ejection_budget: ejection_budget(guards.ejection_percent, n),
            slow_start: slow_start.is_on().then(|| slow_start.clone()),
            last_fail_open_log_ms: AtomicU64::new(0),
            endpoints,
        }
    }

    /// The route.
    pub fn route(&self) -> &ServiceRoute {
        &self.route
    }

    /// Its endpoints, in the route's address order.
    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    /// Whether resolutions of this route count as calls in flight (its selector reads them).
    pub fn counts_calls(&self) -> bool {
        self.counts_calls
    }

    /// The route's health as a whole: how many of its addresses selection may use now,
    /// against its panic threshold.
    pub fn state(&self) -> RouteState {
        if self.endpoints.is_empty() {
            return RouteState::Empty;
        }
        let usable = if any_disrupted() {
            self.usable().1
        } else {
            self.endpoints.len()
        };
        if usable == self.endpoints.len() {
            RouteState::Healthy
        } else if usable >= self.min_usable {
            RouteState::Degraded
        } else {
            RouteState::Panic
        }
    }

    /// Whether resolutions of this route time their calls (its selector learns from them).
    pub(crate) fn times_calls(&self) -> bool {
        self.times_calls
    }

    /// Tells the selector that a call to endpoint `index` finished.
    pub(crate) fn completed(&self, index: usize, call: Completion) {
        self.pick
            .completed(&Candidates::new(&self.endpoints, true), index, call);
    }

    /// Picks among the usable endpoints (healthy, and not ejected as outliers within the route's
    /// ejection budget), or among all of them when fewer are usable than the panic threshold
    /// asks (fail-open). The selector is asked once, so its own state (a round-robin position)
    /// advances once.
    pub(crate) fn select(&self, key: Option<&[u8]>) -> Option<Choice> {
        let choice = self.select_usable(key)?;
        Some(self.warm(choice, key))
    }

    /// A choice whose endpoint is still ramping up is kept with the probability of its share;
    /// otherwise the selector picks once more without it.
    fn warm(&self, choice: Choice, key: Option<&[u8]>) -> Choice {
        let Some(slow_start) = &self.slow_start else {
            return choice;
        };
        let weight = slow_start::weight(slow_start, &self.endpoints[choice.index]);
        if weight >= 1.0 || fastrand::f64() < weight || choice.fail_open || choice.index >= 64 {
            return choice;
        }
        let (ejected, _) = self.usable();
        let without = Candidates::with_ejected(&self.endpoints, ejected | 1 << choice.index);
        match self.pick.pick(&without, key) {
            Some(index) => Choice {
                index,
                fail_open: false,
            },
            None => choice,
        }
    }

    /// Picks among the usable endpoints (see [`RouteEntry::select`]).
    fn select_usable(&self, key: Option<&[u8]>) -> Option<Choice> {
        if !any_disrupted() {
            // Every endpoint in the process is healthy and none is ejected.
            let index = self
                .pick
                .pick(&Candidates::new(&self.endpoints, true), key)?;
            return Some(Choice {
                index,
                fail_open: false,
            });
        }
        let (ejected, usable) = self.usable();
        let mut fail_open = usable < self.min_usable;
        let candidates = if fail_open {
            Candidates::new(&self.endpoints, true)
        } else {
            Candidates::with_ejected(&self.endpoints, ejected)
        };
        let mut index = self.pick.pick(&candidates, key);
        if index.is_none() && !fail_open {
            // The last usable address flipped between the count and the pick.
            fail_open = true;
            index = self.pick.pick(&Candidates::new(&self.endpoints, true), key);
        }
        if fail_open {
            self.log_fail_open();
        }
        index.map(|index| Choice { index, fail_open })
    }

    /// The ejected mask (of the first 64 endpoints, at most the ejection budget of them, first
    /// come first) and how many endpoints are usable.
    fn usable(&self) -> (u64, usize) {
        let (mut ejected, mut out, mut usable) = (0u64, 0, 0);
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            if !endpoint.is_healthy() {
                continue;
            }
            if i < 64 && out < self.ejection_budget && endpoint.is_ejected() {
                ejected |= 1 << i;
                out += 1;
                continue;
            }
            usable += 1;
        }
        (ejected, usable)
    }

    /// The candidates a retry of a call to `chosen` may go to, in the order the selector falls
    /// back to them; `fail_open` when the choice was made over every address.
    pub(crate) fn alternates(
        &self,
        chosen: usize,
        key: Option<&[u8]>,
        fail_open: bool,
        out: &mut [usize],
    ) -> usize {
        let candidates = if fail_open {
            Candidates::new(&self.endpoints, true)
        } else {
            Candidates::with_ejected(&self.endpoints, self.usable().0)
        };
        self.pick.alternates(&candidates, key, chosen, out)
    }

    /// Logs a fail-open selection, at most once a second per route.
    fn log_fail_open(&self) {
        let now = crate::clock::now_ms();
        let last = self.last_fail_open_log_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1000
            && self
                .last_fail_open_log_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                service_id = %self.route.id(),
                addresses = self.endpoints.len(),
                "too few addresses of the route are usable (panic threshold); picking among all of them"
            );
        }
    }
}

#[derive(Debug)]
enum Segment {
    Literal(Box<str>),
    Parameter,
}

#[derive(Debug)]
struct Template {
    path: Box<str>,
    segments: Box<[Segment]>,
    parameters: usize,
    entry: Arc<RouteEntry>,
}

impl Template {
    fn matches(&self, path: &str) -> bool {
        let mut parts = path.split('/');
        for segment in self.segments.iter() {
            match (segment, parts.next()) {
                (_, None) => return false,
                (Segment::Parameter, Some(part)) => {
                    if part.is_empty() {
                        return false;
                    }
                }
                (Segment::Literal(literal), Some(part)) => {
                    if !literal.eq_ignore_ascii_case(part) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

/// Templates by segment count, then by their literal prefix (the lower-cased segments before
/// the first parameter, without a trailing `/`); each group by parameter count.
#[derive(Debug, Default)]
pub(crate) struct Templates {
    groups: FastMap<usize, FastMap<Box<str>, Vec<Template>>>,
}

impl Templates {
    /// Indexes the templated paths of `entries`; when two ids claim one template, the first wins.
    pub(crate) fn build<'a>(entries: impl IntoIterator<Item = &'a Arc<RouteEntry>>) -> Self {
        let mut templates = Templates::default();
        for entry in entries {
            templates.add(entry);
        }
        templates.sort();
        templates
    }

    fn add(&mut self, entry: &Arc<RouteEntry>) {
        let route = entry.route();
        let path = trim_path(route.route_path()).to_ascii_lowercase();
        let segments: Box<[Segment]> = path
            .split('/')
            .map(|s| match parameter_name(s) {
                Some(_) => Segment::Parameter,
                None => Segment::Literal(s.into()),
            })
            .collect();
        let parameters = segments
            .iter()
            .filter(|s| matches!(s, Segment::Parameter))
            .count();
        let literal_prefix: Vec<&str> = path
            .split('/')
            .take_while(|s| parameter_name(s).is_none())
            .collect();
        let group = self
            .groups
            .entry(segments.len())
            .or_default()
            .entry(literal_prefix.join("/").into())
            .or_default();
        if let Some(existing) = group.iter().find(|t| *t.path == *path) {
            tracing::warn!(
                path = %path,
                kept = %existing.entry.route().id(),
                ignored = %route.id(),
                "two service ids publish the same route path"
            );
            return;
        }
        group.push(Template {
            path: path.clone().into(),
            segments,
            parameters,
            entry: entry.clone(),
        });
    }

    fn sort(&mut self) {
        for group in self.groups.values_mut().flat_map(|g| g.values_mut()) {
            group.sort_by_key(|t| t.parameters);
        }
    }

    fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

/// Every route, indexed by service id, exact path and path template.
///
/// A table is an immutable snapshot for readers; the resolver changes its own copy route by
/// route and publishes a new snapshot, which shares every part it did not change (see
/// `ShardedMap`).
#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    by_id: ShardedMap<Key, Arc<RouteEntry>>,
    by_path: ShardedMap<Key, Arc<RouteEntry>>,
    templates: Arc<Templates>,
    endpoints: ShardedMap<Keyed, ()>,
}

/// An endpoint as its own key in the table (found by its [`EndpointKey`]): a copy of the table's
/// shard then touches one reference count per endpoint, not a key's and a value's.
#[derive(Debug, Clone)]
struct Keyed(Arc<Endpoint>);

impl PartialEq for Keyed {
    fn eq(&self, other: &Self) -> bool {
        self.0.key() == other.0.key()
    }
}

impl Eq for Keyed {}

impl Hash for Keyed {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.key().hash(state);
    }
}

impl Borrow<EndpointKey> for Keyed {
    fn borrow(&self) -> &EndpointKey {
        self.0.key()
    }
}

/// Whether a route path is a template (has `{parameter}` segments).
pub(crate) fn is_template(path: &str) -> bool {
    path.contains('{')
}

/// The key an exact route path is indexed under: trimmed and lower-cased.
pub(crate) fn path_key(path: &str) -> Cow<'_, str> {
    let path = trim_path(path);
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(path.to_ascii_lowercase())
    } else {
        Cow::Borrowed(path)
    }
}

/// A key of the table's indexes. Most keys are text the entry they lead to holds already (its
/// service id; its route path when that is in key form), so they borrow it through the entry
/// instead of keeping a copy: at 100k routes that is two allocations fewer per route.
#[derive(Clone)]
enum Key {
    /// The entry's service id.
    Id(Arc<RouteEntry>),
    /// The entry's route path, already trimmed and lower-case.
    Path(Arc<RouteEntry>),
    /// Text of its own.
    Owned(Arc<str>),
}

impl Key {
    fn as_str(&self) -> &str {
        match self {
            Key::Id(entry) => entry.route().id(),
            Key::Path(entry) => entry.route().route_path(),
            Key::Owned(text) => text,
        }
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `str` hashes, so lookups by `&str` find it.
        self.as_str().hash(state);
    }
}

impl Borrow<str> for Key {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

/// A route path as stored and compared: no leading or trailing `/`.
/// (A byte loop: `trim_matches` costs several times more on this hot path.)
pub(crate) fn trim_path(path: &str) -> &str {
    let bytes = path.as_bytes();
    if !matches!(bytes, [b'/', ..] | [.., b'/']) {
        return path;
    }
    let mut start = 0;
    let mut end = bytes.len();
    while start < end && bytes[start] == b'/' {
        start += 1;
    }
    while end > start && bytes[end - 1] == b'/' {
        end -= 1;
    }
    &path[start..end]
}

impl RouteTable {
    /// Sets (or with `None` removes) the entry of a service id; the path indexes are the
    /// caller's (see [`RouteTable::set_path`]).
    pub(crate) fn set_entry(&mut self, id: &str, entry: Option<Arc<RouteEntry>>) {
        match entry {
            Some(entry) => {
                self.by_id.insert(Key::Id(entry.clone()), entry);
            }
            None => {
                self.by_id.remove(id);
            }
        }
    }

    /// Sets (or with `None` removes) what an exact path (see [`path_key`]) resolves to.
    pub(crate) fn set_path(&mut self, path: &str, entry: Option<Arc<RouteEntry>>) {
        let Some(entry) = entry else {
            self.by_path.remove(path);
            return;
        };
        let key = if entry.route().route_path() == path {
            Key::Path(entry.clone())
        } else {
            Key::Owned(Arc::from(path))
        };
        self.by_path.insert(key, entry);
    }

    /// Replaces the path templates.
    pub(crate) fn set_templates(&mut self, templates: Templates) {
        self.templates = Arc::new(templates);
    }

    /// Sets (or with `None` removes) the shared endpoint of an address.
    pub(crate) fn set_endpoint(&mut self, key: &EndpointKey, endpoint: Option<Arc<Endpoint>>) {
        match endpoint {
            Some(endpoint) => {
                self.endpoints.insert(Keyed(endpoint), ());
            }
            None => {
                self.endpoints.remove(key);
            }
        }
    }

    /// How many routes (service ids) the table holds.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The route entry of a service id.
    pub fn by_id(&self, service_id: &str) -> Option<&Arc<RouteEntry>> {
        self.by_id.get(service_id)
    }

    /// The route entry for a path: exact match first (case-insensitive), then templates.
    pub fn by_path(&self, path: &str) -> Option<&Arc<RouteEntry>> {
        let path = trim_path(path);
        // Keys are lower-case, so a hit on the path as given is exact; only a miss pays for
        // lower-casing.
        self.by_path
            .get(path)
            .or_else(|| with_lowercase(path, |lower| self.by_path.get(lower)))
            .or_else(|| self.by_template(path))
    }

    /// The entry an exact path key (see [`path_key`]) resolves to.
    pub(crate) fn exact_path(&self, key: &str) -> Option<&Arc<RouteEntry>> {
        self.by_path.get(key)
    }

    fn by_template(&self, path: &str) -> Option<&Arc<RouteEntry>> {
        if self.templates.is_empty() {
            return None;
        }
        let groups = self.templates.groups.get(&path.split('/').count())?;
        with_lowercase(path, |lower| {
            // Every literal prefix of the path, the empty one first: "", "api", "api/user", ...
            let prefix_ends = std::iter::once(0).chain(
                lower
                    .match_indices('/')
                    .map(|(at, _)| at)
                    .chain(std::iter::once(lower.len())),
            );
            let mut best: Option<&Template> = None;
            for end in prefix_ends {
                let Some(group) = groups.get(&lower[..end]) else {
                    continue;
                };
                if let Some(found) = group.iter().find(|t| t.matches(lower)) {
                    if best.is_none_or(|b| found.parameters <= b.parameters) {
                        best = Some(found);
                    }
                }
            }
            best.map(|t| &t.entry)
        })
    }

    /// The shared endpoint for an address, if any route has it.
    pub fn endpoint(&self, key: &EndpointKey) -> Option<&Arc<Endpoint>> {
        self.endpoints.get_key(key).map(|keyed| &keyed.0)
    }

    /// The shared endpoint serving `address`, if any route has it.
    pub fn endpoint_of(&self, address: &Address) -> Option<&Arc<Endpoint>> {
        let hash = self
            .endpoints
            .hash_with(|state| EndpointKey::hash_address(address, state));
        self.endpoints
            .find(hash, |keyed| keyed.0.key().matches(address))
            .map(|keyed| &keyed.0)
    }

    /// Every distinct endpoint.
    pub fn endpoints(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.endpoints.keys().map(|keyed| &keyed.0)
    }

    /// How many distinct endpoints the table holds.
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }

    /// Every route entry, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = &Arc<RouteEntry>> {
        self.by_id.values()
    }
}

/// Calls `f` with `text` lower-cased, without allocating unless it is long and has capitals.
fn with_lowercase<R>(text: &str, f: impl FnOnce(&str) -> R) -> R {
    if !text.bytes().any(|b| b.is_ascii_uppercase()) {
        return f(text);
    }
    let mut buffer = [0u8; 256];
    match buffer.get_mut(..text.len()) {
        Some(lower) => {
            lower.copy_from_slice(text.as_bytes());
            lower.make_ascii_lowercase();
            // ASCII lower-casing keeps UTF-8 valid.
            f(std::str::from_utf8(lower).unwrap_or_default())
        }
        None => f(&text.to_ascii_lowercase()),
    }
}
