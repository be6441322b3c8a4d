//! The reader side of the Consul backend: one recursive blocking query on the prefix.
//!
//! Index rules (Consul's blocking-query guidance): an index that goes backwards resets to 0 (a
//! fresh read); an index below 1 becomes 1; a return whose index did not move is not a change.
//! Every answer is the whole prefix, so the hub diffs it against the last one; an answer filtered
//! by ACLs is partial and never taken as deletions. Errors (and 429s) back off with jitter and
//! leave the last good routes in place.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::{decode_pairs, Agents, KvPair, Listing};
use crate::error::Result;
use crate::route::RouteEntries;
use crate::telemetry::traced;
use crate::watch::WatchHub;

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Reads once (an error here is returned), then follows the prefix in the background.
pub(crate) async fn start(agents: Agents, hub: Arc<WatchHub>) -> Result<JoinHandle<()>> {
    let first = traced("consul", "watch_poll", agents.list(0), |l| l.pairs.len()).await?;
    let mut follower = Follower {
        agents,
        hub,
        index: 0,
        known: HashMap::new(),
        entries: RouteEntries::default(),
        decode_all: false,
    };
    follower.publish(first).await?;
    follower.hub.mark_synced();
    Ok(tokio::spawn(follower.run()))
}

struct Follower {
    agents: Agents,
    hub: Arc<WatchHub>,
    index: u64,
    /// Each key's ModifyIndex as last seen: unchanged keys are not decoded again.
    known: HashMap<String, u64>,
    entries: RouteEntries,
    /// Decode every key of the next answer (indexes restarted, so equal ones prove nothing).
    decode_all: bool,
}

impl Follower {
    /// Applies a whole-prefix answer: decodes only new or changed keys, and removes keys that
    /// are gone unless the answer was filtered by ACLs (then absences mean nothing).
    async fn publish(&mut self, listing: Listing) -> Result<()> {
        let layout = self.agents.config.layout.clone();
        let seen: HashSet<String> = listing.pairs.iter().map(|p| p.key.clone()).collect();
        let changed: Vec<KvPair> = listing
            .pairs
            .into_iter()
            .filter(|pair| self.decode_all || self.known.get(&pair.key) != Some(&pair.modify_index))
            .collect();
        for pair in decode_pairs(&layout, changed).await? {
            self.known.insert(pair.key.clone(), pair.modify_index);
            match pair.entry {
                Ok((key, route)) => {
                    let merged = self.entries.put(&key, pair.modify_index, route);
                    self.hub.set(&key.service_id, merged);
                }
                Err(err) => {
                    tracing::warn!(key = %pair.key, error = %err, "skipping malformed registry entry")
                }
            }
        }
        if listing.filtered {
            tracing::warn!("consul filtered the listing by ACLs; keeping routes it did not show");
        } else {
            let gone: Vec<String> = self
                .known
                .keys()
                .filter(|key| !seen.contains(key.as_str()))
                .cloned()
                .collect();
            for key in gone {
                self.known.remove(&key);
                if let Some(entry_key) = layout.parse(&key) {
                    if self.entries.contains(&entry_key) {
                        let merged = self.entries.remove(&entry_key);
                        self.hub.set(&entry_key.service_id, merged);
                    }
                }
            }
        }
        self.decode_all = false;
        self.hub.mark_good();
        self.index = listing.index.max(1);
        Ok(())
    }

    async fn run(mut self) {
        let mut delay = BACKOFF_FIRST;
        loop {
            let poll = self.agents.list(self.index);
            match traced("consul", "watch_poll", poll, |l| l.pairs.len()).await {
                Ok(listing) => {
                    delay = BACKOFF_FIRST;
                    if listing.index < self.index {
                        tracing::info!(
                            from = self.index,
                            to = listing.index,
                            "consul index went backwards; reading afresh"
                        );
                        self.index = 0;
                        self.decode_all = true;
                        continue;
                    }
                    if listing.index == self.index {
                        // The wait ran out: not a change.
                        self.hub.mark_good();
                        continue;
                    }
                    if let Err(err) = self.publish(listing).await {
                        tracing::warn!(error = %err, "consul answer not applied; reading afresh");
                        self.hub.mark_error(&err);
                        self.index = 0;
                        self.decode_all = true;
                        tokio::time::sleep(BACKOFF_MAX).await;
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, retry_in = ?delay, "consul watch failed; keeping the last good routes");
                    self.hub.mark_error(&err);
                    tokio::time::sleep(delay.mul_f64(0.8 + 0.4 * fastrand::f64())).await;
                    delay = (delay * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}
