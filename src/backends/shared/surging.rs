//! Registration in the `surging` layout, for any [`SharedStore`]: the instance's address is
//! merged into one shared value per service id by compare-and-swap, and its liveness is a key
//! beside the prefix.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::edit::{edit_values, take_out_everywhere};
use super::reaper::reap;
use super::{SharedStore, Write};
use crate::error::Result;
use crate::manager::Instance;
use crate::registration::{Liveness, LivenessStore};
use crate::route::{holds, instance_id, with_address, without, Address, Edit};

/// A [`SharedStore`] registering instances in the `surging` layout.
pub(crate) struct SurgingLayout<S>(pub(crate) Arc<S>);

impl<S: SharedStore> SurgingLayout<S> {
    /// The shared value keys of the instance's routes, in order.
    fn route_keys(&self, instance: &Instance) -> Result<Vec<String>> {
        let layout = self.0.layout();
        instance
            .routes
            .iter()
            .map(|d| layout.route_key(&d.id))
            .collect()
    }

    /// Writes the live and owned keys: the live one first, so that a reaper never sees the
    /// instance owned and not live while it starts.
    async fn mark(&self, id: &str, lease: &S::Lease) -> Result<()> {
        let layout = self.0.layout();
        self.0
            .put_bound(&layout.live_key(id)?, &S::holder(lease))
            .await?;
        let owned = Write::Put {
            key: layout.owned_key(id)?,
            value: Vec::new(),
            version: None,
        };
        self.0.write_if(&[owned], None).await?;
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
        edit_values(self.0.as_ref(), &keys, guard, |n, current| {
            let descriptor = &instance.routes[which[n]];
            let edit = with_address(current, descriptor, &instance.address)?;
            let moved = usize::from(edit != Edit::Unchanged);
            Ok((edit, moved))
        })
        .await
    }
}

#[async_trait]
impl<S: SharedStore> LivenessStore for SurgingLayout<S> {
    type Lease = S::Lease;
    const BACKEND: &'static str = S::BACKEND;

    async fn put_instance(&self, instance: &Instance, ttl: Duration) -> Result<S::Lease> {
        let id = instance.id()?;
        let lease = self.0.grant(instance, ttl).await?;
        let all: Vec<usize> = (0..instance.routes.len()).collect();
        let written = async {
            self.mark(&id, &lease).await?;
            self.merge(instance, &all, None).await
        };
        // Merging under contention can outlast the TTL: renew while it runs.
        let renewing = async {
            loop {
                tokio::time::sleep(ttl / 3).await;
                if let Err(err) = self.0.renew(&lease).await {
                    tracing::debug!(error = %err, "renewal while registering failed");
                }
            }
        };
        let written = tokio::select! {
            written = written => written,
            never = renewing => never,
        };
        if let Err(err) = written {
            // Its owned key stays: with the live key gone, a reaper takes out what was merged.
            let _ = self.0.revoke(lease).await;
            return Err(err);
        }
        Ok(lease)
    }

    async fn keep_alive(&self, _instance: &Instance, lease: &S::Lease) -> Result<Liveness> {
        self.0.renew(lease).await
    }

    /// Puts the instance's address back into every shared value that lost it (a Surging writer's
    /// blind put, a value deleted by hand), restores its live and owned keys, then reaps.
    async fn heal(&self, instance: &Instance, lease: &S::Lease) -> Result<usize> {
        let layout = self.0.layout();
        let id = instance.id()?;
        let tombstone = layout.tombstone_key(&id)?;
        let (live, owned) = (layout.live_key(&id)?, layout.owned_key(&id)?);
        let marks = self.0.read(&[tombstone.clone(), live, owned]).await?;
        if marks[0].is_some() {
            // Deregistered while alive: nothing goes back.
            return Ok(0);
        }
        if marks[1].is_none() || marks[2].is_none() {
            self.mark(&id, lease).await?;
        }
        let values = self.0.read(&self.route_keys(instance)?).await?;
        let missing: Vec<usize> = values
            .iter()
            .enumerate()
            .filter(|(_, value)| {
                !value
                    .as_ref()
                    .is_some_and(|v| holds(&v.value, &instance.address))
            })
            .map(|(i, _)| i)
            .collect();
        let healed = if missing.is_empty() {
            0
        } else {
            self.merge(instance, &missing, Some(&tombstone)).await?
        };
        if let Err(err) = reap(self.0.as_ref()).await {
            tracing::warn!(error = %err, "could not reap the addresses of dead instances");
        }
        Ok(healed)
    }

    async fn remove_instance(&self, instance: &Instance, lease: S::Lease) -> Result<()> {
        let keys = self.route_keys(instance)?;
        let address = &instance.address;
        let taken = edit_values(self.0.as_ref(), &keys, None, |_, current| match current {
            Some(bytes) => without(bytes, |a| a.same_endpoint(address)),
            None => Ok((Edit::Unchanged, 0)),
        })
        .await;
        if taken.is_ok() {
            let owned = Write::Delete {
                key: self.0.layout().owned_key(&instance.id()?)?,
                version: None,
            };
            self.0.write_if(&[owned], None).await?;
        }
        // Revoked even when the edit failed: the reaper then takes the address out.
        let revoked = self.0.revoke(lease).await;
        taken.and(revoked)
    }
}

/// Takes `addresses` out of every shared value under the prefix; an instance among them that
/// runs in the `surging` layout is marked deregistered first (bound to its liveness), so its
/// heartbeat does not put them back. Returns how many it took out.
pub(crate) async fn remove_from_shared<S: SharedStore>(
    store: &S,
    addresses: &[Address],
) -> Result<usize> {
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
    take_out_everywhere(store, |a| addresses.iter().any(|d| d.same_endpoint(a))).await
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
