//! [`AddressResolver`]: route path or service id -> one healthy address, fed by a watch.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use arc_swap::cache::Cache;
use arc_swap::ArcSwap;
use thread_local::ThreadLocal;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::health::{HealthConfig, HealthMonitor};
use super::outlier::OutlierConfig;
use super::reports::Reports;
use super::select::{Completion, Outcome, RoundRobin, Selector};
use super::slow_start::SlowStartConfig;
use super::snapshot;
use super::table::{Choice, Guards, RouteEntry, RouteTable};
use super::view::View;
use crate::backoff::Backoff;
use crate::error::{Error, ErrorKind, Result};
use crate::manager::RouteSource;
use crate::route::{Address, ServiceRoute};
use crate::scope;
use crate::watch::{RouteEvent, RouteWatch, SyncStatus};

/// Default time an unknown path or id is remembered as unknown.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(2);

/// Default panic threshold: below half of a route's addresses usable, all of them are used.
pub const DEFAULT_PANIC_THRESHOLD: f64 = 0.5;

/// Most alternates [`Resolved::alternates`] gives.
pub const MAX_ALTERNATES: usize = 4;

/// Default time a resolver waits for the registry at start before it serves its snapshot.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings of an [`AddressResolver`].
#[derive(Debug, Clone)]
pub struct ResolverConfig {
    /// The selector for routes without their own.
    pub selector: Arc<dyn Selector>,
    /// Selectors for particular service ids.
    pub route_selectors: HashMap<String, Arc<dyn Selector>>,
    /// Health checks.
    pub health: HealthConfig,
    /// How long an unknown path or id is answered from memory before the backend is asked again.
    pub negative_ttl: Duration,
    /// Empty protection: how long a route keeps its last addresses after the registry removed
    /// all of them (and any address after a registry-wide reset) while health checks run. `None`
    /// takes twice the manager's TTL; zero turns protection off.
    pub empty_grace: Option<Duration>,
    /// A file where the resolver keeps its last good routes. When the registry cannot be read
    /// within `start_timeout` at start, the resolver serves them (marked stale) until the first
    /// good read replaces them.
    pub snapshot: Option<PathBuf>,
    /// How long the start waits for the registry before it serves the snapshot (when there is
    /// one; without one, a registry that cannot be read fails the start).
    pub start_timeout: Duration,
    /// Subscribe to these services only: service-id prefixes such as an interface name,
    /// `Surging.IModuleServices.Common.IUserService`. The resolver then reads and holds only
    /// their routes (see [`RouteSource::watch_services`]); a path outside them is `NotFound`.
    /// Empty (the default): every service.
    pub services: Vec<String>,
    /// Panic threshold (Envoy's, default 0.5): when fewer than this share of a route's addresses
    /// are usable (healthy and not ejected), selection uses all of them. 0 fails open only when
    /// none is usable.
    pub panic_threshold: f64,
    /// Outlier ejection from reported call outcomes.
    pub outlier: OutlierConfig,
    /// Slow start of addresses new to this client (off by default).
    pub slow_start: SlowStartConfig,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            selector: Arc::new(RoundRobin),
            route_selectors: HashMap::new(),
            health: HealthConfig::default(),
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            empty_grace: None,
            snapshot: None,
            start_timeout: DEFAULT_START_TIMEOUT,
            services: Vec::new(),
            panic_threshold: DEFAULT_PANIC_THRESHOLD,
            outlier: OutlierConfig::default(),
            slow_start: SlowStartConfig::default(),
        }
    }
}

impl ResolverConfig {
    /// The empty protection's grace period for a registry whose TTL is `ttl`.
    fn grace_for(&self, ttl: Duration) -> Duration {
        self.empty_grace.unwrap_or(ttl.saturating_mul(2))
    }

    /// What a snapshot of this resolver's view is of: the registry, and the subscription.
    fn snapshot_id(&self, manager: &dyn RouteSource) -> String {
        let services = scope::normalize(&self.services);
        if services.is_empty() {
            manager.registry_id()
        } else {
            format!("{} services {}", manager.registry_id(), services.join(","))
        }
    }

    /// The panic threshold and ejection budget every route entry applies.
    pub(crate) fn guards(&self) -> Guards {
        Guards {
            panic_threshold: self.panic_threshold,
            ejection_percent: self
                .outlier
                .enabled
                .then_some(self.outlier.max_ejection_percent),
        }
    }

    pub(crate) fn selector_for(&self, service_id: &str) -> &dyn Selector {
        self.route_selectors
            .get(service_id)
            .unwrap_or(&self.selector)
            .as_ref()
    }
}

/// One chosen address. On routes whose selector balances by load (least connections, power of
/// two choices, peak EWMA, least resource), holding it counts as a call in flight to that
/// address; drop it when the call ends. On routes whose selector learns from calls (peak EWMA),
/// the time from the resolution to [`Resolved::succeeded`] or [`Resolved::failed`] (or to the
/// drop, if neither was called) is the call's latency.
#[derive(Debug)]
pub struct Resolved {
    entry: Arc<RouteEntry>,
    index: usize,
    fail_open: bool,
    /// When the call started, on routes that time their calls.
    started: Option<std::time::Instant>,
    /// Whether the call's end has been told to the selector.
    settled: AtomicBool,
}

impl Resolved {
    fn new(entry: Arc<RouteEntry>, choice: Choice, reports: &Arc<Reports>) -> Self {
        let endpoint = &entry.endpoints()[choice.index];
        // Once per endpoint: later resolutions find it set (one load, no shared write).
        endpoint.reports.get_or_init(|| Arc::downgrade(reports));
        if entry.counts_calls() {
            endpoint.begin_call();
        }
        let started = entry.times_calls().then(std::time::Instant::now);
        Resolved {
            entry,
            index: choice.index,
            fail_open: choice.fail_open,
            started,
            settled: AtomicBool::new(false),
        }
    }

    /// The chosen address, with the details the route currently publishes for it.
    pub fn address(&self) -> &Address {
        &self.entry.route().addresses[self.index]
    }

    /// The route it was chosen from.
    pub fn route(&self) -> &ServiceRoute {
        self.entry.route()
    }

    /// Whether too few addresses of the route were usable (the panic threshold) and this one
    /// was chosen among all of them.
    pub fn is_fail_open(&self) -> bool {
        self.fail_open
    }

    /// Other addresses of the route to retry a failed call on, without a second lookup: up to
    /// [`MAX_ALTERNATES`], distinct and usable, in the order the selector falls back to them
    /// (the next ring nodes for consistent hashing, the next turns otherwise). `key` is the
    /// affinity key the resolution used.
    pub fn alternates(&self, key: Option<&[u8]>) -> impl Iterator<Item = &Address> + '_ {
        let mut found = [0; MAX_ALTERNATES];
        let count = self
            .entry
            .alternates(self.index, key, self.fail_open, &mut found);
        let addresses = &self.entry.route().addresses;
        (0..count).map(move |i| &*addresses[found[i]])
    }

    /// The call to the chosen address succeeded: counts toward its health and its outlier
    /// record (see [`AddressResolver::report_success`]).
    pub fn succeeded(&self) {
        self.shared_report(true);
        self.settle(Outcome::Succeeded);
    }

    /// The call to the chosen address failed: counts against its health and its outlier
    /// record (see [`AddressResolver::report_failure`]).
    pub fn failed(&self) {
        self.shared_report(false);
        self.settle(Outcome::Failed);
    }

    /// Ends the resolution with no call to tell of: the call count it held (on routes whose
    /// selector balances by load) is given back, and a selector that times calls learns nothing
    /// from it. For an address handed on to someone else to call (the HTTP agent does this).
    pub fn release(self) {
        self.settled.store(true, Ordering::Relaxed);
    }

    /// Tells a selector that learns from calls how this one ended, the first time only.
    fn settle(&self, outcome: Outcome) {
        if let Some(started) = self.started {
            if !self.settled.swap(true, Ordering::Relaxed) {
                let latency = started.elapsed();
                self.entry
                    .completed(self.index, Completion { latency, outcome });
            }
        }
    }

    fn shared_report(&self, ok: bool) {
        let endpoint = &self.entry.endpoints()[self.index];
        if let Some(reports) = endpoint.reports.get().and_then(Weak::upgrade) {
            reports.record(endpoint, ok);
        }
    }
}

impl Drop for Resolved {
    fn drop(&mut self) {
        self.settle(Outcome::Unknown);
        if self.entry.counts_calls() {
            self.entry.endpoints()[self.index].end_call();
        }
    }
}

/// A snapshot of a resolver's counters and freshness.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverStats {
    /// Lookups made (`resolve_*` and `try_resolve_*`), found or not.
    pub resolves: u64,
    /// Lookups answered with an address (from the table, or after a fresh listing).
    pub found: u64,
    /// Routes in the table.
    pub routes: usize,
    /// Distinct endpoints in the table.
    pub endpoints: usize,
    /// Lookups answered `NotFound`.
    pub not_found: u64,
    /// Selections made in panic mode: fewer of the route's addresses were usable than the panic
    /// threshold asks (every one unhealthy or ejected included), so all of them were used.
    pub fail_open: u64,
    /// Outlier ejections since start.
    pub ejections: u64,
    /// Health flips seen by the monitor or reported by callers.
    pub health_flips: u64,
    /// Health probes sent.
    pub probes: u64,
    /// Whether the backend is currently unreadable (routes are the last good ones).
    pub stale: bool,
    /// Age of the routes: zero while current, else the time since the last good read.
    pub age: Duration,
    /// How many times the backend watch was re-established after an interruption.
    pub watch_reconnects: u64,
    /// Routes served with addresses the registry removed, held by empty protection.
    pub protected_routes: usize,
    /// Whether the routes come from the snapshot file (the registry has not been read yet).
    pub from_snapshot: bool,
}

#[derive(Debug, Default)]
struct Counters {
    /// Lookups the table could not answer (the path or id is not in it).
    unanswered: AtomicU64,
    /// Lookups the table answered with an error (a route with no usable address).
    table_failures: AtomicU64,
    /// Lookups answered with an address after a miss (a fresh listing found the route).
    found_after_miss: AtomicU64,
    not_found: AtomicU64,
    fail_open: AtomicU64,
    protected_routes: AtomicUsize,
    from_snapshot: AtomicBool,
}

/// The current table. Readers go through a per-thread `arc_swap::Cache`, which revalidates its
/// snapshot with one atomic load (about 2 ns here) instead of `ArcSwap::load`'s debt-slot
/// acquire and release (about 17 ns): the largest single cost of a resolution. A thread that
/// stops resolving keeps its last snapshot alive until it resolves again or the resolver drops.
struct TableSlot {
    current: Arc<ArcSwap<RouteTable>>,
    readers: ThreadLocal<Reader>,
    /// Every reader's lookup count, for [`TableSlot::lookups`].
    counts: Mutex<Vec<Arc<AtomicU64>>>,
}

/// One thread's cached snapshot of the table and its count of lookups. Only the owning thread
/// writes the count, so a plain load and store suffice (no contended atomic on the hot path).
struct Reader {
    cache: RefCell<TableCache>,
    lookups: Arc<AtomicU64>,
}

/// One thread's cached snapshot of the table.
type TableCache = Cache<Arc<ArcSwap<RouteTable>>, Arc<RouteTable>>;

impl TableSlot {
    fn new(table: RouteTable) -> Self {
        TableSlot {
            current: Arc::new(ArcSwap::from_pointee(table)),
            readers: ThreadLocal::new(),
            counts: Mutex::new(Vec::new()),
        }
    }

    /// Runs a lookup with `read` on the newest table, through this thread's cache.
    fn lookup<R>(&self, read: impl FnOnce(&RouteTable) -> R) -> R {
        let reader = self.readers.get_or(|| {
            let lookups = Arc::new(AtomicU64::new(0));
            self.counts
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(lookups.clone());
            Reader {
                cache: RefCell::new(Cache::new(self.current.clone())),
                lookups,
            }
        });
        let lookups = reader.lookups.load(Ordering::Relaxed);
        reader.lookups.store(lookups + 1, Ordering::Relaxed);
        match reader.cache.try_borrow_mut() {
            Ok(mut cache) => read(cache.load()),
            Err(_) => read(&self.current.load()),
        }
    }

    /// Lookups made so far, over every thread.
    fn lookups(&self) -> u64 {
        self.counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .sum()
    }

    /// The newest table (not through the cache; for everything off the hot path).
    fn load_full(&self) -> Arc<RouteTable> {
        self.current.load_full()
    }

    fn store_arc(&self, table: Arc<RouteTable>) {
        self.current.store(table);
    }
}

struct Shared {
    manager: Arc<dyn RouteSource>,
    config: ResolverConfig,
    table: TableSlot,
    not_found: moka::sync::Cache<String, ()>,
    last_listing: tokio::sync::Mutex<Option<(std::time::Instant, Arc<RouteTable>)>>,
    reports: Arc<Reports>,
    /// The watch's status; replaced when a start from the snapshot reaches the registry.
    status: Mutex<watch::Receiver<SyncStatus>>,
    counters: Counters,
    /// The newest table, for the snapshot writer (when a snapshot file is configured).
    snapshot_tables: Option<watch::Sender<Option<Arc<RouteTable>>>>,
    /// What this resolver published as metrics.
    #[cfg(feature = "metrics")]
    published: super::metrics::Publisher,
}

impl Shared {
    /// Publishes the view's table to readers, the snapshot writer and, when the set of
    /// endpoints changed, the health monitor.
    fn publish(&self, view: &mut View) {
        let table = Arc::new(view.table());
        // Without active checks the monitor has no use for the targets.
        if view.take_endpoints_changed() && self.reports.health.config().enabled {
            self.reports
                .health
                .set_targets(table.endpoints().cloned().collect());
        }
        self.counters
            .protected_routes
            .store(view.protected_routes(), Ordering::Relaxed);
        self.table.store_arc(table.clone());
        if let Some(tables) = &self.snapshot_tables {
            if !self.counters.from_snapshot.load(Ordering::Relaxed) {
                tables.send_replace(Some(table));
            }
        }
    }

    fn status(&self) -> SyncStatus {
        self.status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .borrow()
            .clone()
    }
}

/// Resolves route paths and service ids to addresses, from a table kept current by a watch.
///
/// Resolution reads an immutable snapshot: no lock, no allocation, no backend call. A backend
/// outage leaves the last good table in place ([`AddressResolver::stats`] reports its age).
pub struct AddressResolver {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    snapshot_writer: Option<JoinHandle<()>>,
    /// The outlier sweep, when ejection is on.
    sweeper: Option<JoinHandle<()>>,
    /// The metrics publisher (feature `metrics`).
    metrics_publisher: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for AddressResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressResolver")
            .field("backend", &self.shared.manager.backend())
            .field("routes", &self.shared.table.load_full().len())
            .finish_non_exhaustive()
    }
}

impl Drop for AddressResolver {
    fn drop(&mut self) {
        self.task.abort();
        let tasks = [
            &self.snapshot_writer,
            &self.sweeper,
            &self.metrics_publisher,
        ];
        for task in tasks.into_iter().flatten() {
            task.abort();
        }
        #[cfg(feature = "metrics")]
        self.shared.published.retract();
    }
}

impl AddressResolver {
    /// A resolver with the default settings (round robin, default health checks).
    pub async fn new(manager: Arc<dyn RouteSource>) -> Result<Self> {
        Self::with_config(manager, ResolverConfig::default()).await
    }

    /// A resolver with `config`. Returns once the current routes are loaded, or, when the
    /// registry cannot be read within `config.start_timeout` and `config.snapshot` holds routes
    /// of this registry, once those are loaded (marked stale until the registry answers).
    pub async fn with_config(
        manager: Arc<dyn RouteSource>,
        config: ResolverConfig,
    ) -> Result<Self> {
        let mut view = View::new(config.grace_for(manager.default_ttl()));
        let opened = match &config.snapshot {
            None => Ok(open_watch(manager.as_ref(), &mut view, &config).await?),
            Some(_) => {
                let timeout = config.start_timeout.max(Duration::from_millis(1));
                match tokio::time::timeout(
                    timeout,
                    open_watch(manager.as_ref(), &mut view, &config),
                )
                .await
                {
                    Ok(Ok(watch)) => Ok(watch),
                    Ok(Err(err)) => Err(err),
                    Err(_) => Err(Error::new(
                        ErrorKind::Unavailable,
                        format!("the registry did not answer within {timeout:?}"),
                    )),
                }
            }
        };
        let (watch, status, snapshot_written) = match opened {
            Ok(watch) => {
                let status = watch.status_receiver();
                (Some(watch), status, None)
            }
            Err(err) => {
                // Only an unreachable registry falls back: refused credentials or a bad
                // configuration are errors to see, not outages to ride out.
                let snapshot = match &config.snapshot {
                    Some(path) if err.kind() == ErrorKind::Unavailable => {
                        snapshot::load(path, &config.snapshot_id(manager.as_ref())).await
                    }
                    _ => None,
                };
                let Some(snapshot) = snapshot else {
                    return Err(err);
                };
                tracing::warn!(error = %err, routes = snapshot.routes.len(), "the registry cannot be read; serving the snapshot");
                for route in &snapshot.routes {
                    view.apply(RouteEvent::Created(route.clone()), &config, Instant::now());
                }
                let (_, status) = watch::channel(SyncStatus {
                    last_sync: Some(snapshot.written),
                    error: Some(format!("serving the snapshot: {err}")),
                    reconnects: 0,
                    resets: 0,
                });
                (None, status, Some(()))
            }
        };
        let (snapshot_tables, snapshot_writer) = match &config.snapshot {
            Some(path) => {
                let (tx, rx) = watch::channel(None);
                let id = config.snapshot_id(manager.as_ref());
                let writer = snapshot::spawn_writer(path.clone(), id, rx);
                (Some(tx), Some(writer))
            }
            None => (None, None),
        };
        let shared = Arc::new(Shared {
            table: TableSlot::new(RouteTable::default()),
            not_found: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(config.negative_ttl.max(Duration::from_millis(1)))
                .build(),
            last_listing: tokio::sync::Mutex::new(None),
            reports: Arc::new(Reports::new(
                HealthMonitor::start(config.health.clone()),
                config.outlier.clone(),
            )),
            status: Mutex::new(status),
            counters: Counters::default(),
            snapshot_tables,
            #[cfg(feature = "metrics")]
            published: super::metrics::Publisher::default(),
            manager,
            config,
        });
        shared
            .counters
            .from_snapshot
            .store(snapshot_written.is_some(), Ordering::Relaxed);
        shared.publish(&mut view);
        let task = tokio::spawn(follow(watch, view, Arc::downgrade(&shared)));
        let sweeper = shared
            .config
            .outlier
            .enabled
            .then(|| tokio::spawn(sweep_outliers(Arc::downgrade(&shared))));
        #[cfg(feature = "metrics")]
        let metrics_publisher = Some(tokio::spawn(publish_metrics(Arc::downgrade(&shared))));
        #[cfg(not(feature = "metrics"))]
        let metrics_publisher = None;
        Ok(AddressResolver {
            shared,
            task,
            snapshot_writer,
            sweeper,
            metrics_publisher,
        })
    }

    /// One address for a route path (exact, case-insensitive; then templates). `key` is the
    /// affinity key for consistent hashing.
    ///
    /// A path in the table is resolved when this is called, and the future is ready at once;
    /// only an unknown path makes it wait (for the negative cache or the backend).
    pub fn resolve_path<'a>(&'a self, path: &'a str, key: Option<&'a [u8]>) -> ResolveFuture<'a> {
        self.resolve(Lookup::Path(path), key)
    }

    /// One address for a service id (see [`AddressResolver::resolve_path`]).
    pub fn resolve_id<'a>(
        &'a self,
        service_id: &'a str,
        key: Option<&'a [u8]>,
    ) -> ResolveFuture<'a> {
        self.resolve(Lookup::Id(service_id), key)
    }

    /// Like [`AddressResolver::resolve_path`] but from the table alone, synchronously: `None`
    /// when the table has no such path (the backend is not asked).
    pub fn try_resolve_path(&self, path: &str, key: Option<&[u8]>) -> Option<Result<Resolved>> {
        self.lookup_in_table(&Lookup::Path(path), key)
    }

    /// Like [`AddressResolver::resolve_id`] but from the table alone, synchronously.
    pub fn try_resolve_id(&self, service_id: &str, key: Option<&[u8]>) -> Option<Result<Resolved>> {
        self.lookup_in_table(&Lookup::Id(service_id), key)
    }

    fn lookup_in_table(&self, lookup: &Lookup<'_>, key: Option<&[u8]>) -> Option<Result<Resolved>> {
        let answer = self
            .shared
            .table
            .lookup(|table| lookup.find(table).map(|entry| self.choose(entry, key)));
        // Counted off the hot path: what the per-thread lookup count does not tell.
        let counters = &self.shared.counters;
        match &answer {
            None => counters.unanswered.fetch_add(1, Ordering::Relaxed),
            Some(Err(_)) => counters.table_failures.fetch_add(1, Ordering::Relaxed),
            Some(Ok(_)) => 0,
        };
        answer
    }

    fn resolve<'a>(&'a self, lookup: Lookup<'a>, key: Option<&'a [u8]>) -> ResolveFuture<'a> {
        match self.lookup_in_table(&lookup, key) {
            Some(resolved) => ResolveFuture::Ready(Some(resolved)),
            None => ResolveFuture::Miss(Box::pin(async move {
                let entry = self.miss(lookup).await?;
                let resolved = self.choose(&entry, key)?;
                let counters = &self.shared.counters;
                counters.found_after_miss.fetch_add(1, Ordering::Relaxed);
                Ok(resolved)
            })),
        }
    }

    /// Every healthy address of a route path, for broadcast (all of them when none is healthy).
    pub async fn resolve_all(&self, path: &str) -> Result<Vec<Arc<Address>>> {
        let entry = self
            .shared
            .table
            .lookup(|table| table.by_path(path).cloned());
        let entry = match entry {
            Some(entry) => entry,
            None => self.miss(Lookup::Path(path)).await?,
        };
        let addresses = &entry.route().addresses;
        let healthy: Vec<Arc<Address>> = entry
            .endpoints()
            .iter()
            .zip(addresses)
            .filter(|(endpoint, _)| endpoint.is_healthy())
            .map(|(_, address)| address.clone())
            .collect();
        if healthy.is_empty() {
            self.shared
                .counters
                .fail_open
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(service_id = %entry.route().id(), "every address of the route is unhealthy; returning all of them");
            return Ok(addresses.clone());
        }
        Ok(healthy)
    }

    fn choose(&self, entry: &Arc<RouteEntry>, key: Option<&[u8]>) -> Result<Resolved> {
        match entry.select(key) {
            Some(choice) => {
                if choice.fail_open {
                    self.shared
                        .counters
                        .fail_open
                        .fetch_add(1, Ordering::Relaxed);
                }
                Ok(Resolved::new(entry.clone(), choice, &self.shared.reports))
            }
            None => {
                self.shared
                    .counters
                    .not_found
                    .fetch_add(1, Ordering::Relaxed);
                Err(Error::new(
                    ErrorKind::NotFound,
                    format!("route {} has no address", entry.route().id()),
                ))
            }
        }
    }

    /// A lookup the table could not answer (an unknown route, or one registered a moment ago
    /// whose event is on its way). Known-unknown keys answer from the negative cache; otherwise
    /// one fresh listing of the backend, shared by every miss for `negative_ttl`, decides. A
    /// backend error is returned as it is and not remembered.
    async fn miss(&self, lookup: Lookup<'_>) -> Result<Arc<RouteEntry>> {
        let cache_key = lookup.cache_key();
        let services = &self.shared.config.services;
        let outside = matches!(lookup, Lookup::Id(id) if !scope::covers(services, id));
        if outside || self.shared.not_found.contains_key(&cache_key) {
            self.shared
                .counters
                .not_found
                .fetch_add(1, Ordering::Relaxed);
            return Err(lookup.not_found(services));
        }
        let listing = self.fresh_listing().await?;
        match lookup.find(&listing) {
            Some(entry) => Ok(entry.clone()),
            None => {
                self.shared.not_found.insert(cache_key, ());
                self.shared
                    .counters
                    .not_found
                    .fetch_add(1, Ordering::Relaxed);
                Err(lookup.not_found(services))
            }
        }
    }

    /// The backend's routes as a table, listed at most once per `negative_ttl`; concurrent
    /// callers wait for one listing. Addresses already in the table keep their endpoints.
    async fn fresh_listing(&self) -> Result<Arc<RouteTable>> {
        let mut last = self.shared.last_listing.lock().await;
        if let Some((at, table)) = last.as_ref() {
            if at.elapsed() < self.shared.config.negative_ttl {
                return Ok(table.clone());
            }
        }
        let services = &self.shared.config.services;
        let routes = self.shared.manager.list_services(services).await?;
        let mut view = View::new(Duration::ZERO);
        view.adopt_endpoints(self.shared.table.load_full().endpoints());
        for route in routes {
            view.upsert(Arc::new(route), &self.shared.config);
        }
        let table = Arc::new(view.table());
        *last = Some((std::time::Instant::now(), table.clone()));
        Ok(table)
    }

    /// The current table snapshot.
    pub fn table(&self) -> Arc<RouteTable> {
        self.shared.table.load_full()
    }

    /// The health monitor, for passive signals.
    pub fn health(&self) -> &HealthMonitor {
        &self.shared.reports.health
    }

    /// A caller's call to `address` failed: counts against its health and toward its
    /// ejection as an outlier.
    pub fn report_failure(&self, address: &Address) {
        if let Some(endpoint) = self.shared.table.load_full().endpoint_of(address) {
            self.shared.reports.record(endpoint, false);
        }
    }

    /// A caller's call to `address` succeeded: counts toward its health, and ends its trial
    /// after an ejection.
    pub fn report_success(&self, address: &Address) {
        if let Some(endpoint) = self.shared.table.load_full().endpoint_of(address) {
            self.shared.reports.record(endpoint, true);
        }
    }

    /// Whether outlier ejection has `address` out of selection now (`None` if no route has
    /// it).
    pub fn is_ejected(&self, address: &Address) -> Option<bool> {
        self.shared
            .table
            .load_full()
            .endpoint_of(address)
            .map(|e| e.is_ejected())
    }

    /// Whether local checks consider `address` healthy (`None` if no route has it).
    pub fn is_healthy(&self, address: &Address) -> Option<bool> {
        self.shared
            .table
            .load_full()
            .endpoint_of(address)
            .map(|e| e.is_healthy())
    }

    /// Publishes the resolver's figures as metrics now (they are also published once a
    /// second): before an exporter renders them, say. See [`crate::metrics`].
    #[cfg(feature = "metrics")]
    pub fn publish_metrics(&self) {
        publish(&self.shared);
    }

    /// Counters and freshness.
    pub fn stats(&self) -> ResolverStats {
        stats(&self.shared)
    }
}

/// A resolver's counters and freshness.
fn stats(shared: &Shared) -> ResolverStats {
    let table = shared.table.load_full();
    let status = shared.status();
    let counters = &shared.counters;
    let resolves = shared.table.lookups();
    let found = resolves
        .saturating_sub(counters.unanswered.load(Ordering::Relaxed))
        .saturating_sub(counters.table_failures.load(Ordering::Relaxed))
        + counters.found_after_miss.load(Ordering::Relaxed);
    ResolverStats {
        resolves,
        found,
        routes: table.len(),
        endpoints: table.endpoint_count(),
        not_found: counters.not_found.load(Ordering::Relaxed),
        fail_open: counters.fail_open.load(Ordering::Relaxed),
        ejections: shared.reports.ejections(),
        health_flips: shared.reports.health.health_flips(),
        probes: shared.reports.health.probes_sent(),
        stale: status.is_stale(),
        age: status.age(),
        watch_reconnects: status.reconnects,
        protected_routes: counters.protected_routes.load(Ordering::Relaxed),
        from_snapshot: counters.from_snapshot.load(Ordering::Relaxed),
    }
}

/// The future of [`AddressResolver::resolve_path`] and [`AddressResolver::resolve_id`]: ready at
/// once for a known route (no async state machine to build on the hot path, which costs about as
/// much as the lookup itself), boxed only for the rare unknown one.
#[must_use = "futures do nothing unless awaited"]
pub enum ResolveFuture<'a> {
    /// Resolved from the table.
    #[doc(hidden)]
    Ready(Option<Result<Resolved>>),
    /// Waiting for the negative cache or the backend.
    #[doc(hidden)]
    Miss(Pin<Box<dyn Future<Output = Result<Resolved>> + Send + 'a>>),
}

impl std::fmt::Debug for ResolveFuture<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ResolveFuture::Ready(_) => "ResolveFuture::Ready",
            ResolveFuture::Miss(_) => "ResolveFuture::Miss",
        })
    }
}

impl Future for ResolveFuture<'_> {
    type Output = Result<Resolved>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Resolved>> {
        match self.get_mut() {
            ResolveFuture::Ready(result) => Poll::Ready(result.take().unwrap_or_else(|| {
                Err(Error::new(
                    ErrorKind::Closed,
                    "resolve future polled after completion",
                ))
            })),
            ResolveFuture::Miss(future) => future.as_mut().poll(cx),
        }
    }
}

enum Lookup<'a> {
    Path(&'a str),
    Id(&'a str),
}

impl Lookup<'_> {
    fn find<'t>(&self, table: &'t RouteTable) -> Option<&'t Arc<RouteEntry>> {
        match self {
            Lookup::Path(path) => table.by_path(path),
            Lookup::Id(id) => table.by_id(id),
        }
    }

    fn cache_key(&self) -> String {
        match self {
            Lookup::Path(path) => format!("path:{}", path.trim_matches('/').to_ascii_lowercase()),
            Lookup::Id(id) => format!("id:{id}"),
        }
    }

    /// The error for a lookup nothing answered; with a subscription (`services`), it says the
    /// path or id is not subscribed.
    fn not_found(&self, services: &[String]) -> Error {
        let message = match (self, services.is_empty()) {
            (Lookup::Path(path), true) => format!("no route for path {path:?}"),
            (Lookup::Id(id), true) => format!("no route with service id {id:?}"),
            (Lookup::Path(path), false) => format!(
                "route path {path:?} is not subscribed: no route of the services {services:?} has it"
            ),
            (Lookup::Id(id), false) if !scope::covers(services, id) => {
                format!("service id {id:?} is not subscribed (services {services:?})")
            }
            (Lookup::Id(id), false) => format!(
                "no route with service id {id:?} (subscribed to the services {services:?})"
            ),
        };
        Error::new(ErrorKind::NotFound, message)
    }
}

/// Opens the manager's watch and applies its initial routes to `view`.
async fn open_watch(
    manager: &dyn RouteSource,
    view: &mut View,
    config: &ResolverConfig,
) -> Result<RouteWatch> {
    let mut watch = manager.watch_services(&config.services).await?;
    // Resets counted so far are in the routes the watch replays; later ones are news.
    view.baseline_resets(watch.resets());
    let mut initial = Vec::new();
    loop {
        match watch.next().await {
            Some(RouteEvent::Synced) => break,
            Some(RouteEvent::Created(route)) => initial.push(route),
            Some(event) => view.apply(event, config, Instant::now()),
            None => {
                return Err(Error::new(
                    ErrorKind::Closed,
                    "the route watch ended before the initial routes arrived",
                ))
            }
        }
    }
    view.replace(initial, config, Instant::now());
    Ok(watch)
}

/// The resolver's task: reaches the registry when started from the snapshot, then follows the
/// watch, releasing held addresses when their grace ends.
async fn follow(watch: Option<RouteWatch>, mut view: View, shared: std::sync::Weak<Shared>) {
    let mut watch = match watch {
        Some(watch) => watch,
        None => {
            let mut backoff = Backoff::reconnect();
            loop {
                backoff.wait().await;
                let Some(strong) = shared.upgrade() else {
                    return;
                };
                let manager = strong.manager.clone();
                match open_watch(manager.as_ref(), &mut view, &strong.config).await {
                    Ok(watch) => {
                        tracing::info!("the registry answered; its routes replace the snapshot");
                        *strong
                            .status
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner()) =
                            watch.status_receiver();
                        strong
                            .counters
                            .from_snapshot
                            .store(false, Ordering::Relaxed);
                        strong.publish(&mut view);
                        break watch;
                    }
                    Err(err) => {
                        tracing::debug!(error = %err, "the registry still cannot be read; serving the snapshot")
                    }
                }
            }
        }
    };
    loop {
        let release_at = view.next_release(Instant::now());
        let event = tokio::select! {
            event = watch.next() => match event {
                Some(event) => Some(event),
                None => return,
            },
            () = sleep_until_some(release_at) => None,
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = Instant::now();
        let mut changed = view.release_due(&shared.config, now);
        if let Some(event) = event {
            let mut batch = vec![event];
            while let Some(event) = watch.try_next() {
                batch.push(event);
            }
            // A reset is counted before the events that follow it are sent: checking after the
            // batch was read applies every event of it as after any reset among them.
            view.observe_resets(watch.resets(), now);
            for event in latest_per_route(batch) {
                view.apply(event, &shared.config, now);
            }
            changed = true;
        }
        if changed {
            shared.publish(&mut view);
        }
    }
}

/// Publishes the resolver's metrics every second, for as long as it lives.
#[cfg(feature = "metrics")]
async fn publish_metrics(shared: Weak<Shared>) {
    loop {
        tokio::time::sleep(super::metrics::PUBLISH_EVERY).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        publish(&shared);
    }
}

/// Publishes a resolver's figures now (its publisher reads them under its own lock, so two
/// publications never cross).
#[cfg(feature = "metrics")]
fn publish(shared: &Shared) {
    shared
        .published
        .publish(|| (stats(shared), shared.table.load_full()));
}

/// Every outlier interval: ends due ejections and evaluates failure percentages over the table's
/// endpoints.
async fn sweep_outliers(shared: Weak<Shared>) {
    let Some(interval) = shared
        .upgrade()
        .map(|s| s.config.outlier.interval.max(Duration::from_millis(10)))
    else {
        return;
    };
    loop {
        tokio::time::sleep(interval).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let table = shared.table.load_full();
        shared.reports.sweep(table.endpoints().map(|e| e.as_ref()));
    }
}

/// The last event of each route in a batch, in batch order: events are whole states, so a
/// route that changed many times while the resolver was busy (a rolling deploy of a thousand
/// instances) is indexed once, in its newest state.
fn latest_per_route(batch: Vec<RouteEvent>) -> Vec<RouteEvent> {
    if batch.len() < 2 {
        return batch;
    }
    let keep: Vec<bool> = {
        let mut last: HashMap<&str, usize> = HashMap::with_capacity(batch.len());
        for (at, event) in batch.iter().enumerate() {
            if let Some(route) = event.route() {
                last.insert(route.id(), at);
            }
        }
        let latest = |(at, event): (usize, &RouteEvent)| {
            event
                .route()
                .is_none_or(|route| last.get(route.id()) == Some(&at))
        };
        batch.iter().enumerate().map(latest).collect()
    };
    batch
        .into_iter()
        .zip(keep)
        .filter_map(|(event, latest)| latest.then_some(event))
        .collect()
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
