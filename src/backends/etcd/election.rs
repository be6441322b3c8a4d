//! Elections on etcd, by the recipe of etcd's own `concurrency` election: each campaigner puts
//! `<election>/<lease>` bound to its lease (if absent), and the oldest key leads; a campaigner
//! waits for the deletion of the newest key older than its own, then checks again. The fencing
//! token is the leader key's create revision. Every request is bounded (a wait is a watch with a
//! deadline, then a fresh look), and a leader checks at each renewal that its key is still its.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};

use super::lease::EtcdLease;
use super::{etcd_error, run_txn, EtcdStore};
use crate::election::{ElectionStore, Leader};
use crate::error::{Error, ErrorKind, Result};
use crate::registration::Liveness;

/// The longest a watch waits for a change before the state is read afresh.
const WAIT_STEP: Duration = Duration::from_secs(10);

/// One campaign on etcd: its lease and its key.
pub(crate) struct EtcdCampaign {
    lease: EtcdLease,
    key: String,
    /// The key's create revision once it is written.
    revision: AtomicI64,
    /// Whether it leads (a renewal then checks that the key is still its own).
    leading: AtomicBool,
}

impl EtcdStore {
    /// The election's name in etcd: its candidates' keys are under it plus `/`.
    fn election_prefix(&self, name: &str) -> String {
        format!("{}{name}/", self.config.layout.beside_prefix("election"))
    }

    /// The oldest key under `prefix` (or, with `oldest` false, the newest) whose create revision
    /// is at most `up_to`, and the revision it was read at.
    async fn candidate(
        &self,
        prefix: &str,
        up_to: Option<i64>,
        oldest: bool,
    ) -> Result<(Option<etcd_client::KeyValue>, i64)> {
        let answer = self
            .members
            .call("election read", |mut client| {
                let prefix = prefix.to_owned();
                async move {
                    let order = if oldest {
                        SortOrder::Ascend
                    } else {
                        SortOrder::Descend
                    };
                    let mut options = GetOptions::new()
                        .with_prefix()
                        .with_sort(SortTarget::Create, order)
                        .with_limit(1);
                    if let Some(up_to) = up_to {
                        options = options.with_max_create_revision(up_to);
                    }
                    client.get(prefix, Some(options)).await
                }
            })
            .await?;
        let revision = answer.header().map_or(0, |h| h.revision());
        Ok((answer.kvs().first().cloned(), revision))
    }

    /// Waits (at most [`WAIT_STEP`]) for a change under `key` (a prefix when `prefix`) after
    /// `revision`; `deletes_only` ignores puts.
    async fn wait_for_change(
        &self,
        key: &str,
        prefix: bool,
        revision: i64,
        deletes_only: bool,
    ) -> Result<()> {
        let wait = async {
            let client = self.watch_members.preferred_client().await?;
            let mut options = WatchOptions::new().with_start_revision(revision + 1);
            if prefix {
                options = options.with_prefix();
            }
            let mut stream = client
                .watch_client()
                .watch(key, Some(options))
                .await
                .map_err(|err| etcd_error("election watch", err))?;
            loop {
                let Some(answer) = stream
                    .message()
                    .await
                    .map_err(|err| etcd_error("election watch", err))?
                else {
                    return Ok(());
                };
                if answer.canceled() {
                    return Ok(());
                }
                // The creation reply and progress notices carry no event.
                let changed = answer
                    .events()
                    .iter()
                    .any(|e| !deletes_only || e.event_type() == EventType::Delete);
                if changed {
                    return Ok(());
                }
            }
        };
        match tokio::time::timeout(WAIT_STEP, wait).await {
            Ok(result) => result,
            Err(_) => Ok(()),
        }
    }
}

fn leader_of(kv: &etcd_client::KeyValue) -> Leader {
    Leader {
        value: String::from_utf8_lossy(kv.value()).into_owned(),
        token: kv.create_revision() as u64,
    }
}

#[async_trait]
impl ElectionStore for EtcdStore {
    type Lease = EtcdCampaign;

    async fn grant(&self, name: &str, ttl: Duration) -> Result<EtcdCampaign> {
        let lease = EtcdStore::grant(self, ttl).await?;
        let key = format!("{}{:x}", self.election_prefix(name), lease.id);
        Ok(EtcdCampaign {
            lease,
            key,
            revision: AtomicI64::new(0),
            leading: AtomicBool::new(false),
        })
    }

    async fn renew(&self, campaign: &EtcdCampaign) -> Result<Liveness> {
        let renewed = EtcdStore::renew(self, &campaign.lease).await?;
        if renewed == Liveness::Lost || !campaign.leading.load(Ordering::SeqCst) {
            return Ok(renewed);
        }
        // Leading: the key must still be the one it was elected with (not deleted by hand).
        let key = campaign.key.clone();
        let answer = self
            .members
            .call("election check", |mut client| {
                let key = key.clone();
                async move { client.get(key, None).await }
            })
            .await?;
        let ours = campaign.revision.load(Ordering::SeqCst);
        let held = answer
            .kvs()
            .first()
            .is_some_and(|kv| kv.create_revision() == ours);
        Ok(if held {
            Liveness::Alive
        } else {
            Liveness::Lost
        })
    }

    async fn acquire(&self, name: &str, value: &str, campaign: &EtcdCampaign) -> Result<u64> {
        let key = campaign.key.as_str();
        let put = TxnOp::put(
            key,
            value,
            Some(PutOptions::new().with_lease(campaign.lease.id)),
        );
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([put])
            .or_else([TxnOp::get(key, None)]);
        let answer = run_txn(&self.members, "campaign", txn).await?;
        let revision = if answer.succeeded() {
            answer.header().map_or(0, |h| h.revision())
        } else {
            answer
                .op_responses()
                .into_iter()
                .find_map(|op| match op {
                    TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.create_revision()),
                    _ => None,
                })
                .unwrap_or(0)
        };
        campaign.revision.store(revision, Ordering::SeqCst);
        let prefix = self.election_prefix(name);
        loop {
            let (prior, read_at) = self.candidate(&prefix, Some(revision - 1), false).await?;
            let Some(prior) = prior else {
                // No older candidate; is ours still there (its lease alive)?
                let (oldest, _) = self.candidate(&prefix, None, true).await?;
                if oldest.is_some_and(|kv| kv.create_revision() == revision) {
                    campaign.leading.store(true, Ordering::SeqCst);
                    return Ok(revision as u64);
                }
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!("election {name}: the campaign's key is gone (its lease lapsed?)"),
                ));
            };
            let prior_key = String::from_utf8_lossy(prior.key()).into_owned();
            self.wait_for_change(&prior_key, false, read_at, true)
                .await?;
        }
    }

    async fn release(&self, _name: &str, campaign: &EtcdCampaign) -> Result<()> {
        // The key goes with the lease.
        self.revoke_held(&campaign.lease).await
    }

    async fn leader(&self, name: &str) -> Result<Option<Leader>> {
        let (oldest, _) = self
            .candidate(&self.election_prefix(name), None, true)
            .await?;
        Ok(oldest.as_ref().map(leader_of))
    }

    async fn next_leader(&self, name: &str, seen: &Option<Leader>) -> Result<Option<Leader>> {
        let prefix = self.election_prefix(name);
        let (oldest, read_at) = self.candidate(&prefix, None, true).await?;
        let leader = oldest.as_ref().map(leader_of);
        if &leader != seen {
            return Ok(leader);
        }
        self.wait_for_change(&prefix, true, read_at, false).await?;
        self.leader(name).await
    }
}
