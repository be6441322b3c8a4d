//! The reaper of the `surging` layout: an instance wayfinder wrote (an owned key) whose live key
//! is gone has died without deregistering; its address is taken out of every shared value, then
//! its owned key is deleted. Every running registration reaps now and then, so a crashed
//! instance's address goes within its TTL plus one reaper interval.

use std::collections::HashSet;

use super::edit::take_out_everywhere;
use super::{SharedStore, Write};
use crate::error::Result;
use crate::route::parse_instance_id;

/// Reaps every dead owned instance; returns how many addresses it took out.
pub(crate) async fn reap<S: SharedStore>(store: &S) -> Result<usize> {
    let layout = store.layout();
    let owned_prefix = layout.beside_prefix("owned");
    let owned = store.read_prefix(&owned_prefix).await?;
    if owned.is_empty() {
        return Ok(0);
    }
    let live_prefix = layout.beside_prefix("live");
    let live: HashSet<String> = store
        .read_prefix(&live_prefix)
        .await?
        .into_iter()
        .filter_map(|(key, _)| key.strip_prefix(&live_prefix).map(str::to_owned))
        .collect();
    let dead: Vec<(String, String, u64)> = owned
        .into_iter()
        .filter_map(|(key, value)| {
            let id = key.strip_prefix(&owned_prefix)?.to_owned();
            (!live.contains(&id)).then_some((key, id, value.version))
        })
        .collect();
    if dead.is_empty() {
        return Ok(0);
    }
    let mut removed = 0;
    for (key, id, version) in &dead {
        let live = layout.live_key(id)?;
        // Each write only while the instance is still gone: one that comes back meanwhile
        // keeps its address and its record.
        if let Ok(address) = parse_instance_id(id) {
            removed +=
                take_out_everywhere(store, |a| a.same_endpoint(&address), Some(&live)).await?;
        }
        let delete = [Write::Delete {
            key: key.clone(),
            version: Some(*version),
        }];
        store.write_if(&delete, Some(&live)).await?;
    }
    if removed > 0 {
        tracing::info!(
            instances = dead.len(),
            addresses = removed,
            "took the addresses of dead instances out of shared route values"
        );
    }
    Ok(removed)
}
