//! etcd v3 backend.
//!
//! Each instance's copy of a route is one key, `<prefix><service-id>/<instance-id>`, attached to
//! the instance's lease: a crashed instance's keys vanish when its lease expires. Listings read
//! the prefix in pages pinned to one revision; the watch (in `feed`) resumes from the last seen
//! revision and re-lists after a compaction, so deletions made meanwhile are not missed. Every
//! request goes through `Members` (in `members`), which sends it to a member that answers.

mod config;
mod election;
mod errors;
mod feed;
mod lease;
mod liveness;
mod members;
mod shared;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, DeleteOptions, GetOptions, KeyValue, PutOptions, Txn, TxnOp, TxnResponse,
};

pub use config::{EtcdConfig, EtcdTls};
pub(crate) use errors::{etcd_error, etcd_error_at};
use members::Members;

use crate::backends::shared::{clear_beside, remove_from_shared, SurgingLayout};
use crate::decode::decode_in_halves;
use crate::election::RegistryElection;
use crate::error::{Error, ErrorKind, Result};
use crate::manager::{Instance, RouteManager, RouteSource};
use crate::registration::Registration;
use crate::route::{
    decode_listed, instance_id, Address, Group, KeyLayout, LayoutStyle, RouteEntries, RunDecoder,
    ServiceRoute, MAX_VALUE_BYTES,
};
use crate::scope::{self, ScopedReader};
use crate::telemetry::traced;
use crate::watch::{note_write, RouteWatch, ScopedFeeds};

/// Most operations in one etcd transaction (etcd's default `--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;

/// Keys read per page of a listing.
pub const PAGE_SIZE: i64 = 2000;

/// The largest response accepted from etcd: a page of the largest values (etcd-client's own
/// limit, 4 MiB, is two thousand values of 2 KiB).
pub(crate) const MAX_MESSAGE_BYTES: usize = PAGE_SIZE as usize * MAX_VALUE_BYTES + (1 << 20);

/// A registry kept in etcd.
#[derive(Debug, Clone)]
pub struct EtcdRouteManager {
    inner: Arc<EtcdStore>,
}

struct EtcdStore {
    config: EtcdConfig,
    /// Requests other than watches.
    members: Arc<Members>,
    /// Watches (clients that require a leader).
    watch_members: Arc<Members>,
    feeds: ScopedFeeds,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// gRPC status codes used here (etcd-client does not re-export tonic's `Code`).
const NOT_FOUND: i32 = 5;
const INVALID_ARGUMENT: i32 = 3;
const PERMISSION_DENIED: i32 = 7;
const OUT_OF_RANGE: i32 = 11;
const UNAUTHENTICATED: i32 = 16;

fn status_code(err: &etcd_client::Error) -> Option<i32> {
    match err {
        etcd_client::Error::GRpcStatus(status) => Some(status.code() as i32),
        _ => None,
    }
}

/// Whether the error says the requested revision was compacted away.
pub(crate) fn is_compacted(err: &etcd_client::Error) -> bool {
    status_code(err) == Some(OUT_OF_RANGE) || err.to_string().contains("compacted")
}

/// Whether a keep-alive error says the lease no longer exists.
fn is_lease_gone(err: &etcd_client::Error) -> bool {
    match err {
        etcd_client::Error::LeaseKeepAliveError(message) => message.contains("not found"),
        other => status_code(other) == Some(NOT_FOUND),
    }
}

/// The key just past every key that starts with `prefix` (etcd's prefix range end).
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Reads every key under `prefix` in pages pinned to one revision, handing each page to
/// `per_page` as it arrives; returns what it made of the pages, in order, and the revision. A
/// compaction in the middle drops what was made and restarts at the newest revision.
async fn read_pages<T>(
    members: &Members,
    prefix: &str,
    mut per_page: impl FnMut(Vec<KeyValue>) -> T,
) -> Result<(Vec<T>, i64)> {
    'restart: loop {
        let end = prefix_end(prefix);
        let mut from = prefix.as_bytes().to_vec();
        let mut revision = 0;
        let mut made = Vec::new();
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(PAGE_SIZE);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let pinned = revision > 0;
            let read = members.call("range read", |client| {
                let (from, options) = (from.clone(), options.clone());
                async move {
                    let mut kv = client
                        .kv_client()
                        .max_decoding_message_size(MAX_MESSAGE_BYTES);
                    match kv.get(from, Some(options)).await {
                        Ok(response) => Ok(Some(response)),
                        Err(err) if pinned && is_compacted(&err) => Ok(None),
                        Err(err) => Err(err),
                    }
                }
            });
            let Some(mut response) = read.await? else {
                continue 'restart;
            };
            if revision == 0 {
                revision = response.header().map_or(0, |h| h.revision());
            }
            let more = response.more();
            let page = response.take_kvs();
            if let (true, Some(last)) = (more, page.last()) {
                from = last.key().to_vec();
                from.push(0);
            }
            made.push(per_page(page));
            if !more {
                return Ok((made, revision));
            }
        }
    }
}

/// Every key under `prefix`, pinned to one revision, and that revision.
pub(crate) async fn read_prefix(members: &Members, prefix: &str) -> Result<(Vec<KeyValue>, i64)> {
    let (pages, revision) = read_pages(members, prefix, |page| page).await?;
    Ok((pages.into_iter().flatten().collect(), revision))
}

/// Decodes keys into per-instance entries merged by service id; malformed ones are skipped with
/// a warning.
fn decode_page(layout: &KeyLayout, kvs: Vec<KeyValue>) -> Vec<Group> {
    let mut decoder = RunDecoder::default();
    let decoded = kvs.iter().filter_map(|kv| {
        let Ok(key) = kv.key_str() else {
            tracing::warn!("skipping an etcd key that is not UTF-8");
            return None;
        };
        match decode_listed(&mut decoder, layout, key, kv.value()) {
            Ok((entry_key, decoded)) => Some((entry_key, kv.mod_revision() as u64, decoded)),
            Err(err) => {
                tracing::warn!(%key, error = %err, "skipping malformed registry entry");
                None
            }
        }
    });
    Group::listing(decoded)
}

/// Lists and decodes every entry of the service ids starting with `scope` (all of them when it is
/// empty), pinned to one revision. Each page is decoded and merged in two halves on blocking
/// threads while the next one is fetched, so decoding overlaps the reads, the last page's
/// decoding takes half as long, and what waits for the end is merged routes.
pub(crate) async fn load_entries(
    members: &Members,
    layout: &KeyLayout,
    scope: &str,
) -> Result<(RouteEntries, i64)> {
    let range = format!("{}{scope}", layout.prefix());
    let (decoding, revision) = read_pages(members, &range, |page| {
        let layout = layout.clone();
        decode_in_halves(page, move |half| decode_page(&layout, half))
    })
    .await?;
    let mut decoded = Vec::with_capacity(decoding.len());
    for page in decoding {
        decoded.push(page.join("etcd page").await?);
    }
    let entries = RouteEntries::from_groups(decoded.into_iter().flatten());
    Ok((entries, revision))
}

impl EtcdRouteManager {
    /// Prepares the connection to etcd. Nothing is sent yet: each member is connected (and,
    /// with credentials, authenticated) when a request first needs it, so this succeeds while
    /// members are down.
    pub async fn connect(config: EtcdConfig) -> Result<Self> {
        if config.endpoints.is_empty() {
            return Err(Error::invalid_input("etcd URL names no endpoint"));
        }
        let members = Arc::new(config.members(false)?);
        let watch_members = Arc::new(config.members(true)?);
        Ok(EtcdRouteManager {
            inner: Arc::new(EtcdStore {
                config,
                members,
                watch_members,
                feeds: ScopedFeeds::default(),
            }),
        })
    }

    /// A client of the etcd member that answered last (for tools and tests), connected to that
    /// member alone; another member's if that one cannot be reached.
    pub async fn client(&self) -> Result<Client> {
        self.inner.members.preferred_client().await
    }
}

/// Runs one transaction on a member that answers.
async fn run_txn(members: &Members, action: &str, txn: Txn) -> Result<TxnResponse> {
    members
        .call(action, |mut client| {
            let txn = txn.clone();
            async move { client.txn(txn).await }
        })
        .await
}

/// Runs operations in transactions of at most [`MAX_TXN_OPS`].
async fn run_batched(members: &Members, ops: Vec<TxnOp>, action: &str) -> Result<()> {
    let mut ops = ops.into_iter().peekable();
    while ops.peek().is_some() {
        let txn = Txn::new().and_then(ops.by_ref().take(MAX_TXN_OPS).collect::<Vec<_>>());
        run_txn(members, action, txn).await?;
    }
    Ok(())
}

#[async_trait]
impl RouteSource for EtcdRouteManager {
    fn backend(&self) -> &'static str {
        "etcd"
    }

    fn default_ttl(&self) -> Duration {
        self.inner.config.ttl
    }

    fn registry_id(&self) -> String {
        // Members of one cluster share the key space: the prefix names the namespace.
        format!("etcd {}", self.inner.config.layout.prefix())
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

impl ScopedReader for EtcdRouteManager {
    async fn list_scope(&self, scope: &str) -> Result<Vec<ServiceRoute>> {
        let load = load_entries(&self.inner.members, &self.inner.config.layout, scope);
        let listing = async { Ok(load.await?.0.into_merged()) };
        traced("etcd", "list", listing, Vec::len).await
    }

    /// Every watch of one range shares the one reader that follows it.
    async fn watch_scope(&self, scope: &str) -> Result<RouteWatch> {
        let config = self.inner.config.clone();
        let members = self.inner.members.clone();
        let watch_members = self.inner.watch_members.clone();
        let scope = scope.to_owned();
        self.inner
            .feeds
            .get(&scope)
            .watch(|hub| feed::start(config, members, watch_members, scope, hub))
            .await
    }
}

#[async_trait]
impl RouteManager for EtcdRouteManager {
    fn election(&self) -> Result<Arc<dyn crate::election::Election>> {
        let ttl = self.inner.config.ttl;
        Ok(Arc::new(RegistryElection::new(
            self.inner.clone(),
            ttl,
            "etcd",
        )))
    }

    async fn register(&self, instance: Instance) -> Result<Registration> {
        let ttl = self.inner.config.ttl;
        match self.inner.config.layout.style() {
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
            "etcd",
            "remove_addresses",
            async {
                let ids = addresses
                    .iter()
                    .map(instance_id)
                    .collect::<Result<Vec<_>>>()?;
                let layout = &self.inner.config.layout;
                let (raw, _) = read_prefix(&self.inner.members, layout.prefix()).await?;
                let mut doomed = Vec::new();
                let mut tombstones = std::collections::BTreeMap::new();
                for kv in &raw {
                    let instance = kv
                        .key_str()
                        .ok()
                        .and_then(|key| layout.parse(key))
                        .and_then(|k| k.instance_id);
                    let Some(instance) = instance.filter(|i| ids.contains(i)) else {
                        continue;
                    };
                    doomed.push(TxnOp::delete(kv.key(), None));
                    // The instance's registration must not write it back while its lease lives.
                    if kv.lease() != 0 {
                        tombstones.insert(layout.tombstone_key(&instance)?, kv.lease());
                    }
                }
                let count = doomed.len();
                // Markers first, so a heartbeat between two batches never finds an entry gone
                // and no marker.
                let marked: Vec<TxnOp> = tombstones
                    .into_iter()
                    .map(|(key, lease)| {
                        TxnOp::put(key, "", Some(PutOptions::new().with_lease(lease)))
                    })
                    .collect();
                let members = &self.inner.members;
                let written = match run_batched(members, marked, "deregister").await {
                    Err(err) if err.kind() == ErrorKind::PermissionDenied => {
                        tracing::warn!(error = %err, "cannot write deregistration markers beside the prefix (grant the role it too); a running instance may write its entries back");
                        Ok(())
                    }
                    other => other,
                };
                let deleted = match written {
                    Ok(()) => run_batched(members, doomed, "deregister").await,
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
            "etcd",
            "clear",
            async {
                let prefix = self.inner.config.layout.prefix();
                let members = &self.inner.members;
                let (raw, _) = read_prefix(members, prefix).await?;
                let mut leases: Vec<i64> = raw
                    .iter()
                    .map(|kv| kv.lease())
                    .filter(|l| *l != 0)
                    .collect();
                leases.sort_unstable();
                leases.dedup();
                // Revoking the leases tells running instances their liveness is gone.
                for lease in leases {
                    if let Err(err) = lease::revoke_lease(members, lease).await {
                        tracing::debug!(lease, error = %err, "lease revoke failed");
                    }
                }
                let deleted = members
                    .call("delete prefix", |mut client| async move {
                        client
                            .delete(prefix, Some(DeleteOptions::new().with_prefix()))
                            .await
                    })
                    .await;
                let deleted = match deleted {
                    Ok(_) => clear_beside(self.inner.as_ref()).await,
                    Err(err) => Err(err),
                };
                // Revoked leases already took keys with them, even if the delete failed.
                note_write();
                deleted
            },
            |_| 0,
        )
        .await
    }
}
