//! The reader side of the etcd backend: one task per manager that keeps the [`WatchHub`] current.
//!
//! It lists the prefix (pinned to one revision), then watches from that revision + 1 on clients
//! that send `hasleader`, so a member cut off from the cluster does not keep a silent stream.
//! Each stream is opened through [`Members`], on a member that answers; a watch that etcd
//! cancels because it no longer knows the client's token (after a restart, say) counts as a
//! refused token, so that member's client authenticates again.
//! Every response advances the revision (progress notifications too), so a reconnect resumes
//! where the stream stopped. A compacted revision means events were lost: it lists again and
//! the hub emits whatever changed meanwhile, deletions included. An idle stream is probed with a
//! progress request; no answer within the deadline counts as a stall and the stream is replaced.
//! Failures back off exponentially (capped, with jitter) and leave the last good routes in place.
//! A response whose header revision is behind ours, or whose cluster id changed, means the store
//! went backwards (restored from a backup, rebuilt empty): it lists again and publishes that as a
//! reset, which resolvers ride out with their empty protection. A new watcher's request for a
//! fresh read (read-your-writes) also lists again and restarts the stream after that listing.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, WatchOptions, WatchResponse, WatchStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::members::{is_stale_token_message, Members};
use super::{etcd_error, is_compacted, load_entries, EtcdConfig, MAX_MESSAGE_BYTES};
use crate::backoff::Backoff;
use crate::error::{Error, ErrorKind, Result};
use crate::route::{decode_entry, RouteEntries};
use crate::telemetry::traced;
use crate::watch::{writes_done, WatchHub};

/// Idle time after which the stream is asked for a progress notification.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// Most responses taken in one batch (see `Follower::receive_batch`).
const BATCH_LIMIT: usize = 1024;
/// Time a progress request has to be answered before the stream counts as stalled.
const PROGRESS_DEADLINE: Duration = Duration::from_secs(5);

/// Lists once (an error here is returned), then follows the prefix in the background.
pub(crate) async fn start(
    config: EtcdConfig,
    members: Arc<Members>,
    watch_members: Arc<Members>,
    scope: String,
    hub: Arc<WatchHub>,
) -> Result<JoinHandle<()>> {
    let load = load_entries(&members, &config.layout, &scope);
    let (entries, revision) = traced("etcd", "watch_list", load, |(e, _)| e.key_count()).await?;
    hub.replace_all(entries.all_merged());
    let follower = Follower {
        config,
        members,
        watch_members,
        scope,
        hub,
        entries,
        revision,
        cluster_id: None,
        new_cluster: false,
        delivered: false,
    };
    Ok(tokio::spawn(follower.run()))
}

enum Interruption {
    /// Events between our revision and now are gone: list again.
    Compacted,
    /// The registry went backwards (its revision fell below ours, or the cluster id changed: a
    /// store restored or rebuilt): list again and publish it as a reset.
    Reset,
    /// A new watcher asked for a fresh read (read-your-writes): list again.
    Refresh,
    /// The stream failed or stalled: reconnect after a delay.
    Failed(Error),
}

struct Follower {
    config: EtcdConfig,
    /// Listings.
    members: Arc<Members>,
    /// Watch streams (clients that require a leader).
    watch_members: Arc<Members>,
    /// The service-id prefix followed (empty: every service).
    scope: String,
    hub: Arc<WatchHub>,
    entries: RouteEntries,
    /// Every event up to and including this revision has been applied.
    revision: i64,
    /// The cluster the responses came from, once one said.
    cluster_id: Option<u64>,
    /// The cluster id changed since the last listing.
    new_cluster: bool,
    /// Whether the current stream delivered anything (then a failure starts backing off afresh).
    delivered: bool,
}

impl Follower {
    async fn run(mut self) {
        let mut backoff = Backoff::reconnect();
        loop {
            let interruption = self.watch().await;
            let result = match interruption {
                Interruption::Compacted => {
                    tracing::warn!(
                        revision = self.revision,
                        "etcd history compacted past our revision; listing again"
                    );
                    self.hub.note_reconnect();
                    self.relist(false).await
                }
                Interruption::Reset => {
                    let before = self.revision;
                    let relisted = self.relist(true).await;
                    if relisted.is_ok() && self.revision >= before {
                        // Only a member that lags behind: wait for it to catch up.
                        tokio::time::sleep(backoff.next_delay()).await;
                        continue;
                    }
                    relisted
                }
                Interruption::Refresh => self.relist(false).await,
                Interruption::Failed(err) => Err(err),
            };
            if std::mem::take(&mut self.delivered) {
                backoff.reset();
            }
            match result {
                Ok(()) => backoff.reset(),
                Err(err) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %err, retry_in = ?delay, "etcd watch interrupted; keeping the last good routes");
                    self.hub.mark_error(&err);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Lists the prefix again and publishes it; the next stream starts after the listing's
    /// revision. With `check_reset`, a listing (linearizable) behind our revision, or from a new
    /// cluster, is published as a registry-wide reset.
    async fn relist(&mut self, check_reset: bool) -> Result<()> {
        let writes = writes_done();
        let load = load_entries(&self.members, &self.config.layout, &self.scope);
        let (entries, revision) =
            traced("etcd", "watch_list", load, |(e, _)| e.key_count()).await?;
        let went_back = revision < self.revision || std::mem::take(&mut self.new_cluster);
        self.entries = entries;
        self.revision = revision;
        if check_reset && went_back {
            tracing::warn!(
                revision,
                "etcd went backwards (restored or rebuilt): a reset"
            );
            self.hub.note_reset();
        }
        self.hub.replace_all(self.entries.all_merged());
        self.hub.mark_read_through(writes);
        Ok(())
    }

    /// Follows one watch stream until it is interrupted.
    async fn watch(&mut self) -> Interruption {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.revision + 1)
            .with_progress_notify();
        let range = format!("{}{}", self.config.layout.prefix(), self.scope);
        let prefix = range.as_str();
        let opened = self
            .watch_members
            .call("watch", |mut client| {
                let options = options.clone();
                async move { open(&mut client, prefix, options).await }
            })
            .await;
        let (mut stream, first) = match opened {
            Ok(Some(opened)) => opened,
            Ok(None) => return Interruption::Compacted,
            Err(err) => return Interruption::Failed(err),
        };
        let first = self.receive(first);
        self.hub.set_many(self.entries.take_changed());
        if let Some(interruption) = first {
            return interruption;
        }
        let mut quiet_until = Instant::now() + PROGRESS_INTERVAL;
        let mut progress_asked = false;
        loop {
            tokio::select! {
                message = stream.message() => {
                    let batch = self.receive_batch(&mut stream, message).await;
                    // One merge and one event per route the batch touched, however many of its
                    // instances changed.
                    self.hub.set_many(self.entries.take_changed());
                    if let Err(interruption) = batch {
                        return interruption;
                    }
                    quiet_until = Instant::now() + PROGRESS_INTERVAL;
                    progress_asked = false;
                },
                () = self.hub.refresh_requested() => return Interruption::Refresh,
                _ = tokio::time::sleep_until(quiet_until) => {
                    if progress_asked {
                        return Interruption::Failed(Error::new(
                            ErrorKind::Unavailable,
                            "etcd watch stalled: no answer to a progress request",
                        ));
                    }
                    if let Err(err) = stream.request_progress().await {
                        return Interruption::Failed(etcd_error("watch progress request", err));
                    }
                    progress_asked = true;
                    quiet_until = Instant::now() + PROGRESS_DEADLINE;
                }
            }
        }
    }

    /// Takes a message of the stream and every response already waiting behind it (up to
    /// [`BATCH_LIMIT`]), so that a client that fell behind catches up in one step.
    async fn receive_batch(
        &mut self,
        stream: &mut WatchStream,
        first: std::result::Result<Option<WatchResponse>, etcd_client::Error>,
    ) -> std::result::Result<(), Interruption> {
        let mut message = first;
        for _ in 0..BATCH_LIMIT {
            let response = match message {
                Ok(Some(response)) => response,
                Ok(None) => {
                    let ended = Error::new(ErrorKind::Unavailable, "etcd watch stream ended");
                    return Err(Interruption::Failed(ended));
                }
                Err(err) if is_compacted(&err) => return Err(Interruption::Compacted),
                Err(err) => return Err(Interruption::Failed(etcd_error("watch", err))),
            };
            if let Some(interruption) = self.receive(response) {
                return Err(interruption);
            }
            // Poll the stream once: a response already there, or none (a timer would wait for
            // its next tick, up to a millisecond).
            tokio::select! {
                biased;
                next = stream.message() => message = next,
                () = std::future::ready(()) => break,
            }
        }
        Ok(())
    }

    /// Takes one response of the stream; returns why the stream must end, if it must.
    fn receive(&mut self, response: WatchResponse) -> Option<Interruption> {
        let interruption = self.apply(response);
        if interruption.is_none() {
            // A reply after an outage: the view is current again.
            self.hub.mark_good();
            self.delivered = true;
        }
        interruption
    }

    /// Applies one watch response; returns why the stream must end, if it must.
    fn apply(&mut self, response: WatchResponse) -> Option<Interruption> {
        if response.compact_revision() > 0 {
            return Some(Interruption::Compacted);
        }
        if let Some(header) = response.header() {
            let cluster = header.cluster_id();
            match self.cluster_id {
                Some(known) if cluster != 0 && known != cluster => {
                    self.cluster_id = Some(cluster);
                    self.new_cluster = true;
                    return Some(Interruption::Reset);
                }
                None if cluster != 0 => self.cluster_id = Some(cluster),
                _ => {}
            }
            // Every event up to our revision happened; a store now behind it lost them.
            if header.revision() > 0 && header.revision() < self.revision {
                return Some(Interruption::Reset);
            }
        }
        if response.canceled() {
            let reason = response.cancel_reason().to_owned();
            if reason.contains("compacted") {
                return Some(Interruption::Compacted);
            }
            return Some(Interruption::Failed(Error::new(
                ErrorKind::Unavailable,
                format!("etcd canceled the watch: {reason}"),
            )));
        }
        let layout = &self.config.layout;
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            self.revision = self.revision.max(kv.mod_revision());
            let Ok(key) = kv.key_str() else { continue };
            match event.event_type() {
                EventType::Put => match decode_entry(layout, key, kv.value()) {
                    Ok((entry_key, route)) => {
                        self.entries
                            .put(&entry_key, kv.mod_revision() as u64, route)
                    }
                    Err(err) => {
                        tracing::warn!(%key, error = %err, "skipping malformed registry entry")
                    }
                },
                EventType::Delete => {
                    if let Some(entry_key) = layout.parse(key) {
                        self.entries.remove(&entry_key);
                    }
                }
            }
        }

        // A progress notification (no events, not the creation reply) means every event up
        // to its header revision has been delivered.
        if response.events().is_empty() && !response.created() {
            if let Some(header) = response.header() {
                self.revision = self.revision.max(header.revision());
            }
        }
        None
    }
}

/// Opens a watch stream and waits for its first response (the creation reply, or a
/// cancellation); `None` when the start revision was compacted away. A watch etcd cancels at
/// once because it does not know the token is reported as a refused token, so [`Members`]
/// authenticates that member again and repeats; a stream that ends before answering counts as a
/// failed member.
async fn open(
    client: &mut etcd_client::Client,
    prefix: &str,
    options: WatchOptions,
) -> std::result::Result<Option<(WatchStream, WatchResponse)>, etcd_client::Error> {
    // A response carries whole transactions, of values up to `MAX_VALUE_BYTES` each.
    let mut watcher = client
        .watch_client()
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let mut stream = match watcher.watch(prefix, Some(options)).await {
        Ok(stream) => stream,
        Err(err) if is_compacted(&err) => return Ok(None),
        Err(err) => return Err(err),
    };
    match stream.message().await {
        Ok(Some(first)) if first.canceled() && is_stale_token_message(first.cancel_reason()) => {
            Err(etcd_client::Error::WatchError(format!(
                "etcd canceled the watch: {}",
                first.cancel_reason()
            )))
        }
        Ok(Some(first)) => Ok(Some((stream, first))),
        Ok(None) => Err(etcd_client::Error::WatchError(
            "the watch stream ended before the watch was created".to_owned(),
        )),
        Err(err) if is_compacted(&err) => Ok(None),
        Err(err) => Err(err),
    }
}
