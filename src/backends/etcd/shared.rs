//! Shared values on etcd: reads in transactions of gets, writes in transactions that compare
//! each key's mod_revision (create_revision 0 for a key that must not exist).

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};

use super::lease::EtcdLease;
use super::{read_prefix, run_txn, EtcdStore, MAX_TXN_OPS};
use crate::backends::shared::{SharedStore, Versioned, Write};
use crate::error::{Error, Result};
use crate::manager::Instance;
use crate::registration::Liveness;
use crate::route::KeyLayout;

fn versioned(kv: &etcd_client::KeyValue) -> Versioned {
    Versioned {
        value: kv.value().to_vec(),
        version: kv.mod_revision() as u64,
        holder: (kv.lease() != 0).then(|| kv.lease().to_string()),
    }
}

fn bad_holder(holder: &str) -> Error {
    Error::invalid_input(format!("etcd lease id {holder:?} is not a number"))
}

#[async_trait]
impl SharedStore for EtcdStore {
    type Lease = EtcdLease;
    const BACKEND: &'static str = "etcd";
    // Compares and operations are each limited to `--max-txn-ops`; one compare is the guard.
    const MAX_WRITES: usize = MAX_TXN_OPS - 1;

    fn layout(&self) -> &KeyLayout {
        &self.config.layout
    }

    async fn grant(&self, _instance: &Instance, ttl: Duration) -> Result<EtcdLease> {
        EtcdStore::grant(self, ttl).await
    }

    async fn renew(&self, lease: &EtcdLease) -> Result<Liveness> {
        EtcdStore::renew(self, lease).await
    }

    async fn revoke(&self, lease: EtcdLease) -> Result<()> {
        EtcdStore::revoke(self, lease).await
    }

    fn holder(lease: &EtcdLease) -> String {
        lease.id.to_string()
    }

    async fn put_bound(&self, key: &str, holder: &str) -> Result<()> {
        let lease: i64 = holder.parse().map_err(|_| bad_holder(holder))?;
        self.members
            .call("put", |mut client| async move {
                let options = PutOptions::new().with_lease(lease);
                client.put(key, "", Some(options)).await
            })
            .await?;
        Ok(())
    }

    async fn read(&self, keys: &[String]) -> Result<Vec<Option<Versioned>>> {
        let mut values = Vec::with_capacity(keys.len());
        for batch in keys.chunks(MAX_TXN_OPS) {
            let gets: Vec<TxnOp> = batch.iter().map(|k| TxnOp::get(k.as_str(), None)).collect();
            let txn = Txn::new().and_then(gets);
            let answer = run_txn(&self.members, "read", txn).await?;
            for response in answer.op_responses() {
                values.push(match response {
                    TxnOpResponse::Get(got) => got.kvs().first().map(versioned),
                    _ => None,
                });
            }
        }
        Ok(values)
    }

    async fn read_prefix(&self, prefix: &str) -> Result<Vec<(String, Versioned)>> {
        let (kvs, _) = read_prefix(&self.members, prefix).await?;
        Ok(kvs
            .iter()
            .filter_map(|kv| Some((kv.key_str().ok()?.to_owned(), versioned(kv))))
            .collect())
    }

    async fn write_if(&self, writes: &[Write], absent: Option<&str>) -> Result<bool> {
        let mut compares = Vec::with_capacity(writes.len() + 1);
        let mut ops = Vec::with_capacity(writes.len());
        for write in writes {
            let (key, version) = match write {
                Write::Put {
                    key,
                    value,
                    version,
                } => {
                    ops.push(TxnOp::put(key.as_str(), value.clone(), None));
                    (key, version)
                }
                Write::Delete { key, version } => {
                    ops.push(TxnOp::delete(key.as_str(), None));
                    (key, version)
                }
            };
            match version {
                Some(0) => {
                    compares.push(Compare::create_revision(key.as_str(), CompareOp::Equal, 0))
                }
                Some(v) => compares.push(Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    *v as i64,
                )),
                None => {}
            }
        }
        if let Some(absent) = absent {
            compares.push(Compare::version(absent, CompareOp::Equal, 0));
        }
        let txn = Txn::new().when(compares).and_then(ops);
        let answer = run_txn(&self.members, "write", txn).await?;
        Ok(answer.succeeded())
    }
}
