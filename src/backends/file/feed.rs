//! The reader side of the file backend: one background task per manager that follows the file and
//! feeds the [`WatchHub`].
//!
//! It reloads on directory events (create / rename / delete of the file), on a poll that compares
//! the file's fingerprint (for file systems without events), and at the next heartbeat expiry (so a
//! crashed instance disappears without any writer touching the file). Every reload, whatever
//! triggered it, follows the same rule about which reads count:
//!
//! - **A file that parses is authoritative.** Its live routes replace the watchers' view and the
//!   differences are sent as events. That includes a document without routes
//!   (`{"Routes":{},"Instances":{}}`, what `RouteManager::clear` writes): emptying the registry on
//!   purpose removes every route.
//! - **Once the feed has read the file, a missing, unreadable, empty, partly written or unparsable
//!   file is an outage**, not an empty registry. An editor's save passes through exactly these
//!   states (the old file renamed away or deleted, then the new one written). The watchers keep
//!   the last good routes and get no events, the hub is marked stale with the reason (see
//!   [`crate::SyncStatus::is_stale`]), one warning is logged when the outage begins, and the file
//!   is re-read on every poll tick and directory event until it reads again. That first good read
//!   is diffed against the last good routes, so routes present in both versions produce no events.
//!   Heartbeat expiries wait for it too: during an outage the last good routes stay as read.
//! - **A file replaced by a document without routes is a registry-wide reset** (see
//!   [`crate::SyncStatus::resets`]): the routes are removed, and resolvers hold them for their
//!   empty protection's grace while instances write themselves back.
//! - **A file that is missing when the feed starts, and not seen since, is an empty registry**:
//!   there is nothing to protect yet (a fresh deployment whose first writer creates the file).
//!   A file that exists but does not parse when the feed starts fails the watch.

use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::blocking;
use super::document::Document;
use super::storage::{FileStorage, Fingerprint};
use crate::clock::now_ms;
use crate::error::{Error, ErrorKind, Result};
use crate::telemetry::traced;
use crate::watch::{writes_done, WatchHub};

/// Loads the file once (an error here is returned), then starts following it.
pub(crate) async fn start(
    storage: FileStorage,
    hub: Arc<WatchHub>,
    poll: Duration,
) -> Result<JoinHandle<()>> {
    let fingerprint = storage.fingerprint();
    let doc = load(&storage).await?;
    let mut reader = Reader {
        storage,
        hub,
        seen: doc.is_some(),
        outage: None,
        next_expiry: None,
        had_routes: false,
    };
    reader.publish(&doc.unwrap_or_default());
    Ok(tokio::spawn(reader.follow(poll, fingerprint)))
}

async fn load(storage: &FileStorage) -> Result<Option<Document>> {
    let storage = storage.clone();
    let read = blocking(move || storage.load());
    traced("file", "watch_read", read, |doc| {
        doc.as_ref().map_or(0, Document::route_count)
    })
    .await
}

/// The feed's state between reloads.
struct Reader {
    storage: FileStorage,
    hub: Arc<WatchHub>,
    /// Whether the file has been read since the feed started; from then on its absence is an
    /// outage rather than an empty registry.
    seen: bool,
    /// Why the file cannot be read, while it cannot (the last good routes are being served).
    outage: Option<String>,
    /// The next heartbeat expiry among the last good routes.
    next_expiry: Option<u64>,
    /// Whether the last good document held any route.
    had_routes: bool,
}

impl Reader {
    async fn follow(mut self, poll: Duration, mut fingerprint: Option<Fingerprint>) {
        let (tx, mut events) = mpsc::unbounded_channel();
        let _watcher = watch_directory(&self.storage, tx);
        loop {
            let until_expiry = self
                .next_expiry
                .map(|at| Duration::from_millis(at.saturating_sub(now_ms()) + 5))
                .unwrap_or(Duration::from_secs(3600));
            // Every write this process completed before the read begins is in what it reads.
            let mut writes = writes_done();
            tokio::select! {
                Some(()) = events.recv() => while events.try_recv().is_ok() {},
                // A new watcher wants this process's writes (read-your-writes): read now.
                () = self.hub.refresh_requested() => writes = writes_done(),
                _ = tokio::time::sleep(poll) => {
                    // During an outage every tick retries: a file made readable again (its
                    // permissions fixed) keeps its fingerprint.
                    if self.outage.is_none() && self.storage.fingerprint() == fingerprint {
                        continue;
                    }
                }
                _ = tokio::time::sleep(until_expiry) => {}
            }
            fingerprint = self.storage.fingerprint();
            if self.reload().await {
                self.hub.mark_read_through(writes);
            }
        }
    }

    /// Reads the file and applies the rule in the module's documentation; returns whether the
    /// read counted.
    async fn reload(&mut self) -> bool {
        match load(&self.storage).await {
            Ok(Some(doc)) => {
                self.seen = true;
                self.publish(&doc);
                true
            }
            Ok(None) if !self.seen => {
                self.publish(&Document::default());
                true
            }
            Ok(None) => {
                self.fail(Error::new(
                    ErrorKind::Unavailable,
                    format!("routes file {} is missing", self.storage.path().display()),
                ));
                false
            }
            Err(err) => {
                self.fail(err);
                false
            }
        }
    }

    /// An authoritative read: publishes the live routes of `doc`, ending any outage.
    fn publish(&mut self, doc: &Document) {
        if let Some(reason) = self.outage.take() {
            tracing::info!(path = %self.storage.path().display(), was = %reason, "routes file readable again");
        }
        let (routes, next_expiry) = doc.live_routes(now_ms());
        if doc.route_count() == 0 && self.had_routes {
            // The file was replaced by an empty document: a registry-wide reset, which
            // resolvers' empty protection rides out while instances write themselves back.
            self.hub.note_reset();
        }
        self.had_routes = doc.route_count() > 0;
        self.hub
            .replace_all(routes.into_values().map(Arc::new).collect());
        self.next_expiry = next_expiry;
    }

    /// A read that does not count: the last good routes stay and the hub is marked stale.
    fn fail(&mut self, err: Error) {
        let reason = err.to_string();
        match &self.outage {
            None => tracing::warn!(
                path = %self.storage.path().display(),
                error = %err,
                "routes file unreadable; keeping the last good routes until it reads again"
            ),
            Some(previous) if *previous != reason => {
                tracing::debug!(path = %self.storage.path().display(), error = %err, "routes file still unreadable");
            }
            Some(_) => {}
        }
        self.hub.mark_error(&err);
        self.outage = Some(reason);
        // Expiries are applied by the next good read; until then the poll retries.
        self.next_expiry = None;
    }
}

/// Watches the file's directory; `None` (polling only) when the platform refuses.
fn watch_directory(
    storage: &FileStorage,
    tx: mpsc::UnboundedSender<()>,
) -> Option<notify::RecommendedWatcher> {
    let name = storage.file_name().to_owned();
    let handler = move |event: notify::Result<notify::Event>| {
        let relevant = match &event {
            Ok(event) => event
                .paths
                .iter()
                .any(|p| p.file_name() == Some(name.as_os_str())),
            Err(_) => true,
        };
        if relevant {
            let _ = tx.send(());
        }
    };
    let result = notify::recommended_watcher(handler).and_then(|mut watcher| {
        watcher
            .watch(storage.dir(), RecursiveMode::NonRecursive)
            .map(|()| watcher)
    });
    match result {
        Ok(watcher) => Some(watcher),
        Err(err) => {
            tracing::warn!(dir = %storage.dir().display(), error = %err, "cannot watch directory; polling only");
            None
        }
    }
}
