//! The reader side of the Consul backend: one recursive blocking query on the prefix.
//!
//! Index rules (Consul's blocking-query guidance): an index that goes backwards resets to 0 (a
//! fresh read); an index below 1 becomes 1; a return whose index did not move is not a change.
//! Every answer is the whole prefix, so the hub diffs it against the last one; an answer filtered
//! by ACLs is partial and never taken as deletions. Errors (and 429s) back off with jitter and
//! leave the last good routes in place. When the index went backwards and the fresh answer shows
//! a restarted store (keys rewritten with lower indexes, or an index below every key we knew),
//! it is published as a reset, which resolvers ride out with their empty protection; tombstones
//! reaped under deleted keys also move the index back, and are not a reset. A new watcher's
//! request for a fresh read (read-your-writes) interrupts the blocking query.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::task::JoinHandle;

use super::agents::{Agents, KvPair, Listing};
use super::decode_pairs;
use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::route::RouteEntries;
use crate::telemetry::traced;
use crate::watch::{writes_done, WatchHub};

/// Reads once (an error here is returned), then follows the prefix in the background.
pub(crate) async fn start(
    agents: Agents,
    scope: String,
    hub: Arc<WatchHub>,
) -> Result<JoinHandle<()>> {
    let first = traced("consul", "watch_poll", agents.list(&scope, 0), |l| {
        l.pairs.len()
    })
    .await?;
    let mut follower = Follower {
        agents,
        scope,
        hub,
        index: 0,
        known: HashMap::new(),
        entries: RouteEntries::default(),
        decode_all: false,
        reset_pending: false,
    };
    follower.publish(first).await?;
    follower.hub.mark_synced();
    Ok(tokio::spawn(follower.run()))
}

struct Follower {
    agents: Agents,
    /// The service-id prefix followed (empty: every service).
    scope: String,
    hub: Arc<WatchHub>,
    index: u64,
    /// Each key's ModifyIndex as last seen: unchanged keys are not decoded again.
    known: HashMap<String, u64>,
    entries: RouteEntries,
    /// Decode every key of the next answer (indexes restarted, so equal ones prove nothing).
    decode_all: bool,
    /// The index went backwards: the next answer tells whether the registry restarted, and is
    /// then published as a reset (see [`crate::SyncStatus::resets`]).
    reset_pending: bool,
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
                Ok((key, route)) => self.entries.put(&key, pair.modify_index, route),
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
                    self.entries.remove(&entry_key);
                }
            }
        }
        // One merge and one event per route the answer changed.
        self.hub.set_many(self.entries.take_changed());
        self.decode_all = false;
        self.hub.mark_good();
        self.index = listing.index.max(1);
        Ok(())
    }

    async fn run(mut self) {
        let mut backoff = Backoff::reconnect();
        loop {
            // Every write this process completed before the read begins is in its answer.
            let writes = writes_done();
            let poll = traced(
                "consul",
                "watch_poll",
                self.agents.list(&self.scope, self.index),
                |l| l.pairs.len(),
            );
            let answer = tokio::select! {
                answer = poll => answer,
                () = self.hub.refresh_requested() => {
                    // A new watcher wants this process's writes: read now, not at the next change.
                    let writes = writes_done();
                    let read = traced("consul", "watch_poll", self.agents.list(&self.scope, 0), |l| l.pairs.len());
                    match read.await {
                        Ok(listing) => self.apply(listing, writes, &mut backoff).await,
                        Err(err) => self.failed(&err, &mut backoff).await,
                    }
                    continue;
                }
            };
            match answer {
                Ok(listing) => self.apply(listing, writes, &mut backoff).await,
                Err(err) => self.failed(&err, &mut backoff).await,
            }
        }
    }

    /// Applies one answer of the agents.
    async fn apply(&mut self, listing: Listing, writes: u64, backoff: &mut Backoff) {
        backoff.reset();
        if listing.index < self.index {
            tracing::info!(
                from = self.index,
                to = listing.index,
                "consul index went backwards; reading afresh"
            );
            self.index = 0;
            self.decode_all = true;
            self.reset_pending = true;
            return;
        }
        if listing.index == self.index {
            // The wait ran out: not a change.
            self.hub.mark_good();
            self.hub.mark_read_through(writes);
            return;
        }
        if std::mem::take(&mut self.reset_pending) && self.restarted(&listing) {
            self.hub.note_reset();
        }
        match self.publish(listing).await {
            Ok(()) => self.hub.mark_read_through(writes),
            Err(err) => {
                tracing::warn!(error = %err, "consul answer not applied; reading afresh");
                self.hub.mark_error(&err);
                self.index = 0;
                self.decode_all = true;
                backoff.wait().await;
            }
        }
    }

    /// Whether an answer read after the index went backwards comes from a restarted store,
    /// rather than from tombstones reaped under a deleted key (Consul's docs: indexes may go
    /// backwards in normal use): a key now older than we saw it was written anew, and an index
    /// below every key we knew predates all of them.
    fn restarted(&self, listing: &Listing) -> bool {
        let rewritten = listing.pairs.iter().any(|pair| {
            self.known
                .get(&pair.key)
                .is_some_and(|seen| pair.modify_index < *seen)
        });
        let before_all = self
            .known
            .values()
            .min()
            .is_some_and(|oldest| listing.index < *oldest);
        rewritten || before_all
    }

    /// Keeps the last good routes after a failed read and waits before the next.
    async fn failed(&mut self, err: &Error, backoff: &mut Backoff) {
        let delay = backoff.next_delay();
        tracing::warn!(error = %err, retry_in = ?delay, "consul watch failed; keeping the last good routes");
        self.hub.mark_error(err);
        tokio::time::sleep(delay).await;
    }
}
