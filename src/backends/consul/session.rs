//! Sessions: one per registration, TTL-bound, `Behavior=delete` and `LockDelay=0s`, renewed and
//! destroyed through the agents. Both layouts lock their liveness keys with one.

use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;

use super::agents::error_from;
use super::{ConsulStore, MIN_SESSION_TTL};
use crate::error::{Error, ErrorKind, Result};
use crate::registration::Liveness;

impl ConsulStore {
    /// A fresh session named after the instance `id`, lapsing `ttl` (at least Consul's 10 s)
    /// after its last renewal.
    pub(super) async fn create_session(&self, id: &str, ttl: Duration) -> Result<String> {
        self.new_session(&format!("wayfinder {id}"), ttl, "delete", true)
            .await
    }

    /// A fresh session called `name`, lapsing `ttl` (at least Consul's 10 s) after its last
    /// renewal; when it lapses, the keys it locks are deleted or released (`behavior`). No lock
    /// delay. With `node_health`, the agent's node health check (`serfHealth`) also ends it at
    /// once when the node fails; without, only the TTL (or a destroy) does, so its holder always
    /// knows first.
    pub(super) async fn new_session(
        &self,
        name: &str,
        ttl: Duration,
        behavior: &str,
        node_health: bool,
    ) -> Result<String> {
        let ttl = ttl.max(MIN_SESSION_TTL);
        let mut body = serde_json::json!({
            "Name": name,
            "TTL": format!("{}s", ttl.as_secs_f64().ceil() as u64),
            "Behavior": behavior,
            "LockDelay": "0s",
        });
        if !node_health {
            body["Checks"] = serde_json::json!([]);
        }
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
        let created = response.json::<Created>().await.map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                format!("consul session create: {e}"),
            )
        })?;
        Ok(created.id)
    }

    /// Renews a session; `Lost` when Consul no longer knows it.
    pub(super) async fn renew_session(&self, session: &str) -> Result<Liveness> {
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

    /// Destroys a session; the keys it locks go with it (`Behavior=delete`).
    pub(super) async fn destroy_session(&self, session: &str) -> Result<()> {
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
