//! Consul KV backend.
//!
//! Each instance's copy of a route is one key, `<prefix><service-id>/<instance-id>`, acquired by
//! the instance's session (`Behavior=delete`, `LockDelay=0s`): when the session is invalidated
//! (TTL missed, destroyed, agent restarted empty) Consul deletes the keys. Writes go through
//! `/v1/txn` in batches of at most 64 operations; reads are recursive GETs, and the watch (in
//! `feed`) is one recursive blocking query on the prefix. The ACL token is only ever sent in the
//! `X-Consul-Token` header and is redacted from Debug output.

mod agents;
mod config;
mod election;
mod feed;
mod liveness;
mod session;
mod shared;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use agents::{Agents, KvPair, TxnOp};
pub use config::ConsulConfig;

use crate::backends::shared::{clear_beside, remove_from_shared, SurgingLayout};
use crate::decode::decode_in_halves;
use crate::election::RegistryElection;
use crate::error::{Error, ErrorKind, Result};
use crate::manager::{Instance, RouteManager, RouteSource};
use crate::registration::Registration;
use crate::route::{
    decode_entry, decode_listed, instance_id, Address, EntryKey, Group, KeyLayout, LayoutStyle,
    RouteEntries, RunDecoder, ServiceRoute,
};
use crate::scope::{self, ScopedReader};
use crate::telemetry::traced;
use crate::watch::{note_write, RouteWatch, ScopedFeeds};

/// Most operations in one `/v1/txn` request (the limit of Consul 1.8).
pub const MAX_TXN_OPS: usize = 64;

/// Consul's shortest session TTL.
pub const MIN_SESSION_TTL: Duration = Duration::from_secs(10);

/// A registry kept in Consul KV.
#[derive(Debug, Clone)]
pub struct ConsulRouteManager {
    inner: Arc<ConsulStore>,
}

struct ConsulStore {
    agents: Agents,
    feeds: ScopedFeeds,
}

impl ConsulStore {
    fn config(&self) -> &ConsulConfig {
        &self.agents.config
    }
}

impl std::fmt::Debug for ConsulStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulStore")
            .field("agents", &self.agents)
            .finish_non_exhaustive()
    }
}

/// One key of a listing, decoded (or why it could not be).
pub(crate) struct DecodedPair {
    /// The Consul key.
    pub key: String,
    /// Its ModifyIndex.
    pub modify_index: u64,
    /// The entry, or why the value is not one.
    pub entry: Result<(EntryKey, ServiceRoute)>,
}

/// Decodes the pairs in two halves on blocking threads (decoding is most of a cold load's
/// work), keeping their order.
pub(crate) async fn decode_pairs(
    layout: &KeyLayout,
    pairs: Vec<KvPair>,
) -> Result<Vec<DecodedPair>> {
    let layout = layout.clone();
    decode_in_halves(pairs, move |half| {
        half.into_iter()
            .map(|pair| DecodedPair {
                entry: pair
                    .bytes()
                    .and_then(|bytes| decode_entry(&layout, &pair.key, &bytes)),
                modify_index: pair.modify_index,
                key: pair.key,
            })
            .collect()
    })
    .join("consul listing")
    .await
}

/// Decodes a listing into per-instance entries, merged by service id in two halves on blocking
/// threads; malformed ones are skipped with a warning.
pub(crate) async fn entries_of(layout: &KeyLayout, pairs: Vec<KvPair>) -> Result<RouteEntries> {
    let layout = layout.clone();
    let groups = decode_in_halves(pairs, move |half| {
        let mut decoder = RunDecoder::default();
        let decoded = half.into_iter().filter_map(|pair| {
            let entry = pair
                .bytes()
                .and_then(|bytes| decode_listed(&mut decoder, &layout, &pair.key, &bytes));
            match entry {
                Ok((key, route)) => Some((key, pair.modify_index, route)),
                Err(err) => {
                    tracing::warn!(key = %pair.key, error = %err, "skipping malformed registry entry");
                    None
                }
            }
        });
        Group::listing(decoded)
    })
    .join("consul listing")
    .await?;
    Ok(RouteEntries::from_groups(groups))
}

impl ConsulRouteManager {
    /// A manager for these agents (no request is made yet).
    pub fn new(config: ConsulConfig) -> Result<Self> {
        if config.agents.is_empty() {
            return Err(Error::invalid_input("consul URL names no agent"));
        }
        Ok(ConsulRouteManager {
            inner: Arc::new(ConsulStore {
                agents: Agents::new(config)?,
                feeds: ScopedFeeds::default(),
            }),
        })
    }
}

#[async_trait]
impl RouteSource for ConsulRouteManager {
    fn backend(&self) -> &'static str {
        "consul"
    }

    fn default_ttl(&self) -> Duration {
        self.inner.config().ttl.max(MIN_SESSION_TTL)
    }

    fn registry_id(&self) -> String {
        // Agents of one datacenter share the KV store: the prefix names the namespace.
        format!("consul {}", self.inner.config().layout.prefix())
    }

    async fn list(&self) -> Result<Vec<ServiceRoute>> {
        self.list_scope("").await
    }

    async fn watch(&self) -> Result<RouteWatch> {
        self.watch_scope("").await
    }

    async fn list_services(&self, services: &[String]) -> Result<Vec<ServiceRoute>> {
        scope::list_each(self, services).await
    }

    async fn watch_services(&self, services: &[String]) -> Result<RouteWatch> {
        scope::watch_each(self, services).await
    }
}

impl ScopedReader for ConsulRouteManager {
    async fn list_scope(&self, scope: &str) -> Result<Vec<ServiceRoute>> {
        let listing = async {
            let listing = self.inner.agents.list(scope, 0).await?;
            let layout = &self.inner.config().layout;
            Ok(entries_of(layout, listing.pairs).await?.into_merged())
        };
        traced("consul", "list", listing, Vec::len).await
    }

    /// One blocking query on the range, shared by its watches.
    async fn watch_scope(&self, scope: &str) -> Result<RouteWatch> {
        let agents = self.inner.agents.clone();
        let scope = scope.to_owned();
        self.inner
            .feeds
            .get(&scope)
            .watch(|hub| feed::start(agents, scope, hub))
            .await
    }
}

#[async_trait]
impl RouteManager for ConsulRouteManager {
    fn election(&self) -> Result<Arc<dyn crate::election::Election>> {
        // Consul's sessions last at least 10 s; the leader's deadlines follow the session's.
        let ttl = self.inner.config().ttl.max(MIN_SESSION_TTL);
        Ok(Arc::new(RegistryElection::new(
            self.inner.clone(),
            ttl,
            "consul",
        )))
    }

    async fn register(&self, instance: Instance) -> Result<Registration> {
        let ttl = self.inner.config().ttl;
        match self.inner.config().layout.style() {
            LayoutStyle::Instances => {
                Registration::start(Arc::new(self.clone()), self.inner.clone(), instance, ttl).await
            }
            LayoutStyle::Surging => {
                let layout = Arc::new(SurgingLayout::new(self.inner.clone(), ttl));
                Registration::start(Arc::new(self.clone()), layout, instance, ttl).await
            }
        }
    }

    async fn remove_addresses(&self, addresses: &[Address]) -> Result<usize> {
        traced(
            "consul",
            "remove_addresses",
            async {
                let ids = addresses
                    .iter()
                    .map(instance_id)
                    .collect::<Result<Vec<_>>>()?;
                let layout = &self.inner.config().layout;
                let listing = self.inner.agents.list("", 0).await?;
                let mut ops = Vec::new();
                let mut tombstones = std::collections::BTreeMap::new();
                for pair in &listing.pairs {
                    let Some(instance) = layout.parse(&pair.key).and_then(|k| k.instance_id) else {
                        continue;
                    };
                    if !ids.contains(&instance) {
                        continue;
                    }
                    ops.push(TxnOp::kv("delete", pair.key.clone(), None, None));
                    // The instance's registration must not write it back while its session lives.
                    if let Some(session) = &pair.session {
                        tombstones.insert(layout.tombstone_key(&instance)?, session.clone());
                    }
                }
                let count = ops.len();
                // Markers first, so a heartbeat between two batches never finds an entry gone
                // and no marker.
                let marked: Vec<TxnOp> = tombstones
                    .into_iter()
                    .map(|(key, session)| TxnOp::kv("lock", key, None, Some(session)))
                    .collect();
                let agents = &self.inner.agents;
                let written = match agents.txn("deregister", marked).await {
                    Err(err) if err.kind() == ErrorKind::PermissionDenied => {
                        tracing::warn!(error = %err, "cannot write deregistration markers beside the prefix (grant the token it too); a running instance may write its entries back");
                        Ok(())
                    }
                    other => other,
                };
                let deleted = match written {
                    Ok(()) => agents.txn("deregister", ops).await,
                    Err(err) => Err(err),
                };
                // Shared values (the surging layout's, or Surging's own) are edited in place.
                let shared = match deleted {
                    Ok(()) => remove_from_shared(self.inner.as_ref(), addresses).await,
                    Err(err) => Err(err),
                };
                // Counted even when only part of it went through.
                note_write();
                shared.map(|taken| count + taken)
            },
            |removed| *removed,
        )
        .await
    }

    async fn clear(&self) -> Result<()> {
        traced(
            "consul",
            "clear",
            async {
                let prefix = self.inner.config().layout.prefix().to_owned();
                // Destroy the sessions holding keys under the prefix: running instances see their
                // liveness gone and register again.
                let held = self.inner.agents.list_under(&prefix).await?;
                let mut sessions: Vec<String> =
                    held.into_iter().filter_map(|pair| pair.session).collect();
                sessions.sort();
                sessions.dedup();
                for session in sessions {
                    let _ = self.inner.destroy_session(&session).await;
                }
                let op = TxnOp::kv("delete-tree", prefix, None, None);
                let deleted = match self.inner.agents.txn("clear", vec![op]).await {
                    Ok(()) => clear_beside(self.inner.as_ref()).await,
                    Err(err) => Err(err),
                };
                // Destroyed sessions already took keys with them, even if the delete failed.
                note_write();
                deleted
            },
            |_| 0,
        )
        .await
    }
}
