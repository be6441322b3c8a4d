//! Elections on Consul, as Consul's leader-election guide describes: each campaigner holds a
//! session (`Behavior=release`, without the node health check, so a flapping node does not end
//! it) and tries `acquire` on the election's key; the holder leads, and checks at each renewal
//! that the key is still locked by its session. The fencing
//! token is the key's modify index as the acquisition left it (Consul's Raft index: it rises
//! across leaders even if the key is deleted, where the lock index would start again). The
//! others wait on a blocking query of the key until it is free.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;

use super::agents::{error_from, KvPair};
use super::ConsulStore;
use crate::backoff::Backoff;
use crate::election::{ElectionStore, Leader};
use crate::error::{Error, ErrorKind, Result};
use crate::registration::Liveness;

/// One campaign on Consul: its session, and whether it leads.
pub(crate) struct ConsulCampaign {
    session: String,
    key: String,
    leading: std::sync::atomic::AtomicBool,
}

/// The leader a key names: its value, while a session holds it.
fn leader_of(pair: Option<&KvPair>) -> Result<Option<Leader>> {
    match pair {
        Some(pair) if pair.session.is_some() => Ok(Some(Leader {
            value: String::from_utf8_lossy(&pair.bytes()?).into_owned(),
            token: pair.modify_index,
        })),
        _ => Ok(None),
    }
}

impl ConsulStore {
    /// The election's key.
    fn election_key(&self, name: &str) -> String {
        format!("{}{name}", self.config().layout.beside_prefix("election"))
    }

    /// `PUT /v1/kv/<key>?<verb>=<session>`: whether Consul did it.
    async fn lock_call(&self, verb: &str, key: &str, session: &str, value: &str) -> Result<bool> {
        let action = format!("election {verb}");
        let timeout = self.config().timeout;
        let response = self
            .agents
            .send(&action, timeout, |http, agent| {
                http.put(format!("{agent}/v1/kv/{key}"))
                    .query(&[(verb, session)])
                    .body(value.to_owned())
            })
            .await?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if status != StatusCode::OK {
            return Err(error_from(&action, status, &body));
        }
        Ok(body.trim() == "true")
    }
}

impl ConsulStore {
    /// One try: acquire the key, or wait until it is free; the token once it is taken.
    async fn try_acquire(
        &self,
        name: &str,
        value: &str,
        campaign: &ConsulCampaign,
    ) -> Result<Option<u64>> {
        let key = self.election_key(name);
        let session = campaign.session.as_str();
        if self.lock_call("acquire", &key, session, value).await? {
            let (pair, _) = self.agents.read_key(&key, 0).await?;
            return match pair {
                Some(pair) if pair.session.as_deref() == Some(session) => {
                    campaign.leading.store(true, Ordering::SeqCst);
                    Ok(Some(pair.modify_index))
                }
                // Released under us between the two requests (the session was destroyed).
                _ => Err(Error::new(
                    ErrorKind::Unavailable,
                    format!("election {name}: the lock was lost as it was taken"),
                )),
            };
        }
        // Held by another session: wait until the key changes.
        let (mut pair, mut index) = self.agents.read_key(&key, 0).await?;
        while pair.as_ref().is_some_and(|p| p.session.is_some()) {
            (pair, index) = self.agents.read_key(&key, index.max(1)).await?;
        }
        Ok(None)
    }
}

#[async_trait]
impl ElectionStore for ConsulStore {
    type Lease = ConsulCampaign;

    async fn grant(&self, name: &str, ttl: Duration) -> Result<ConsulCampaign> {
        let session = self
            .new_session(&format!("wayfinder election {name}"), ttl, "release", false)
            .await?;
        Ok(ConsulCampaign {
            session,
            key: self.election_key(name),
            leading: std::sync::atomic::AtomicBool::new(false),
        })
    }

    async fn renew(&self, campaign: &ConsulCampaign) -> Result<Liveness> {
        let renewed = self.renew_session(&campaign.session).await?;
        if renewed == Liveness::Lost || !campaign.leading.load(Ordering::SeqCst) {
            return Ok(renewed);
        }
        // Leading: the key must still be locked by this session (not deleted by hand, not
        // released by a node deregistration).
        let (pair, _) = self.agents.read_key(&campaign.key, 0).await?;
        let held = pair.is_some_and(|p| p.session.as_deref() == Some(campaign.session.as_str()));
        Ok(if held {
            Liveness::Alive
        } else {
            Liveness::Lost
        })
    }

    async fn acquire(&self, name: &str, value: &str, campaign: &ConsulCampaign) -> Result<u64> {
        let mut retry = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            match self.try_acquire(name, value, campaign).await {
                Ok(Some(token)) => return Ok(token),
                Ok(None) => retry.reset(),
                Err(err) if err.is_temporary() => {
                    let delay = retry.next_delay();
                    tracing::debug!(error = %err, retry_in = ?delay, "consul campaign interrupted");
                    tokio::time::sleep(delay).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    async fn release(&self, name: &str, campaign: &ConsulCampaign) -> Result<()> {
        let key = self.election_key(name);
        if let Err(err) = self.lock_call("release", &key, &campaign.session, "").await {
            tracing::debug!(error = %err, "consul release failed; destroying the session does it");
        }
        self.destroy_session(&campaign.session).await
    }

    async fn leader(&self, name: &str) -> Result<Option<Leader>> {
        let (pair, _) = self.agents.read_key(&self.election_key(name), 0).await?;
        leader_of(pair.as_ref())
    }

    async fn next_leader(&self, name: &str, seen: &Option<Leader>) -> Result<Option<Leader>> {
        let key = self.election_key(name);
        let (pair, index) = self.agents.read_key(&key, 0).await?;
        let leader = leader_of(pair.as_ref())?;
        if &leader != seen {
            return Ok(leader);
        }
        let (pair, _) = self.agents.read_key(&key, index.max(1)).await?;
        leader_of(pair.as_ref())
    }
}
