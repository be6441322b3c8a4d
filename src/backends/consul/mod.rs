//! Consul KV backend.
//!
//! Each instance's copy of a route is one key, `<prefix><service-id>/<instance-id>`, acquired by
//! the instance's session (`Behavior=delete`, `LockDelay=0s`): when the session is invalidated
//! (TTL missed, destroyed, agent restarted empty) Consul deletes the keys. Writes go through
//! `/v1/txn` in batches of at most 64 operations; reads are recursive GETs, and the watch (in
//! `feed`) is one recursive blocking query on the prefix. The ACL token is only ever sent in the
//! `X-Consul-Token` header and is redacted from Debug output.

mod feed;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use reqwest::{Client, RequestBuilder, Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::decode::decode_in_halves;
use crate::error::{Error, ErrorKind, Result};
use crate::manager::{Instance, RouteManager, RouteSource, DEFAULT_TTL};
use crate::registration::{Liveness, LivenessStore, Registration};
use crate::route::{
    decode_entry, decode_listed, encode_route, instance_id, Address, EntryKey, Group, KeyLayout,
    RouteEntries, RunDecoder, ServiceRoute,
};
use crate::scope::{self, ScopedReader};
use crate::telemetry::traced;
use crate::watch::{note_write, RouteWatch, ScopedFeeds};

/// Most operations in one `/v1/txn` request (the limit of Consul 1.8).
pub const MAX_TXN_OPS: usize = 64;

/// Consul's shortest session TTL.
pub const MIN_SESSION_TTL: Duration = Duration::from_secs(10);

/// Options of the Consul backend (`consul://host:port[,host:port]?prefix=..&ttl=..&token=..`).
#[derive(Clone)]
pub struct ConsulConfig {
    /// Agent addresses, `http://host:port`; the next one is tried when one fails.
    pub agents: Vec<String>,
    /// Key layout (prefix).
    pub layout: KeyLayout,
    /// Default registration TTL (Consul sessions need at least 10 s).
    pub ttl: Duration,
    /// ACL token, sent only in the `X-Consul-Token` header.
    pub token: Option<String>,
    /// Longest wait of one blocking query.
    pub wait: Duration,
    /// Time allowed for ordinary requests.
    pub timeout: Duration,
}

impl std::fmt::Debug for ConsulConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulConfig")
            .field("agents", &self.agents)
            .field("layout", &self.layout)
            .field("ttl", &self.ttl)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("wait", &self.wait)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ConsulConfig {
    /// Defaults for these agents (`host:port` or full URLs).
    pub fn new(agents: impl IntoIterator<Item = impl Into<String>>) -> Self {
        ConsulConfig {
            agents: agents
                .into_iter()
                .map(|a| {
                    let a = a.into();
                    if a.contains("://") {
                        a
                    } else {
                        format!("http://{a}")
                    }
                })
                .collect(),
            layout: KeyLayout::default(),
            ttl: DEFAULT_TTL,
            token: None,
            wait: Duration::from_secs(60),
            timeout: Duration::from_secs(5),
        }
    }
}

/// A registry kept in Consul KV.
#[derive(Debug, Clone)]
pub struct ConsulRouteManager {
    inner: Arc<ConsulStore>,
}

/// HTTP access to the agents, with fail-over and the token header.
#[derive(Clone)]
pub(crate) struct Agents {
    http: Client,
    config: ConsulConfig,
}

impl std::fmt::Debug for Agents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agents")
            .field("config", &self.config)
            .finish()
    }
}

/// One key as the KV API returns it.
#[derive(Debug, Deserialize)]
pub(crate) struct KvPair {
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "Value", default)]
    pub value: Option<String>,
    #[serde(rename = "ModifyIndex", default)]
    pub modify_index: u64,
    /// The session holding the key, if any.
    #[serde(rename = "Session", default)]
    pub session: Option<String>,
}

impl KvPair {
    /// The value's bytes (empty for a key without a value).
    pub(crate) fn bytes(&self) -> Result<Vec<u8>> {
        match &self.value {
            None => Ok(Vec::new()),
            Some(encoded) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| {
                    Error::malformed(format!("key {}: value is not base64: {e}", self.key))
                }),
        }
    }
}

/// The result of a recursive read.
pub(crate) struct Listing {
    pub pairs: Vec<KvPair>,
    pub index: u64,
    /// ACLs hid some keys: the listing is partial and absences mean nothing.
    pub filtered: bool,
}

/// The key-value pairs of a successful KV read.
async fn pairs_of(action: &str, response: Response) -> Result<Vec<KvPair>> {
    response.json::<Vec<KvPair>>().await.map_err(|e| {
        Error::new(
            ErrorKind::Unavailable,
            format!("consul {action}: bad answer: {e}"),
        )
    })
}

fn error_from(action: &str, status: StatusCode, body: &str) -> Error {
    let kind = match status {
        StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => ErrorKind::PermissionDenied,
        StatusCode::BAD_REQUEST => ErrorKind::InvalidInput,
        StatusCode::NOT_FOUND => ErrorKind::NotFound,
        _ => ErrorKind::Unavailable,
    };
    Error::new(
        kind,
        format!("consul {action}: HTTP {status}: {}", body.trim()),
    )
}

impl Agents {
    fn new(config: ConsulConfig) -> Result<Self> {
        let http = Client::builder()
            .connect_timeout(config.timeout)
            // Idle connections (and their background tasks) go soon; busy ones are reused.
            .pool_idle_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| Error::new(ErrorKind::Unavailable, format!("HTTP client: {e}")))?;
        Ok(Agents { http, config })
    }

    /// Sends the request built by `build` to each agent in turn until one answers.
    async fn send(
        &self,
        action: &str,
        timeout: Duration,
        build: impl Fn(&Client, &str) -> RequestBuilder,
    ) -> Result<Response> {
        let mut last = None;
        for agent in &self.config.agents {
            let mut request = build(&self.http, agent).timeout(timeout);
            if let Some(token) = &self.config.token {
                request = request.header("X-Consul-Token", token);
            }
            match request.send().await {
                Ok(response) => return Ok(response),
                Err(err) => {
                    // reqwest errors can carry the URL, never the header: safe to log.
                    tracing::debug!(%agent, error = %err, "consul agent unreachable");
                    last = Some(Error::new(
                        ErrorKind::Unavailable,
                        format!("consul {action}: {agent}: {err}"),
                    ));
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::invalid_input("consul URL names no agent")))
    }

    /// Reads the keys of the service ids starting with `scope` (every key under the prefix when
    /// it is empty) recursively; with `index > 0` it is a blocking query.
    pub(crate) async fn list(&self, scope: &str, index: u64) -> Result<Listing> {
        let prefix = format!("{}{scope}", self.config.layout.prefix());
        let wait = self.config.wait;
        let timeout = if index > 0 {
            // Consul adds up to wait/16 of jitter to a blocking query.
            wait * 17 / 16 + self.config.timeout
        } else {
            self.config.timeout
        };
        let response = self
            .send("list", timeout, |http, agent| {
                let request = http
                    .get(format!("{agent}/v1/kv/{prefix}"))
                    .query(&[("recurse", "true")]);
                if index > 0 {
                    request.query(&[
                        ("index", index.to_string()),
                        ("wait", format!("{}s", wait.as_secs().max(1))),
                    ])
                } else {
                    request
                }
            })
            .await?;
        let status = response.status();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let index = header("X-Consul-Index")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let filtered = header("X-Consul-Results-Filtered-By-ACLs").is_some_and(|v| v == "true");
        match status {
            StatusCode::NOT_FOUND => Ok(Listing {
                pairs: Vec::new(),
                index,
                filtered,
            }),
            s if s.is_success() => {
                let pairs = pairs_of("list", response).await?;
                Ok(Listing {
                    pairs,
                    index,
                    filtered,
                })
            }
            s => Err(error_from(
                "list",
                s,
                &response.text().await.unwrap_or_default(),
            )),
        }
    }

    /// Runs KV operations through `/v1/txn`, at most [`MAX_TXN_OPS`] per request.
    async fn txn(&self, action: &str, ops: Vec<TxnOp>) -> Result<()> {
        for batch in ops.chunks(MAX_TXN_OPS) {
            let response = self
                .send(action, self.config.timeout, |http, agent| {
                    http.put(format!("{agent}/v1/txn")).json(batch)
                })
                .await?;
            let status = response.status();
            if !status.is_success() {
                return Err(error_from(
                    action,
                    status,
                    &response.text().await.unwrap_or_default(),
                ));
            }
        }
        Ok(())
    }

    /// Runs check operations through `/v1/txn`; `false` when one of them does not hold (409).
    async fn txn_holds(&self, action: &str, ops: Vec<TxnOp>) -> Result<bool> {
        for batch in ops.chunks(MAX_TXN_OPS) {
            let response = self
                .send(action, self.config.timeout, |http, agent| {
                    http.put(format!("{agent}/v1/txn")).json(batch)
                })
                .await?;
            match response.status() {
                s if s.is_success() => {}
                StatusCode::CONFLICT => return Ok(false),
                s => {
                    return Err(error_from(
                        action,
                        s,
                        &response.text().await.unwrap_or_default(),
                    ))
                }
            }
        }
        Ok(true)
    }

    async fn put_json(
        &self,
        action: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Response> {
        let response = self
            .send(action, self.config.timeout, |http, agent| {
                let request = http.put(format!("{agent}{path}"));
                match body {
                    Some(body) => request.json(body),
                    None => request,
                }
            })
            .await?;
        Ok(response)
    }
}

#[derive(Clone, Serialize)]
struct TxnOp {
    #[serde(rename = "KV")]
    kv: TxnKv,
}

impl TxnOp {
    fn kv(verb: &'static str, key: String, value: Option<String>, session: Option<String>) -> Self {
        TxnOp {
            kv: TxnKv {
                verb,
                key,
                value,
                session,
            },
        }
    }
}

#[derive(Clone, Serialize)]
struct TxnKv {
    #[serde(rename = "Verb")]
    verb: &'static str,
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "Value", skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(rename = "Session", skip_serializing_if = "Option::is_none")]
    session: Option<String>,
}

struct ConsulStore {
    agents: Agents,
    feeds: ScopedFeeds,
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

impl ConsulStore {
    fn config(&self) -> &ConsulConfig {
        &self.agents.config
    }

    /// Operations that write every entry of the instance, locked by `session`.
    fn lock_ops(&self, instance: &Instance, id: &str, session: &str) -> Result<Vec<TxnOp>> {
        let mut ops = Vec::with_capacity(instance.routes.len());
        for descriptor in &instance.routes {
            let key = self.config().layout.instance_key(&descriptor.id, id)?;
            let value = encode_route(&instance.route(descriptor))?;
            ops.push(TxnOp::kv(
                "lock",
                key,
                Some(base64::engine::general_purpose::STANDARD.encode(value)),
                Some(session.to_owned()),
            ));
        }
        Ok(ops)
    }
}

#[async_trait]
impl LivenessStore for ConsulStore {
    type Lease = String;
    const BACKEND: &'static str = "consul";

    async fn put_instance(&self, instance: &Instance, ttl: Duration) -> Result<String> {
        let id = instance.id()?;
        let ttl = ttl.max(MIN_SESSION_TTL);
        let body = serde_json::json!({
            "Name": format!("wayfinder {id}"),
            "TTL": format!("{}s", ttl.as_secs()),
            "Behavior": "delete",
            "LockDelay": "0s",
        });
        let response = self
            .agents
            .put_json("session create", "/v1/session/create", Some(&body))
            .await?;
        let status = response.status();
        if !status.is_success() {
            return Err(error_from(
                "session create",
                status,
                &response.text().await.unwrap_or_default(),
            ));
        }
        #[derive(Deserialize)]
        struct Created {
            #[serde(rename = "ID")]
            id: String,
        }
        let session = response
            .json::<Created>()
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Unavailable,
                    format!("consul session create: {e}"),
                )
            })?
            .id;
        let ops = self.lock_ops(instance, &id, &session)?;
        if let Err(err) = self.agents.txn("register", ops).await {
            let _ = self
                .agents
                .put_json(
                    "session destroy",
                    &format!("/v1/session/destroy/{session}"),
                    None,
                )
                .await;
            return Err(err);
        }
        Ok(session)
    }

    async fn keep_alive(&self, _instance: &Instance, session: &String) -> Result<Liveness> {
        let response = self
            .agents
            .put_json(
                "session renew",
                &format!("/v1/session/renew/{session}"),
                None,
            )
            .await?;
        match response.status() {
            s if s.is_success() => Ok(Liveness::Alive),
            StatusCode::NOT_FOUND => Ok(Liveness::Lost),
            s => Err(error_from(
                "session renew",
                s,
                &response.text().await.unwrap_or_default(),
            )),
        }
    }

    async fn heal(&self, instance: &Instance, session: &String) -> Result<usize> {
        let id = instance.id()?;
        let layout = &self.config().layout;
        let keys = instance
            .routes
            .iter()
            .map(|d| layout.instance_key(&d.id, &id))
            .collect::<Result<Vec<_>>>()?;
        let checks: Vec<TxnOp> = keys
            .iter()
            .map(|key| TxnOp::kv("check-session", key.clone(), None, Some(session.clone())))
            .collect();
        if self.agents.txn_holds("heal check", checks).await? {
            return Ok(0);
        }
        // Something is missing: unless a deregistration removed the instance, write it all back
        // (taking a lock the session already holds changes nothing). Each batch writes only
        // while no deregistration marker exists, so a deregistration, earlier or concurrent, wins.
        let tombstone = layout.tombstone_key(&id)?;
        let mut written = 0;
        for batch in self
            .lock_ops(instance, &id, session)?
            .chunks(MAX_TXN_OPS - 1)
        {
            let size = batch.len();
            let mut ops = vec![TxnOp::kv("check-not-exists", tombstone.clone(), None, None)];
            ops.extend(batch.iter().cloned());
            if !self.agents.txn_holds("heal", ops).await? {
                break;
            }
            written += size;
        }
        Ok(written)
    }

    async fn remove_instance(&self, _instance: &Instance, session: String) -> Result<()> {
        // Destroying the session deletes its keys (Behavior=delete).
        let response = self
            .agents
            .put_json(
                "session destroy",
                &format!("/v1/session/destroy/{session}"),
                None,
            )
            .await?;
        match response.status() {
            s if s.is_success() => Ok(()),
            s => Err(error_from(
                "session destroy",
                s,
                &response.text().await.unwrap_or_default(),
            )),
        }
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
    async fn register(&self, instance: Instance) -> Result<Registration> {
        Registration::start(self.inner.clone(), instance, self.inner.config().ttl).await
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
                // Counted even when only part of it went through.
                note_write();
                deleted.map(|()| count)
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
                let response = self
                    .inner
                    .agents
                    .send("sessions", self.inner.config().timeout, |http, agent| {
                        http.get(format!("{agent}/v1/kv/{prefix}"))
                            .query(&[("recurse", "true")])
                    })
                    .await?;
                #[derive(Deserialize)]
                struct Held {
                    #[serde(rename = "Session", default)]
                    session: Option<String>,
                }
                if response.status().is_success() {
                    let held: Vec<Held> = response.json().await.unwrap_or_default();
                    let mut sessions: Vec<String> =
                        held.into_iter().filter_map(|h| h.session).collect();
                    sessions.sort();
                    sessions.dedup();
                    for session in sessions {
                        let _ = self
                            .inner
                            .agents
                            .put_json(
                                "session destroy",
                                &format!("/v1/session/destroy/{session}"),
                                None,
                            )
                            .await;
                    }
                }
                let op = TxnOp::kv("delete-tree", prefix, None, None);
                let deleted = self.inner.agents.txn("clear", vec![op]).await;
                // Destroyed sessions already took keys with them, even if the delete failed.
                note_write();
                deleted
            },
            |_| 0,
        )
        .await
    }
}
