//! Shared-file backend: one JSON file on a local or network file system; needs no server.
//!
//! The file's layout, the writers' locking and the readers' watch are described in the
//! `document`, `storage` and `feed` modules.
//!
//! A watch (and so an [`crate::AddressResolver`]) treats the file as an outage, not as an empty
//! registry, once it has read it and it then goes missing, unreadable, empty, partly written or
//! unparsable: it keeps the last good routes, reports itself stale, and sends only the real
//! differences when the file reads again. An editor's save (rename away and write anew, or
//! delete and recreate) thus causes no spurious `Removed` / `Created` events. A document without
//! routes is authoritative, so [`RouteManager::clear`] still empties the registry, and a file that
//! does not exist yet when the watch starts is an empty registry. [`RouteManager::list`] is a
//! single read and reports a missing file as empty.

mod document;
mod feed;
mod storage;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use self::document::{Document, InstanceRecord};
use self::storage::FileStorage;
use crate::clock::now_ms;
use crate::error::{Error, ErrorKind, Result};
use crate::manager::{Instance, RouteManager, DEFAULT_TTL};
use crate::registration::{Liveness, LivenessStore, Registration};
use crate::route::{Address, ServiceRoute};
use crate::telemetry::traced;
use crate::watch::{RouteWatch, SharedFeed};

/// Default interval of the polling fallback that catches changes the directory watch missed.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Options of the file backend (`file:///path/routes.json?ttl=..&poll=..`).
#[derive(Debug, Clone)]
pub struct FileConfig {
    /// The routes file; its directory is created if missing.
    pub path: PathBuf,
    /// Default registration TTL.
    pub ttl: Duration,
    /// Polling fallback interval.
    pub poll_interval: Duration,
}

impl FileConfig {
    /// Defaults for a file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileConfig {
            path: path.into(),
            ttl: DEFAULT_TTL,
            poll_interval: DEFAULT_POLL_INTERVAL,
        }
    }
}

/// A registry kept in one shared JSON file.
#[derive(Debug, Clone)]
pub struct FileRouteManager {
    inner: Arc<FileStore>,
}

struct FileStore {
    config: FileConfig,
    storage: FileStorage,
    feed: SharedFeed,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl FileRouteManager {
    /// A manager for the file in `config`.
    pub fn new(config: FileConfig) -> Result<Self> {
        let storage = FileStorage::new(config.path.clone())?;
        Ok(FileRouteManager {
            inner: Arc::new(FileStore {
                config,
                storage,
                feed: SharedFeed::new(),
            }),
        })
    }

    /// The routes file.
    pub fn path(&self) -> &std::path::Path {
        self.inner.storage.path()
    }
}

/// Runs blocking file work off the async threads.
pub(crate) async fn blocking<R: Send + 'static>(
    work: impl FnOnce() -> Result<R> + Send + 'static,
) -> Result<R> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::new(ErrorKind::Closed, "file task ended abnormally").with_source(e))?
}

impl FileStore {
    async fn update<R: Send + 'static>(
        &self,
        edit: impl FnOnce(&mut Document) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let storage = self.storage.clone();
        blocking(move || storage.update(edit)).await
    }

    fn ttl_of(&self, instance: &Instance) -> Duration {
        instance.ttl.unwrap_or(self.config.ttl)
    }
}

fn new_lease() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

fn expiry(ttl: Duration) -> u64 {
    now_ms() + ttl.as_millis() as u64
}

#[async_trait]
impl LivenessStore for FileStore {
    type Lease = String;
    const BACKEND: &'static str = "file";

    async fn put_instance(&self, instance: &Instance, ttl: Duration) -> Result<String> {
        let lease = new_lease();
        let record = InstanceRecord {
            expires: expiry(ttl),
            lease: lease.clone(),
            removed: false,
        };
        let instance = instance.clone();
        self.update(move |doc| doc.put_instance(&instance, record))
            .await?;
        Ok(lease)
    }

    async fn keep_alive(&self, instance: &Instance, lease: &String) -> Result<Liveness> {
        let id = instance.id()?;
        let lease = lease.clone();
        let expires = expiry(self.ttl_of(instance));
        let alive = self
            .update(move |doc| Ok(doc.touch(&id, &lease, expires)))
            .await?;
        Ok(if alive {
            Liveness::Alive
        } else {
            Liveness::Lost
        })
    }

    async fn heal(&self, instance: &Instance, lease: &String) -> Result<usize> {
        // Read without the lock first: the file is rewritten only when something is missing.
        let storage = self.storage.clone();
        let (check, lease_) = (instance.clone(), lease.clone());
        let missing = blocking(move || match storage.read()? {
            Some(bytes) if !bytes.iter().all(u8::is_ascii_whitespace) => {
                Ok(!Document::parse(&bytes)?
                    .missing_routes(&check, &lease_)?
                    .is_empty())
            }
            _ => Ok(false),
        })
        .await?;
        if !missing {
            return Ok(0);
        }
        let (instance, lease) = (instance.clone(), lease.clone());
        self.update(move |doc| doc.heal(&instance, &lease)).await
    }

    async fn remove_instance(&self, instance: &Instance, lease: String) -> Result<()> {
        let id = instance.id()?;
        self.update(move |doc| {
            doc.remove_instance(&id, &lease);
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl RouteManager for FileRouteManager {
    fn backend(&self) -> &'static str {
        "file"
    }

    async fn list(&self) -> Result<Vec<ServiceRoute>> {
        traced(
            "file",
            "list",
            async {
                let storage = self.inner.storage.clone();
                let doc = blocking(move || match storage.read()? {
                    Some(bytes) if !bytes.iter().all(u8::is_ascii_whitespace) => {
                        Document::parse(&bytes)
                    }
                    _ => Ok(Document::default()),
                })
                .await?;
                Ok(doc.live_routes(now_ms()).0.into_values().collect())
            },
            Vec::len,
        )
        .await
    }

    async fn register(&self, instance: Instance) -> Result<Registration> {
        Registration::start(self.inner.clone(), instance, self.inner.config.ttl).await
    }

    async fn remove_addresses(&self, addresses: &[Address]) -> Result<usize> {
        traced(
            "file",
            "remove_addresses",
            async {
                let addresses = addresses.to_vec();
                self.inner
                    .update(move |doc| doc.remove_addresses(&addresses))
                    .await
            },
            |removed| *removed,
        )
        .await
    }

    async fn clear(&self) -> Result<()> {
        traced(
            "file",
            "clear",
            async {
                self.inner
                    .update(|doc| {
                        doc.clear();
                        Ok(())
                    })
                    .await
            },
            |_| 0,
        )
        .await
    }

    async fn watch(&self) -> Result<RouteWatch> {
        let (storage, poll) = (self.inner.storage.clone(), self.inner.config.poll_interval);
        self.inner
            .feed
            .watch(|hub| feed::start(storage, hub, poll))
            .await
    }
}
