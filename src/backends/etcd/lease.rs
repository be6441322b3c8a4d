//! Leases: granted, kept alive over one stream each, revoked. Both layouts bind their keys to
//! one lease per registration.

use std::time::Duration;

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};
use tokio::sync::Mutex;

use super::members::Members;
use super::{etcd_error, is_lease_gone, status_code, EtcdStore, NOT_FOUND};
use crate::error::{Error, ErrorKind, Result};
use crate::registration::Liveness;

/// One registration's lease and its keep-alive stream.
pub(crate) struct EtcdLease {
    pub(super) id: i64,
    stream: Mutex<Option<(LeaseKeeper, LeaseKeepAliveStream)>>,
}

impl EtcdLease {
    /// The lease `id`, without a keep-alive stream yet.
    pub(super) fn new(id: i64) -> Self {
        EtcdLease {
            id,
            stream: Mutex::new(None),
        }
    }
}

fn lease_seconds(ttl: Duration) -> i64 {
    (ttl.as_secs_f64().ceil() as i64).max(2)
}

/// Revokes a lease; one already gone counts as revoked (its keys went with it).
pub(super) async fn revoke_lease(members: &Members, lease: i64) -> Result<()> {
    members
        .call("lease revoke", |mut client| async move {
            match client.lease_revoke(lease).await {
                Ok(_) => Ok(()),
                Err(err) if status_code(&err) == Some(NOT_FOUND) => Ok(()),
                Err(err) => Err(err),
            }
        })
        .await
}

impl EtcdStore {
    /// A fresh lease of `ttl` (whole seconds, at least 2).
    pub(super) async fn grant(&self, ttl: Duration) -> Result<EtcdLease> {
        let seconds = lease_seconds(ttl);
        let id = self
            .members
            .call("lease grant", |mut client| async move {
                client.lease_grant(seconds, None).await
            })
            .await?
            .id();
        Ok(EtcdLease::new(id))
    }

    /// Renews `lease` over its keep-alive stream, opening one when there is none.
    pub(super) async fn renew(&self, lease: &EtcdLease) -> Result<Liveness> {
        let mut slot = lease.stream.lock().await;
        if slot.is_none() {
            let id = lease.id;
            // Opening the stream already sends one keep-alive.
            let opened = self
                .members
                .call("lease keep-alive", |mut client| async move {
                    match client.lease_keep_alive(id).await {
                        Ok(stream) => Ok(Some(stream)),
                        Err(err) if is_lease_gone(&err) => Ok(None),
                        Err(err) => Err(err),
                    }
                })
                .await?;
            match opened {
                Some(stream) => *slot = Some(stream),
                None => return Ok(Liveness::Lost),
            }
        }
        let Some((keeper, stream)) = slot.as_mut() else {
            return Err(Error::new(
                ErrorKind::Unavailable,
                "etcd keep-alive stream missing",
            ));
        };
        let renewal = async {
            keeper.keep_alive().await?;
            stream.message().await
        };
        let Ok(answer) = tokio::time::timeout(self.config.timeout, renewal).await else {
            // The member holding the stream went quiet: reopen it (on a member that answers).
            *slot = None;
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "etcd lease keep-alive: no answer within {:?}",
                    self.config.timeout
                ),
            ));
        };
        match answer {
            Ok(Some(response)) if response.ttl() > 0 => Ok(Liveness::Alive),
            // A TTL of 0, or (as etcd-client reports it) "lease not found": expired or revoked.
            Ok(Some(_)) => {
                *slot = None;
                Ok(Liveness::Lost)
            }
            // The stream closed: reopen it next time (reopening tells whether the lease lives).
            Ok(None) => {
                *slot = None;
                Err(Error::new(
                    ErrorKind::Unavailable,
                    "etcd keep-alive stream closed",
                ))
            }
            Err(err) if is_lease_gone(&err) => {
                *slot = None;
                Ok(Liveness::Lost)
            }
            Err(err) => {
                *slot = None;
                Err(etcd_error("lease keep-alive", err))
            }
        }
    }

    /// Stops renewing `lease` and revokes it.
    pub(super) async fn revoke(&self, lease: EtcdLease) -> Result<()> {
        self.revoke_held(&lease).await
    }

    /// Revokes a lease still shared with others (they find it gone at their next renewal).
    pub(super) async fn revoke_held(&self, lease: &EtcdLease) -> Result<()> {
        drop(lease.stream.lock().await.take());
        revoke_lease(&self.members, lease.id).await
    }
}
