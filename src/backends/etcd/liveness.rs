//! Registration in wayfinder's own layout: one key per route per instance, bound to the
//! instance's lease.

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Compare, CompareOp, LeaseTimeToLiveOptions, PutOptions, Txn, TxnOp};

use super::lease::EtcdLease;
use super::{run_batched, run_txn, EtcdStore, MAX_TXN_OPS};
use crate::error::Result;
use crate::manager::Instance;
use crate::registration::{Liveness, LivenessStore, Rewrite};
use crate::route::encode_route;

impl EtcdStore {
    fn instance_keys(&self, instance: &Instance) -> Result<Vec<String>> {
        let id = instance.id()?;
        instance
            .routes
            .iter()
            .map(|d| self.config.layout.instance_key(&d.id, &id))
            .collect()
    }
}

#[async_trait]
impl LivenessStore for EtcdStore {
    type Lease = EtcdLease;
    const BACKEND: &'static str = "etcd";

    async fn put_instance(&self, instance: &Instance, ttl: Duration) -> Result<EtcdLease> {
        let keys = self.instance_keys(instance)?;
        let lease = self.grant(ttl).await?;
        let mut ops = Vec::with_capacity(keys.len());
        for (key, descriptor) in keys.into_iter().zip(&instance.routes) {
            let value = encode_route(&instance.route(descriptor))?;
            ops.push(TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_lease(lease.id)),
            ));
        }
        if let Err(err) = run_batched(&self.members, ops, "register").await {
            // Take back what a partial write put up, rather than leave it for a TTL.
            let _ = self.revoke(lease).await;
            return Err(err);
        }
        Ok(lease)
    }

    async fn keep_alive(&self, _instance: &Instance, lease: &EtcdLease) -> Result<Liveness> {
        self.renew(lease).await
    }

    async fn heal(&self, instance: &Instance, lease: &EtcdLease, which: Rewrite) -> Result<usize> {
        let keys = self.instance_keys(instance)?;
        let id = lease.id;
        let attached = self
            .members
            .call("lease time-to-live", |mut client| async move {
                let options = LeaseTimeToLiveOptions::new().with_keys();
                client.lease_time_to_live(id, Some(options)).await
            })
            .await?;
        if attached.ttl() <= 0 {
            // The lease is gone: the next renewal finds out and registers again.
            return Ok(0);
        }
        let held: std::collections::HashSet<&[u8]> =
            attached.keys().iter().map(Vec::as_slice).collect();
        let missing: Vec<(String, &crate::route::ServiceDescriptor)> = keys
            .into_iter()
            .zip(&instance.routes)
            .filter(|(key, _)| which == Rewrite::All || !held.contains(key.as_bytes()))
            .collect();
        if missing.is_empty() {
            return Ok(0);
        }
        let tombstone = self.config.layout.tombstone_key(&instance.id()?)?;
        let mut ops = Vec::with_capacity(missing.len());
        for (key, descriptor) in &missing {
            let value = encode_route(&instance.route(descriptor))?;
            ops.push(TxnOp::put(
                key.as_str(),
                value,
                Some(PutOptions::new().with_lease(lease.id)),
            ));
        }
        // Each batch writes only while no deregistration marker exists (one is bound to this
        // lease when a deregistration removed the instance), so a deregistration always wins.
        let mut written = 0;
        for batch in ops.chunks(MAX_TXN_OPS) {
            let txn = Txn::new()
                .when([Compare::version(tombstone.as_str(), CompareOp::Equal, 0)])
                .and_then(batch.to_vec());
            let answer = run_txn(&self.members, "heal", txn).await?;
            if !answer.succeeded() {
                break;
            }
            written += batch.len();
        }
        Ok(written)
    }

    async fn remove_instance(&self, _instance: &Instance, lease: EtcdLease) -> Result<()> {
        self.revoke(lease).await
    }
}
