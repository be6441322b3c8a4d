//! Watching routes: [`RouteEvent`], the [`RouteWatch`] stream, and the hub that feeds every
//! watcher of one manager.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::route::{RouteSet, ServiceRoute};

/// A change to the routes of a registry, as seen by [`RouteWatch`].
///
/// Routes are shared (`Arc`): every watcher of a manager, and the manager itself, hold one copy
/// of each route however many watch it.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub enum RouteEvent {
    /// A service id gained its first address (or was present when the watch began).
    Created(Arc<ServiceRoute>),
    /// A route's descriptor or addresses changed; carries the new route.
    Changed(Arc<ServiceRoute>),
    /// A service id lost its last address; carries the route as it was.
    Removed(Arc<ServiceRoute>),
    /// The `Created` events before this one are the registry's state when the watch began;
    /// everything after is a change. Sent once per watch.
    Synced,
}

impl RouteEvent {
    /// The route the event is about (`None` for [`RouteEvent::Synced`]).
    pub fn route(&self) -> Option<&ServiceRoute> {
        match self {
            RouteEvent::Created(r) | RouteEvent::Changed(r) | RouteEvent::Removed(r) => Some(r),
            RouteEvent::Synced => None,
        }
    }

    /// `created`, `changed`, `removed` or `synced`.
    pub fn name(&self) -> &'static str {
        match self {
            RouteEvent::Created(_) => "created",
            RouteEvent::Changed(_) => "changed",
            RouteEvent::Removed(_) => "removed",
            RouteEvent::Synced => "synced",
        }
    }
}

/// How current a watcher's view of the registry is.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncStatus {
    /// When the backend last gave an authoritative answer.
    pub last_sync: Option<SystemTime>,
    /// Why the view is stale, while the backend cannot be read; `None` when current.
    pub error: Option<String>,
    /// How many times the backend's watch was re-established after an interruption (a failed
    /// or stalled stream, an unreachable agent or file, lost history).
    pub reconnects: u64,
    /// How many times the registry as a whole was seen to reset: Consul's index or etcd's
    /// revision went backwards, etcd's cluster id changed, a routes file was replaced by an empty
    /// document. Removals that follow a reset may be a restarted registry that instances have not
    /// refilled yet; a resolver holds them for its `empty_grace`.
    pub resets: u64,
}

impl SyncStatus {
    /// Whether the backend is currently unreadable and the view is the last good one.
    pub fn is_stale(&self) -> bool {
        self.error.is_some()
    }

    /// How old the served routes are: zero while current, else the time since the last good read.
    pub fn age(&self) -> Duration {
        match (&self.error, self.last_sync) {
            (None, _) | (_, None) => Duration::ZERO,
            (Some(_), Some(at)) => at.elapsed().unwrap_or_default(),
        }
    }
}

/// A stream of [`RouteEvent`]s: the current routes as `Created`, then `Synced`, then changes.
///
/// Events are never dropped: a slow reader buffers them. Dropping the watch unsubscribes.
pub struct RouteWatch {
    events: mpsc::UnboundedReceiver<RouteEvent>,
    status: watch::Receiver<SyncStatus>,
    _keep_alive: Option<Arc<dyn Send + Sync>>,
}

impl std::fmt::Debug for RouteWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteWatch")
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}

impl RouteWatch {
    /// The next event; `None` once the manager is gone and every event was read.
    pub async fn next(&mut self) -> Option<RouteEvent> {
        self.events.recv().await
    }

    /// The next event if one is waiting, without blocking.
    pub fn try_next(&mut self) -> Option<RouteEvent> {
        self.events.try_recv().ok()
    }

    /// How current the view is (see [`SyncStatus`]).
    pub fn status(&self) -> SyncStatus {
        self.status.borrow().clone()
    }

    /// How many registry-wide resets the backend has seen (see [`SyncStatus::resets`]); the
    /// count rises before the events that follow a reset are sent.
    pub(crate) fn resets(&self) -> u64 {
        self.status.borrow().resets
    }

    /// A watch over these channels (see [`crate::scope::combine`]).
    pub(crate) fn from_parts(
        events: mpsc::UnboundedReceiver<RouteEvent>,
        status: watch::Receiver<SyncStatus>,
    ) -> Self {
        RouteWatch {
            events,
            status,
            _keep_alive: None,
        }
    }

    /// A handle on the status that outlives borrowing the watch.
    pub(crate) fn status_receiver(&self) -> watch::Receiver<SyncStatus> {
        self.status.clone()
    }

    /// Keeps `guard` alive as long as this watch (a backend's background reader, say).
    pub(crate) fn keep_alive(mut self, guard: Arc<dyn Send + Sync>) -> Self {
        self._keep_alive = Some(guard);
        self
    }
}

impl futures_core::Stream for RouteWatch {
    type Item = RouteEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<RouteEvent>> {
        self.events.poll_recv(cx)
    }
}

#[derive(Default)]
struct HubState {
    routes: RouteSet,
    synced: bool,
    subscribers: Vec<mpsc::UnboundedSender<RouteEvent>>,
}

impl HubState {
    /// Sends `event` to every subscriber: copies for all but the last, which gets the original.
    fn broadcast(&mut self, event: RouteEvent) {
        self.subscribers.retain(|s| !s.is_closed());
        if let Some((last, others)) = self.subscribers.split_last() {
            for subscriber in others {
                let _ = subscriber.send(event.clone());
            }
            let _ = last.send(event);
        }
    }

    fn apply(&mut self, id: &str, route: Option<Arc<ServiceRoute>>) {
        let event = match (self.routes.get(id), route) {
            (None, None) => return,
            (Some(old), Some(new)) if Arc::ptr_eq(old, &new) || **old == *new => return,
            (None, Some(new)) => {
                self.routes.insert(new.clone());
                RouteEvent::Created(new)
            }
            (Some(_), Some(new)) => {
                self.routes.insert(new.clone());
                RouteEvent::Changed(new)
            }
            (Some(_), None) => match self.routes.remove(id) {
                Some(old) => RouteEvent::Removed(old),
                None => return,
            },
        };
        self.broadcast(event);
    }

    fn mark_synced(&mut self) {
        if !self.synced {
            self.synced = true;
            self.broadcast(RouteEvent::Synced);
        }
    }
}

/// The routes one manager last read, and every watcher subscribed to their changes.
///
/// Backends feed it (a whole new set, or one service id at a time); it computes the events.
/// A failed read is reported with [`WatchHub::mark_error`] and never changes the routes.
pub(crate) struct WatchHub {
    state: Mutex<HubState>,
    status: watch::Sender<SyncStatus>,
    /// The process's write count (see [`note_write`]) as it was when the newest whole read that
    /// the hub published began: every write counted up to it is in the hub's view.
    read_through: watch::Sender<u64>,
    /// Wakes the backend's reader for a fresh whole read (see [`SharedFeed::watch`]).
    refresh: tokio::sync::Notify,
}

/// Writes to any registry completed by this process, counted for read-your-writes.
static WRITES: AtomicU64 = AtomicU64::new(0);

/// Records that a write (a registration, a deregistration, a removal, a clear) completed: a
/// watch or resolver started after this returns sees the registry at least as new as the write.
pub(crate) fn note_write() {
    WRITES.fetch_add(1, Ordering::SeqCst);
}

/// The writes this process completed so far; a backend samples it when a whole read begins.
pub(crate) fn writes_done() -> u64 {
    WRITES.load(Ordering::SeqCst)
}

impl WatchHub {
    /// An empty hub, not yet synced.
    pub(crate) fn new() -> Self {
        let (status, _) = watch::channel(SyncStatus {
            last_sync: None,
            error: None,
            reconnects: 0,
            resets: 0,
        });
        let (read_through, _) = watch::channel(0);
        WatchHub {
            state: Mutex::new(HubState::default()),
            status,
            read_through,
            refresh: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A new watcher: replays the current routes when synced; otherwise they follow the first sync.
    pub(crate) fn subscribe(&self) -> RouteWatch {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut state = self.lock();
        if state.synced {
            // In id order, as a first read lists them.
            let mut routes: Vec<&Arc<ServiceRoute>> = state.routes.iter().collect();
            routes.sort_unstable_by(|a, b| a.id().cmp(b.id()));
            for route in routes {
                let _ = tx.send(RouteEvent::Created(route.clone()));
            }
            let _ = tx.send(RouteEvent::Synced);
        }
        state.subscribers.retain(|s| !s.is_closed());
        state.subscribers.push(tx);
        RouteWatch::from_parts(rx, self.status.subscribe())
    }

    /// Replaces the whole set after an authoritative read; emits the differences.
    pub(crate) fn replace_all(&self, routes: Vec<Arc<ServiceRoute>>) {
        let mut fresh = RouteSet::default();
        fresh.reserve(routes.len());
        for route in &routes {
            fresh.insert(route.clone());
        }
        let mut state = self.lock();
        let gone: Vec<Arc<ServiceRoute>> = state
            .routes
            .iter()
            .filter(|route| !fresh.contains(route.id()))
            .cloned()
            .collect();
        for route in gone {
            state.apply(route.id(), None);
        }
        drop(fresh);
        for route in routes {
            // (A copy of the pointer: `apply` borrows the id from the route it is given.)
            state.apply(route.id(), Some(route.clone()));
        }
        state.mark_synced();
        drop(state);
        self.mark_good();
    }

    /// Sets (or removes) several service ids' routes at once; emits the differences.
    pub(crate) fn set_many(&self, routes: Vec<(String, Option<Arc<ServiceRoute>>)>) {
        if routes.is_empty() {
            return;
        }
        let mut state = self.lock();
        for (id, route) in routes {
            state.apply(&id, route);
        }
    }

    /// Marks the hub synced after an initial load done through [`WatchHub::set_many`].
    pub(crate) fn mark_synced(&self) {
        self.lock().mark_synced();
        self.mark_good();
    }

    /// Records an authoritative read: the view is current. The first one after an error
    /// counts as a reconnect.
    pub(crate) fn mark_good(&self) {
        self.status.send_if_modified(|status| {
            let first = status.last_sync.is_none();
            let was_stale = status.error.take().is_some();
            status.last_sync = Some(SystemTime::now());
            if was_stale {
                status.reconnects += 1;
            }
            first || was_stale
        });
    }

    /// Counts a reconnect that no error preceded (a watch resumed after lost history); call it
    /// before the read that follows. After an error, that read's [`WatchHub::mark_good`] counts.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub(crate) fn note_reconnect(&self) {
        self.status.send_if_modified(|status| {
            let unnoticed = status.error.is_none();
            if unnoticed {
                status.reconnects += 1;
            }
            unnoticed
        });
    }

    /// Records that the registry as a whole reset; call it before publishing what it now holds.
    pub(crate) fn note_reset(&self) {
        self.status.send_modify(|status| status.resets += 1);
    }

    /// Records that a whole read which began when the process's write count was `writes` (see
    /// [`writes_done`]) is published.
    pub(crate) fn mark_read_through(&self, writes: u64) {
        self.read_through.send_if_modified(|through| {
            let newer = writes > *through;
            if newer {
                *through = writes;
            }
            newer
        });
    }

    /// Resolves when a new watcher asks for a fresh whole read; backends' readers wait on it
    /// beside their stream and answer with a read followed by [`WatchHub::mark_read_through`].
    #[cfg_attr(
        not(any(feature = "file", feature = "etcd", feature = "consul")),
        allow(dead_code)
    )]
    pub(crate) async fn refresh_requested(&self) {
        self.refresh.notified().await;
    }

    /// Records a failed read: the routes stay as they are and the status says why.
    pub(crate) fn mark_error(&self, error: &Error) {
        let message = error.to_string();
        self.status.send_if_modified(|status| {
            if status.error.as_deref() == Some(message.as_str()) {
                return false;
            }
            status.error = Some(message);
            true
        });
    }
}

/// Longest wait of a new watch for a reader's fresh read (read-your-writes).
const CATCH_UP_LIMIT: Duration = Duration::from_secs(3);

/// Keeps a backend's reader task running; the task stops when the last holder drops it.
#[cfg_attr(
    not(any(feature = "file", feature = "etcd", feature = "consul")),
    allow(dead_code)
)]
struct FeedGuard {
    task: JoinHandle<()>,
}

impl Drop for FeedGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A manager's hub and its one reader task, started by the first watch and stopped when the
/// last watch is dropped (every watch holds it alive).
#[cfg_attr(
    not(any(feature = "file", feature = "etcd", feature = "consul")),
    allow(dead_code)
)]
pub(crate) struct SharedFeed {
    hub: Arc<WatchHub>,
    running: tokio::sync::Mutex<Weak<FeedGuard>>,
}

#[cfg_attr(
    not(any(feature = "file", feature = "etcd", feature = "consul")),
    allow(dead_code)
)]
impl SharedFeed {
    /// A feed with an empty hub and no reader yet.
    pub(crate) fn new() -> Self {
        SharedFeed {
            hub: Arc::new(WatchHub::new()),
            running: tokio::sync::Mutex::new(Weak::new()),
        }
    }

    /// A new watch; when no reader runs, `start` loads the routes into the hub and returns the
    /// task that follows them (a failed first load is returned as the error).
    pub(crate) async fn watch<F, Fut>(&self, start: F) -> Result<RouteWatch>
    where
        F: FnOnce(Arc<WatchHub>) -> Fut,
        Fut: Future<Output = Result<JoinHandle<()>>>,
    {
        let mut running = self.running.lock().await;
        let guard = match running.upgrade() {
            Some(guard) => {
                drop(running);
                self.catch_up().await;
                guard
            }
            None => {
                // `start` publishes its first whole read before it returns.
                let writes = writes_done();
                let guard = Arc::new(FeedGuard {
                    task: start(self.hub.clone()).await?,
                });
                self.hub.mark_read_through(writes);
                *running = Arc::downgrade(&guard);
                guard
            }
        };
        Ok(self.hub.subscribe().keep_alive(guard))
    }

    /// Read-your-writes for a watch joining a running reader: when this process completed writes
    /// since the reader's last whole read, asks it for a fresh one and waits (at most
    /// [`CATCH_UP_LIMIT`]; an unreachable backend leaves the watch on the last good view).
    async fn catch_up(&self) {
        let target = writes_done();
        let mut through = self.hub.read_through.subscribe();
        if *through.borrow() >= target || self.hub.status.borrow().is_stale() {
            // Nothing to catch up on, or the backend cannot be read: the last good view is the
            // newest there is.
            return;
        }
        let wait = async {
            loop {
                self.hub.refresh.notify_one();
                let changed = tokio::time::timeout(Duration::from_millis(500), through.changed());
                match changed.await {
                    Ok(Err(_)) => return,
                    _ if *through.borrow_and_update() >= target => return,
                    _ => {}
                }
            }
        };
        if tokio::time::timeout(CATCH_UP_LIMIT, wait).await.is_err() {
            tracing::warn!("the registry could not be read again for a new watch; it starts from the last good view");
        }
    }
}

/// A manager's feeds by scope: the whole prefix (scope `""`) and each service-id prefix some
/// subscription asked for, each with its own reader.
#[cfg(any(feature = "etcd", feature = "consul"))]
#[derive(Default)]
pub(crate) struct ScopedFeeds(Mutex<std::collections::HashMap<String, Arc<SharedFeed>>>);

#[cfg(any(feature = "etcd", feature = "consul"))]
impl ScopedFeeds {
    /// The feed of service ids starting with `scope`.
    pub(crate) fn get(&self, scope: &str) -> Arc<SharedFeed> {
        let mut feeds = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        feeds
            .entry(scope.to_owned())
            .or_insert_with(|| Arc::new(SharedFeed::new()))
            .clone()
    }
}
