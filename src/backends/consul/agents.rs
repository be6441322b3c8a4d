//! HTTP access to the agents: fail-over from one agent to the next, the ACL token header,
//! recursive reads and `/v1/txn` batches.

use std::time::Duration;

use base64::Engine;
use reqwest::{Client, RequestBuilder, Response, StatusCode};
use serde::{Deserialize, Serialize};

use super::{ConsulConfig, MAX_TXN_OPS};
use crate::error::{Error, ErrorKind, Result};

/// HTTP access to the agents, with fail-over and the token header.
#[derive(Clone)]
pub(crate) struct Agents {
    http: Client,
    pub(super) config: ConsulConfig,
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

pub(super) fn error_from(action: &str, status: StatusCode, body: &str) -> Error {
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
    pub(super) fn new(config: ConsulConfig) -> Result<Self> {
        let http = Client::builder()
            .connect_timeout(config.timeout)
            // Idle connections (and their background tasks) go soon; busy ones are reused.
            .pool_idle_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| Error::new(ErrorKind::Unavailable, format!("HTTP client: {e}")))?;
        Ok(Agents { http, config })
    }

    /// Sends the request built by `build` to each agent in turn until one answers.
    pub(super) async fn send(
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
        self.read("list", &prefix, true, index).await
    }

    /// Reads one key: its pair (none when it does not exist) and the index to block on next;
    /// with `index > 0` it is a blocking query.
    pub(super) async fn read_key(&self, key: &str, index: u64) -> Result<(Option<KvPair>, u64)> {
        let listing = self.read("read", key, false, index).await?;
        Ok((listing.pairs.into_iter().next(), listing.index))
    }

    /// Reads `path` (recursively, or the one key), blocking while `index > 0`.
    async fn read(&self, action: &str, path: &str, recurse: bool, index: u64) -> Result<Listing> {
        let wait = self.config.wait;
        let timeout = if index > 0 {
            // Consul adds up to wait/16 of jitter to a blocking query.
            wait * 17 / 16 + self.config.timeout
        } else {
            self.config.timeout
        };
        let response = self
            .send(action, timeout, |http, agent| {
                let request = http.get(format!("{agent}/v1/kv/{path}"));
                let request = if recurse {
                    request.query(&[("recurse", "true")])
                } else {
                    request
                };
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
                let pairs = pairs_of(action, response).await?;
                Ok(Listing {
                    pairs,
                    index,
                    filtered,
                })
            }
            s => Err(error_from(
                action,
                s,
                &response.text().await.unwrap_or_default(),
            )),
        }
    }

    /// Runs KV operations through `/v1/txn`, at most [`MAX_TXN_OPS`] per request.
    pub(super) async fn txn(&self, action: &str, ops: Vec<TxnOp>) -> Result<()> {
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

    /// Runs one `/v1/txn` request (at most [`MAX_TXN_OPS`] operations) and returns the keys it
    /// read; `None` when one of its checks did not hold (409), and then nothing was written.
    pub(super) async fn txn_read(
        &self,
        action: &str,
        ops: &[TxnOp],
    ) -> Result<Option<Vec<KvPair>>> {
        #[derive(Deserialize)]
        struct Answer {
            #[serde(rename = "Results", default)]
            results: Option<Vec<Result_>>,
        }
        #[derive(Deserialize)]
        struct Result_ {
            #[serde(rename = "KV", default)]
            kv: Option<KvPair>,
        }
        let response = self
            .send(action, self.config.timeout, |http, agent| {
                http.put(format!("{agent}/v1/txn")).json(ops)
            })
            .await?;
        match response.status() {
            s if s.is_success() => {
                let bad = |e: String| {
                    Error::new(
                        ErrorKind::Unavailable,
                        format!("consul {action}: bad answer: {e}"),
                    )
                };
                let body = response.bytes().await.map_err(|e| bad(e.to_string()))?;
                let answer: Answer = serde_json::from_slice(&body)
                    .map_err(|e| bad(format!("{e}: {}", String::from_utf8_lossy(&body))))?;
                Ok(Some(
                    answer
                        .results
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|r| r.kv)
                        .collect(),
                ))
            }
            StatusCode::CONFLICT => {
                // A rolled-back transaction lists why; an ACL denial is not a conflict.
                let body = response.text().await.unwrap_or_default();
                if body.to_ascii_lowercase().contains("permission denied") {
                    return Err(Error::new(
                        ErrorKind::PermissionDenied,
                        format!("consul {action}: {}", body.trim()),
                    ));
                }
                Ok(None)
            }
            s => Err(error_from(
                action,
                s,
                &response.text().await.unwrap_or_default(),
            )),
        }
    }

    /// Every key under `prefix`, read now (a missing prefix has none).
    pub(super) async fn list_under(&self, prefix: &str) -> Result<Vec<KvPair>> {
        let response = self
            .send("list", self.config.timeout, |http, agent| {
                http.get(format!("{agent}/v1/kv/{prefix}"))
                    .query(&[("recurse", "true")])
            })
            .await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(Vec::new()),
            s if s.is_success() => pairs_of("list", response).await,
            s => Err(error_from(
                "list",
                s,
                &response.text().await.unwrap_or_default(),
            )),
        }
    }

    /// Runs check operations through `/v1/txn`; `false` when one of them does not hold (409).
    pub(super) async fn txn_holds(&self, action: &str, ops: Vec<TxnOp>) -> Result<bool> {
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

    pub(super) async fn put_json(
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

/// One operation of a `/v1/txn` request.
#[derive(Clone, Serialize)]
pub(super) struct TxnOp {
    #[serde(rename = "KV")]
    kv: TxnKv,
}

impl TxnOp {
    /// A KV operation: `verb` on `key`, with an already base64-encoded value and a session.
    pub(super) fn kv(
        verb: &'static str,
        key: String,
        value: Option<String>,
        session: Option<String>,
    ) -> Self {
        TxnOp {
            kv: TxnKv {
                verb,
                key,
                value,
                session,
                index: None,
            },
        }
    }

    /// The operation checking against a ModifyIndex (`cas`, `delete-cas`, `check-index`).
    pub(super) fn at_index(mut self, index: u64) -> Self {
        self.kv.index = Some(index);
        self
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
    #[serde(rename = "Index", skip_serializing_if = "Option::is_none")]
    index: Option<u64>,
}
