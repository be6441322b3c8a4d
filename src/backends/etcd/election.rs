//! Elections on etcd, through etcd's own election service (`v3election`, what etcd's
//! `concurrency` package builds on): each campaigner's key `<election>/<lease>` is bound to its
//! lease, the oldest key leads, and the fencing token is its create revision.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{GetOptions, LeaderKey, ResignOptions, SortOrder, SortTarget, WatchOptions};

use super::lease::EtcdLease;
use super::members::is_member_failure;
use super::{etcd_error, EtcdStore};
use crate::election::{ElectionStore, Leader};
use crate::error::Result;
use crate::registration::Liveness;

/// How long an observer's watch waits for a change before reading the leader again.
const OBSERVE_WAIT: Duration = Duration::from_secs(10);

/// Pause before campaigning again after a member failed mid-campaign.
const CAMPAIGN_RETRY: Duration = Duration::from_millis(200);

/// One campaign on etcd: its lease, and its leader key once elected.
pub(crate) struct EtcdCampaign {
    lease: EtcdLease,
    leader: Mutex<Option<LeaderKey>>,
}

impl EtcdStore {
    /// The election's name in etcd: its candidates' keys are under it plus `/`.
    fn election_key(&self, name: &str) -> String {
        format!("{}{name}", self.config.layout.beside_prefix("election"))
    }

    /// The leader of `name` (the oldest candidate key) and the revision it was read at.
    async fn read_leader(&self, name: &str) -> Result<(Option<Leader>, i64)> {
        let prefix = format!("{}/", self.election_key(name));
        let answer = self
            .members
            .call("election leader", |mut client| {
                let prefix = prefix.clone();
                async move {
                    let options = GetOptions::new()
                        .with_prefix()
                        .with_sort(SortTarget::Create, SortOrder::Ascend)
                        .with_limit(1);
                    client.get(prefix, Some(options)).await
                }
            })
            .await?;
        let revision = answer.header().map_or(0, |h| h.revision());
        let leader = answer.kvs().first().map(|kv| Leader {
            value: String::from_utf8_lossy(kv.value()).into_owned(),
            token: kv.create_revision() as u64,
        });
        Ok((leader, revision))
    }
}

#[async_trait]
impl ElectionStore for EtcdStore {
    type Lease = EtcdCampaign;

    async fn grant(&self, _name: &str, ttl: Duration) -> Result<EtcdCampaign> {
        Ok(EtcdCampaign {
            lease: EtcdStore::grant(self, ttl).await?,
            leader: Mutex::new(None),
        })
    }

    async fn renew(&self, campaign: &EtcdCampaign) -> Result<Liveness> {
        EtcdStore::renew(self, &campaign.lease).await
    }

    async fn acquire(&self, name: &str, value: &str, campaign: &EtcdCampaign) -> Result<u64> {
        let key = self.election_key(name);
        loop {
            // Campaigning blocks until elected: no request timeout, only the lease's.
            let client = self.members.preferred_client().await?;
            let attempt = client
                .election_client()
                .campaign(key.clone(), value, campaign.lease.id)
                .await;
            match attempt {
                Ok(mut answer) => {
                    let Some(leader) = answer.take_leader() else {
                        continue;
                    };
                    let token = leader.rev() as u64;
                    *campaign.leader.lock().unwrap_or_else(|p| p.into_inner()) = Some(leader);
                    return Ok(token);
                }
                // The same lease campaigns again: etcd keeps its key and its place.
                Err(err) if is_member_failure(&err) => {
                    tracing::debug!(error = %err, "etcd campaign interrupted; campaigning again");
                    tokio::time::sleep(CAMPAIGN_RETRY).await;
                }
                Err(err) => return Err(etcd_error("campaign", err)),
            }
        }
    }

    async fn release(&self, _name: &str, campaign: EtcdCampaign) -> Result<()> {
        let leader = campaign
            .leader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(leader) = leader {
            let resigned = self
                .members
                .call("election resign", |client| {
                    let options = ResignOptions::new().with_leader(leader.clone());
                    async move { client.election_client().resign(Some(options)).await }
                })
                .await;
            if let Err(err) = resigned {
                tracing::debug!(error = %err, "etcd resign failed; revoking the lease does it");
            }
        }
        // The candidate key goes with the lease.
        self.revoke(campaign.lease).await
    }

    async fn leader(&self, name: &str) -> Result<Option<Leader>> {
        Ok(self.read_leader(name).await?.0)
    }

    async fn next_leader(&self, name: &str, seen: &Option<Leader>) -> Result<Option<Leader>> {
        let (leader, revision) = self.read_leader(name).await?;
        if &leader != seen {
            return Ok(leader);
        }
        let prefix = format!("{}/", self.election_key(name));
        let client = self.watch_members.preferred_client().await?;
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut stream = client
            .watch_client()
            .watch(prefix, Some(options))
            .await
            .map_err(|err| etcd_error("election watch", err))?;
        // Any change to the candidates, or a while without one; then read again.
        let _ = tokio::time::timeout(OBSERVE_WAIT, stream.message()).await;
        self.leader(name).await
    }
}
