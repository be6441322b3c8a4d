//! In-process registry: the reference implementation of the key-value model, used by tests.
//!
//! It stores raw values under `<prefix><service-id>/<instance-id>` with leases, exactly as the etcd
//! and Consul backends do, and decodes them through the same code, so malformed values, expiry and
//! re-registration behave the same way. Clones share one registry.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::BackendOptions;
use crate::error::{Error, ErrorKind, Result};
use crate::manager::{Instance, RouteManager, RouteSource, DEFAULT_TTL};
use crate::registration::{Liveness, LivenessStore, Registration, Rewrite};
use crate::route::{
    decode_entry, encode_route, instance_id, without, Address, Edit, KeyLayout, RouteEntries,
    ServiceRoute,
};
use crate::telemetry::traced;
use crate::watch::{RouteWatch, WatchHub};

/// Options of the memory backend (`memory://?prefix=..&ttl=..`).
#[derive(Debug, Clone)]
pub struct MemoryConfig {
    /// Key layout (prefix).
    pub layout: KeyLayout,
    /// Default registration TTL.
    pub ttl: Duration,
}

impl MemoryConfig {
    /// The options `memory://?...` takes.
    pub const OPTIONS: &'static [&'static str] = &["prefix", "ttl"];

    /// The configuration the options name.
    pub(crate) fn from_options(options: &BackendOptions) -> Result<Self> {
        options.accept_only(Self::OPTIONS)?;
        let mut config = MemoryConfig {
            layout: options.layout()?,
            ..MemoryConfig::default()
        };
        if let Some(ttl) = options.ttl()? {
            config.ttl = ttl;
        }
        Ok(config)
    }
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            layout: KeyLayout::default(),
            ttl: DEFAULT_TTL,
        }
    }
}

/// A registry held in this process's memory. Clones share the same registry.
#[derive(Debug, Clone)]
pub struct MemoryRouteManager {
    inner: Arc<MemoryStore>,
}

struct Stored {
    value: Vec<u8>,
    lease: Option<u64>,
}

#[derive(Default)]
struct State {
    kv: BTreeMap<String, Stored>,
    leases: HashMap<u64, Instant>,
    next_lease: u64,
    revision: u64,
    entries: RouteEntries,
    /// Leases whose instance was deregistered by `remove_addresses`: never healed.
    deregistered: std::collections::HashSet<u64>,
}

struct MemoryStore {
    config: MemoryConfig,
    state: Mutex<State>,
    hub: WatchHub,
    outage: AtomicBool,
    reaper_started: AtomicBool,
    lease_granted: Arc<Notify>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryRouteManager {
    fn default() -> Self {
        Self::new(MemoryConfig::default())
    }
}

impl MemoryRouteManager {
    /// An empty registry.
    pub fn new(config: MemoryConfig) -> Self {
        let hub = WatchHub::new();
        hub.mark_synced();
        MemoryRouteManager {
            inner: Arc::new(MemoryStore {
                config,
                state: Mutex::new(State::default()),
                hub,
                outage: AtomicBool::new(false),
                reaper_started: AtomicBool::new(false),
                lease_granted: Arc::new(Notify::new()),
            }),
        }
    }

    /// Writes a raw value under `key`, with no liveness, as another tool might.
    pub fn insert_raw(&self, key: &str, value: impl Into<Vec<u8>>) {
        self.inner
            .lock()
            .put(&self.inner, key.to_owned(), value.into(), None);
    }

    /// Simulates an outage: while on, every call fails with [`ErrorKind::Unavailable`] and
    /// watchers keep their last good view; when it ends they catch up.
    pub fn set_outage(&self, on: bool) {
        self.inner.outage.store(on, Ordering::SeqCst);
        if on {
            self.inner
                .hub
                .mark_error(&Error::new(ErrorKind::Unavailable, "simulated outage"));
        } else {
            let routes = self.inner.lock().entries.all_merged();
            self.inner.hub.replace_all(routes);
        }
    }
}

impl MemoryRouteManager {
    /// Simulates a registry restarted with no data (a server that lost its store): every key and
    /// lease is gone at once, watchers are told the registry reset, and running registrations
    /// find their liveness lost and register again.
    pub fn restart_empty(&self) {
        let mut state = self.inner.lock();
        state.kv.clear();
        state.leases.clear();
        state.entries = RouteEntries::default();
        self.inner.hub.note_reset();
        self.inner.hub.replace_all(Vec::new());
    }
}

impl MemoryStore {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_available(&self) -> Result<()> {
        if self.outage.load(Ordering::SeqCst) {
            return Err(Error::new(
                ErrorKind::Unavailable,
                "memory registry: simulated outage",
            ));
        }
        Ok(())
    }

    fn publish(&self, routes: Vec<(String, Option<Arc<ServiceRoute>>)>) {
        if !self.outage.load(Ordering::SeqCst) {
            self.hub.set_many(routes);
        }
    }

    /// Removes every lease past its deadline and the keys bound to it.
    fn expire(&self, state: &mut State) {
        let now = Instant::now();
        let expired: Vec<u64> = state
            .leases
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for lease in expired {
            tracing::info!(lease, "memory registry: lease expired");
            state.revoke(self, lease);
        }
    }

    fn start_reaper(self: &Arc<Self>) {
        if self.reaper_started.swap(true, Ordering::SeqCst) {
            return;
        }
        tokio::spawn(reap(Arc::downgrade(self), self.lease_granted.clone()));
    }
}

/// Background task: expires leases at their deadlines; ends soon after the registry is dropped.
async fn reap(store: Weak<MemoryStore>, lease_granted: Arc<Notify>) {
    loop {
        let deadline = {
            let Some(store) = store.upgrade() else { return };
            let mut state = store.lock();
            store.expire(&mut state);
            let next = state.leases.values().min().copied();
            next.unwrap_or_else(|| Instant::now() + Duration::from_secs(1))
        };
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {}
            _ = lease_granted.notified() => {}
        }
    }
}

impl State {
    fn put(&mut self, store: &MemoryStore, key: String, value: Vec<u8>, lease: Option<u64>) {
        self.revision += 1;
        match decode_entry(&store.config.layout, &key, &value) {
            Ok((entry_key, route)) => {
                self.entries.put(&entry_key, self.revision, route);
                store.publish(self.entries.take_changed());
            }
            Err(err) => tracing::warn!(%key, error = %err, "skipping malformed registry entry"),
        }
        self.kv.insert(key, Stored { value, lease });
    }

    fn delete(&mut self, store: &MemoryStore, key: &str) -> bool {
        if self.kv.remove(key).is_none() {
            return false;
        }
        self.revision += 1;
        if let Some(entry_key) = store.config.layout.parse(key) {
            self.entries.remove(&entry_key);
            store.publish(self.entries.take_changed());
        }
        true
    }

    fn revoke(&mut self, store: &MemoryStore, lease: u64) {
        self.leases.remove(&lease);
        self.deregistered.remove(&lease);
        let keys: Vec<String> = self
            .kv
            .iter()
            .filter(|(_, stored)| stored.lease == Some(lease))
            .map(|(key, _)| key.clone())
            .collect();
        for key in keys {
            self.delete(store, &key);
        }
    }
}

#[async_trait]
impl LivenessStore for MemoryStore {
    type Lease = u64;
    const BACKEND: &'static str = "memory";

    async fn put_instance(&self, instance: &Instance, ttl: Duration) -> Result<u64> {
        self.check_available()?;
        let id = instance.id()?;
        let mut values = Vec::with_capacity(instance.routes.len());
        for descriptor in &instance.routes {
            let key = self.config.layout.instance_key(&descriptor.id, &id)?;
            values.push((key, encode_route(&instance.route(descriptor))?));
        }
        let mut state = self.lock();
        state.next_lease += 1;
        let lease = state.next_lease;
        state.leases.insert(lease, Instant::now() + ttl);
        for (key, value) in values {
            state.put(self, key, value, Some(lease));
        }
        drop(state);
        self.lease_granted.notify_one();
        Ok(lease)
    }

    async fn keep_alive(&self, instance: &Instance, lease: &u64) -> Result<Liveness> {
        self.check_available()?;
        let ttl = instance.ttl.unwrap_or(self.config.ttl);
        let mut state = self.lock();
        self.expire(&mut state);
        Ok(match state.leases.get_mut(lease) {
            Some(deadline) => {
                *deadline = Instant::now() + ttl;
                Liveness::Alive
            }
            None => Liveness::Lost,
        })
    }

    async fn heal(&self, instance: &Instance, lease: &u64, which: Rewrite) -> Result<usize> {
        self.check_available()?;
        let id = instance.id()?;
        let mut state = self.lock();
        if !state.leases.contains_key(lease) || state.deregistered.contains(lease) {
            return Ok(0);
        }
        let mut healed = 0;
        for descriptor in &instance.routes {
            let key = self.config.layout.instance_key(&descriptor.id, &id)?;
            if which == Rewrite::All
                || state
                    .kv
                    .get(&key)
                    .is_none_or(|stored| stored.lease != Some(*lease))
            {
                let value = encode_route(&instance.route(descriptor))?;
                state.put(self, key, value, Some(*lease));
                healed += 1;
            }
        }
        Ok(healed)
    }

    async fn remove_instance(&self, _instance: &Instance, lease: u64) -> Result<()> {
        self.check_available()?;
        self.lock().revoke(self, lease);
        Ok(())
    }
}

impl MemoryRouteManager {
    /// Deletes raw keys under the prefix as a tool might (`etcdctl del`), without touching leases.
    pub fn delete_raw(&self, prefix: &str) -> usize {
        let mut state = self.inner.lock();
        let keys: Vec<String> = state
            .kv
            .keys()
            .filter(|key| key.starts_with(prefix))
            .cloned()
            .collect();
        keys.iter()
            .filter(|key| state.delete(&self.inner, key))
            .count()
    }
}

#[async_trait]
impl RouteSource for MemoryRouteManager {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn default_ttl(&self) -> Duration {
        self.inner.config.ttl
    }

    fn registry_id(&self) -> String {
        format!("memory {}", self.inner.config.layout.prefix())
    }

    async fn list(&self) -> Result<Vec<ServiceRoute>> {
        traced(
            "memory",
            "list",
            async {
                self.inner.check_available()?;
                let mut state = self.inner.lock();
                self.inner.expire(&mut state);
                let routes = state.entries.all_merged().into_iter();
                Ok(routes.map(Arc::unwrap_or_clone).collect())
            },
            Vec::len,
        )
        .await
    }

    async fn watch(&self) -> Result<RouteWatch> {
        self.inner.check_available()?;
        Ok(self.inner.hub.subscribe())
    }
}

#[async_trait]
impl RouteManager for MemoryRouteManager {
    async fn register(&self, instance: Instance) -> Result<Registration> {
        self.inner.start_reaper();
        let ttl = self.inner.config.ttl;
        // The instance's own TTL is used for renewals too.
        Registration::start(Arc::new(self.clone()), self.inner.clone(), instance, ttl).await
    }

    async fn remove_addresses(&self, addresses: &[Address]) -> Result<usize> {
        traced(
            "memory",
            "remove_addresses",
            async {
                self.inner.check_available()?;
                let ids = addresses
                    .iter()
                    .map(instance_id)
                    .collect::<Result<Vec<_>>>()?;
                let layout = &self.inner.config.layout;
                let mut state = self.inner.lock();
                let keys: Vec<String> = state.kv.keys().cloned().collect();
                let mut removed = 0;
                for key in keys {
                    let Some(entry_key) = layout.parse(&key) else {
                        continue;
                    };
                    match entry_key.instance_id {
                        Some(instance) if ids.contains(&instance) => {
                            // Its registration must not write it back while its lease lives.
                            if let Some(lease) = state.kv[&key].lease {
                                state.deregistered.insert(lease);
                            }
                            removed += usize::from(state.delete(&self.inner, &key));
                        }
                        Some(_) => {}
                        // A whole-route value written by Surging: take the addresses out of it.
                        None => {
                            let (edit, taken) = without(&state.kv[&key].value, |a| {
                                addresses.iter().any(|d| d.same_endpoint(a))
                            })?;
                            removed += taken;
                            match edit {
                                Edit::Unchanged => {}
                                Edit::Delete => {
                                    state.delete(&self.inner, &key);
                                }
                                Edit::Put(value) => state.put(&self.inner, key, value, None),
                            }
                        }
                    }
                }
                Ok(removed)
            },
            |removed| *removed,
        )
        .await
    }

    async fn clear(&self) -> Result<()> {
        traced(
            "memory",
            "clear",
            async {
                self.inner.check_available()?;
                let prefix = self.inner.config.layout.prefix().to_owned();
                let mut state = self.inner.lock();
                let keys: Vec<String> = state
                    .kv
                    .keys()
                    .filter(|key| key.starts_with(&prefix))
                    .cloned()
                    .collect();
                for key in keys {
                    state.delete(&self.inner, &key);
                }
                state.leases.clear();
                Ok(())
            },
            |_| 0,
        )
        .await
    }
}
