//! Shared values on Consul: reads are `/v1/txn` requests of `get-tree` operations (a `get` fails
//! the whole request on a missing key), writes are `cas` and `delete-cas` operations on each
//! key's ModifyIndex (0 for a key that must not exist), all or nothing.

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;

use super::agents::{KvPair, TxnOp};
use super::{ConsulStore, MAX_TXN_OPS};
use crate::backends::shared::{SharedStore, Versioned, Write};
use crate::error::Result;
use crate::manager::Instance;
use crate::registration::Liveness;
use crate::route::KeyLayout;

fn versioned(pair: &KvPair) -> Result<Versioned> {
    Ok(Versioned {
        value: pair.bytes()?,
        version: pair.modify_index,
        holder: pair.session.clone(),
    })
}

fn encoded(value: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(value)
}

#[async_trait]
impl SharedStore for ConsulStore {
    type Lease = String;
    const BACKEND: &'static str = "consul";
    // One operation of each request is the guard.
    const MAX_WRITES: usize = MAX_TXN_OPS - 1;

    fn layout(&self) -> &KeyLayout {
        &self.config().layout
    }

    async fn grant(&self, instance: &Instance, ttl: Duration) -> Result<String> {
        self.create_session(&instance.id()?, ttl).await
    }

    async fn renew(&self, session: &String) -> Result<Liveness> {
        self.renew_session(session).await
    }

    async fn revoke(&self, session: String) -> Result<()> {
        self.destroy_session(&session).await
    }

    fn holder(session: &String) -> String {
        session.clone()
    }

    async fn put_bound(&self, key: &str, session: &str) -> Result<()> {
        let lock = TxnOp::kv(
            "lock",
            key.to_owned(),
            Some(String::new()),
            Some(session.to_owned()),
        );
        self.agents.txn("lock", vec![lock]).await
    }

    async fn read(&self, keys: &[String]) -> Result<Vec<Option<Versioned>>> {
        let mut values = Vec::with_capacity(keys.len());
        for batch in keys.chunks(MAX_TXN_OPS) {
            let ops: Vec<TxnOp> = batch
                .iter()
                .map(|key| TxnOp::kv("get-tree", key.clone(), None, None))
                .collect();
            // get-tree also returns the keys under each one: only exact matches count.
            let pairs = self
                .agents
                .txn_read("read", &ops)
                .await?
                .unwrap_or_default();
            for key in batch {
                values.push(match pairs.iter().find(|p| p.key == *key) {
                    Some(pair) => Some(versioned(pair)?),
                    None => None,
                });
            }
        }
        Ok(values)
    }

    async fn read_prefix(&self, prefix: &str) -> Result<Vec<(String, Versioned)>> {
        self.agents
            .list_under(prefix)
            .await?
            .iter()
            .map(|pair| Ok((pair.key.clone(), versioned(pair)?)))
            .collect()
    }

    async fn write_if(&self, writes: &[Write], absent: Option<&str>) -> Result<bool> {
        let mut ops: Vec<TxnOp> = writes
            .iter()
            .map(|write| match write {
                Write::Put {
                    key,
                    value,
                    version: Some(index),
                } => TxnOp::kv("cas", key.clone(), Some(encoded(value)), None).at_index(*index),
                Write::Put {
                    key,
                    value,
                    version: None,
                } => TxnOp::kv("set", key.clone(), Some(encoded(value)), None),
                Write::Delete {
                    key,
                    version: Some(index),
                } => TxnOp::kv("delete-cas", key.clone(), None, None).at_index(*index),
                Write::Delete { key, version: None } => {
                    TxnOp::kv("delete", key.clone(), None, None)
                }
            })
            .collect();
        if let Some(absent) = absent {
            ops.push(TxnOp::kv("check-not-exists", absent.to_owned(), None, None));
        }
        Ok(self.agents.txn_read("write", &ops).await?.is_some())
    }
}
