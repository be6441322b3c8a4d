//! Registration in wayfinder's own layout: one key per route per instance, locked by the
//! instance's session (`Behavior=delete`), so the keys go when the session does.

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;

use super::agents::TxnOp;
use super::{ConsulStore, MAX_TXN_OPS};
use crate::error::Result;
use crate::manager::Instance;
use crate::registration::{Liveness, LivenessStore, Rewrite};
use crate::route::encode_route;

impl ConsulStore {
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
        let session = self.create_session(&id, ttl).await?;
        let ops = self.lock_ops(instance, &id, &session)?;
        if let Err(err) = self.agents.txn("register", ops).await {
            let _ = self.destroy_session(&session).await;
            return Err(err);
        }
        Ok(session)
    }

    async fn keep_alive(&self, _instance: &Instance, session: &String) -> Result<Liveness> {
        self.renew_session(session).await
    }

    async fn heal(&self, instance: &Instance, session: &String, which: Rewrite) -> Result<usize> {
        let id = instance.id()?;
        let layout = &self.config().layout;
        if which == Rewrite::Missing {
            let checks = instance
                .routes
                .iter()
                .map(|d| {
                    let key = layout.instance_key(&d.id, &id)?;
                    Ok(TxnOp::kv("check-session", key, None, Some(session.clone())))
                })
                .collect::<Result<Vec<_>>>()?;
            if self.agents.txn_holds("heal check", checks).await? {
                return Ok(0);
            }
        }
        // Something is missing, or everything is to be rewritten: unless a deregistration
        // removed the instance, write it all back (taking a lock the session already holds
        // changes nothing). Each batch writes only while no deregistration marker exists, so a
        // deregistration, earlier or concurrent, wins.
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
        self.destroy_session(&session).await
    }
}
