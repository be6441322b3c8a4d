//! The reader side of the file backend: one background task per manager that follows the file and
//! feeds the [`WatchHub`].
//!
//! It reloads on directory events (create / rename / delete of the file), on a poll that compares
//! the file's fingerprint (for file systems without events), and at the next heartbeat expiry (so a
//! crashed instance disappears without any writer touching the file). A file that cannot be read
//! or parsed leaves the last good routes in place.

use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::blocking;
use super::document::Document;
use super::storage::{FileStorage, Fingerprint};
use crate::clock::now_ms;
use crate::error::Result;
use crate::telemetry::traced;
use crate::watch::WatchHub;

/// Loads the file once (an error here is returned), then starts following it.
pub(crate) async fn start(
    storage: FileStorage,
    hub: Arc<WatchHub>,
    poll: Duration,
) -> Result<JoinHandle<()>> {
    let fingerprint = storage.fingerprint();
    let doc = load(&storage).await?;
    let next_expiry = publish(&hub, &doc);
    Ok(tokio::spawn(follow(
        storage,
        hub,
        poll,
        fingerprint,
        next_expiry,
    )))
}

async fn load(storage: &FileStorage) -> Result<Document> {
    let storage = storage.clone();
    let read = blocking(move || storage.load());
    traced("file", "watch_read", read, Document::route_count).await
}

/// Publishes the live routes of `doc`; returns the next heartbeat expiry.
fn publish(hub: &WatchHub, doc: &Document) -> Option<u64> {
    let (routes, next_expiry) = doc.live_routes(now_ms());
    hub.replace_all(
        routes
            .into_iter()
            .map(|(id, r)| (id, Arc::new(r)))
            .collect(),
    );
    next_expiry
}

async fn follow(
    storage: FileStorage,
    hub: Arc<WatchHub>,
    poll: Duration,
    mut fingerprint: Option<Fingerprint>,
    mut next_expiry: Option<u64>,
) {
    let (tx, mut events) = mpsc::unbounded_channel();
    let _watcher = watch_directory(&storage, tx);
    let mut last_error: Option<String> = None;
    loop {
        let until_expiry = next_expiry
            .map(|at| Duration::from_millis(at.saturating_sub(now_ms()) + 5))
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            Some(()) = events.recv() => while events.try_recv().is_ok() {},
            _ = tokio::time::sleep(poll) => {
                if storage.fingerprint() == fingerprint {
                    continue;
                }
            }
            _ = tokio::time::sleep(until_expiry) => {}
        }
        fingerprint = storage.fingerprint();
        match load(&storage).await {
            Ok(doc) => {
                if last_error.take().is_some() {
                    tracing::info!(path = %storage.path().display(), "routes file readable again");
                }
                next_expiry = publish(&hub, &doc);
            }
            Err(err) => {
                if last_error.as_deref() != Some(err.message()) {
                    tracing::warn!(path = %storage.path().display(), error = %err, "keeping the last good routes");
                    last_error = Some(err.message().to_owned());
                }
                hub.mark_error(&err);
            }
        }
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
