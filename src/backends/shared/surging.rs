//! Registration in the `surging` layout, for any [`SharedStore`]: the instance's address is
//! merged into one shared value per service id by compare-and-swap, and its liveness is a key
//! beside the prefix.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::edit::{edit_values, take_out_everywhere};
use super::reaper::reap;
use super::{SharedStore, Write};
use crate::error::{Error, ErrorKind, Result};
use crate::manager::Instance;
use crate::registration::{Liveness, LivenessStore, Rewrite};
use crate::route::{holds, instance_id, with_address, without, Address, Edit};

/// A [`SharedStore`] registering instances in the `surging` layout.
pub(crate) struct SurgingLayout<S> {
    store: Arc<S>,
    /// The TTL of registrations that name none.
    default_ttl: Duration,
}

impl<S: SharedStore> SurgingLayout<S> {
    /// Registrations on `store`, with `default_ttl` for instances that name no TTL.
    pub(crate) fn new(store: Arc<S>, default_ttl: Duration) -> Self {
        SurgingLayout { store, default_ttl }
    }

    /// The shared value keys of the instance's routes, in order.
    fn route_keys(&self, instance: &Instance) -> Result<Vec<String>> {
        let layout = self.store.layout();
        instance
            .routes
            .iter()
            .map(|d| layout.route_key(&d.id))
            .collect()
    }

    /// Writes the live and owned keys: the live one first, so that a reaper never sees the
    /// instance owned and not live while it starts.
    async fn mark(&self, id: &str, lease: &S::Lease) -> Result<()> {
        let layout = self.store.layout();
        self.store
            .put_bound(&layout.live_key(id)?, &S::holder(lease))
            .await?;
        let owned = Write::Put {
            key: layout.owned_key(id)?,
            value: Vec::new(),
            version: None,
        };
        if !self.store.write_if(&[owned], None).await? {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!("{}: the owned key of {id} was not written", S::BACKEND),
            ));
        }
        Ok(())
    }

    /// Merges the instance's address into the values of the routes `which` picks (indexes into
    /// `instance.routes`), only while `guard` (a deregistration marker) does not exist.
    async fn merge(
        &self,
        instance: &Instance,
        which: &[usize],
        guard: Option<&str>,
    ) -> Result<usize> {
        let keys = self.route_keys(instance)?;
        let keys: Vec<String> = which.iter().map(|&i| keys[i].clone()).collect();
        edit_values(self.store.as_ref(), &keys, guard, |n, current| {
            let descriptor = &instance.routes[which[n]];
            let edit = with_address(current, descriptor, &instance.address)?;
            let moved = usize::from(edit != Edit::Unchanged);
            Ok((edit, moved))
        })
        .await
    }

    /// Runs `work` while renewing `lease` every third of the instance's TTL: merging under
    /// contention, or reaping, can outlast the TTL, and the keep-alive waits for them.
    async fn renewing<T>(
        &self,
        instance: &Instance,
        lease: &S::Lease,
        work: impl Future<Output = T>,
    ) -> T {
        let every = instance.ttl.unwrap_or(self.default_ttl) / 3;
        let renewals = async {
            loop {
                tokio::time::sleep(every).await;
                if let Err(err) = self.store.renew(lease).await {
                    tracing::debug!(error = %err, "renewal during a shared-value edit failed");
                }
            }
        };
        tokio::select! {
            done = work => done,
            never = renewals => never,
        }
    }
}

#[async_trait]
impl<S: SharedStore> LivenessStore for SurgingLayout<S> {
    type Lease = S::Lease;
    const BACKEND: &'static str = S::BACKEND;

    async fn put_instance(&self, instance: &Instance, ttl: Duration) -> Result<S::Lease> {
        let id = instance.id()?;
        let lease = self.store.grant(instance, ttl).await?;
        let all: Vec<usize> = (0..instance.routes.len()).collect();
        let written = async {
            self.mark(&id, &lease).await?;
            self.merge(instance, &all, None).await
        };
        if let Err(err) = self.renewing(instance, &lease, written).await {
            // Its owned key stays: with the live key gone, a reaper takes out what was merged.
            let _ = self.store.revoke(lease).await;
            return Err(err);
        }
        Ok(lease)
    }

    async fn keep_alive(&self, _instance: &Instance, lease: &S::Lease) -> Result<Liveness> {
        self.store.renew(lease).await
    }

    /// Reaps dead instances (when healing what is missing), then puts the instance's address,
    /// as it is now, back into every shared value that lost it or holds an older copy (a
    /// Surging writer's blind put, a value deleted by hand) and restores its live and owned
    /// keys, unless a deregistration took it out. [`Rewrite::All`] goes over every value.
    async fn heal(&self, instance: &Instance, lease: &S::Lease, which: Rewrite) -> Result<usize> {
        let work = async {
            if which == Rewrite::Missing {
                if let Err(err) = reap(self.store.as_ref()).await {
                    tracing::warn!(error = %err, "could not reap the addresses of dead instances");
                }
            }
            let layout = self.store.layout();
            let id = instance.id()?;
            let tombstone = layout.tombstone_key(&id)?;
            let (live, owned) = (layout.live_key(&id)?, layout.owned_key(&id)?);
            let marks = self.store.read(&[tombstone.clone(), live, owned]).await?;
            if marks[0].is_some() {
                // Deregistered while alive: nothing goes back.
                return Ok(0);
            }
            if marks[1].is_none() || marks[2].is_none() {
                self.mark(&id, lease).await?;
            }
            let values = self.store.read(&self.route_keys(instance)?).await?;
            let missing: Vec<usize> = values
                .iter()
                .enumerate()
                .filter(|(_, value)| {
                    which == Rewrite::All
                        || !value
                            .as_ref()
                            .is_some_and(|v| holds(&v.value, &instance.address))
                })
                .map(|(i, _)| i)
                .collect();
            if missing.is_empty() {
                return Ok(0);
            }
            self.merge(instance, &missing, Some(&tombstone)).await
        };
        self.renewing(instance, lease, work).await
    }

    /// Takes the instance's address out of its routes' values and deletes its owned key, unless
    /// a successor at the same address holds the live key by now; the lease is revoked in any
    /// case (and if the edit failed, the reaper finishes it).
    async fn remove_instance(&self, instance: &Instance, lease: S::Lease) -> Result<()> {
        let layout = self.store.layout();
        let ours = S::holder(&lease);
        let removal = async {
            let id = instance.id()?;
            let live = self.store.read(&[layout.live_key(&id)?]).await?;
            if live[0].as_ref().and_then(|v| v.holder.as_deref()) != Some(ours.as_str()) {
                tracing::info!(instance = %id, "a newer registration holds the address; leaving it in");
                return Ok(());
            }
            let keys = self.route_keys(instance)?;
            let address = &instance.address;
            edit_values(
                self.store.as_ref(),
                &keys,
                None,
                |_, current| match current {
                    Some(bytes) => without(bytes, |a| a.same_endpoint(address)),
                    None => Ok((Edit::Unchanged, 0)),
                },
            )
            .await?;
            let owned = Write::Delete {
                key: layout.owned_key(&id)?,
                version: None,
            };
            self.store.write_if(&[owned], None).await?;
            Ok(())
        };
        let removed = removal.await;
        let revoked = self.store.revoke(lease).await;
        removed.and(revoked)
    }
}

/// Takes `addresses` out of every shared value under the prefix; an instance among them that
/// runs in the `surging` layout is marked deregistered first (bound to its liveness), so its
/// heartbeat does not put them back. Returns how many it took out.
pub(crate) async fn remove_from_shared<S: SharedStore>(
    store: &S,
    addresses: &[Address],
) -> Result<usize> {
    if let Err(err) = mark_removed(store, addresses).await {
        match err.kind() {
            ErrorKind::PermissionDenied | ErrorKind::NotFound => {
                tracing::warn!(error = %err, "cannot mark deregistered instances beside the prefix (grant that prefix too); a running instance may put its address back");
            }
            _ => return Err(err),
        }
    }
    take_out_everywhere(
        store,
        |a| addresses.iter().any(|d| d.same_endpoint(a)),
        None,
    )
    .await
}

/// Writes a deregistration marker, bound to its liveness, for each running instance of the
/// `surging` layout among `addresses`.
async fn mark_removed<S: SharedStore>(store: &S, addresses: &[Address]) -> Result<()> {
    let layout = store.layout();
    let ids = addresses
        .iter()
        .map(instance_id)
        .collect::<Result<Vec<_>>>()?;
    let live_keys = ids
        .iter()
        .map(|id| layout.live_key(id))
        .collect::<Result<Vec<_>>>()?;
    for (id, live) in ids.iter().zip(store.read(&live_keys).await?) {
        if let Some(holder) = live.and_then(|live| live.holder) {
            store.put_bound(&layout.tombstone_key(id)?, &holder).await?;
        }
    }
    Ok(())
}

/// Deletes the records beside the prefix (live, owned and deregistration keys), as clearing the
/// registry does; running instances of the `surging` layout find their live key gone and
/// register again.
pub(crate) async fn clear_beside<S: SharedStore>(store: &S) -> Result<()> {
    for kind in ["live", "owned", "removed"] {
        let prefix = store.layout().beside_prefix(kind);
        let deletes: Vec<Write> = store
            .read_prefix(&prefix)
            .await?
            .into_iter()
            .map(|(key, _)| Write::Delete { key, version: None })
            .collect();
        for batch in deletes.chunks(S::MAX_WRITES) {
            store.write_if(batch, None).await?;
        }
    }
    Ok(())
}
