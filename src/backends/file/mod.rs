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
//! does not exist yet when the watch starts is an empty registry. [`RouteSource::list`] is a
//! single read and reports a missing file as empty.

mod document;
mod election;
mod feed;
mod storage;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use self::document::{Document, InstanceRecord};
use self::storage::FileStorage;
use crate::clock::now_ms;
use crate::config::BackendOptions;
use crate::election::RegistryElection;
use crate::error::{Error, ErrorKind, Result};
use crate::manager::{Instance, RouteManager, RouteSource, DEFAULT_TTL};
use crate::registration::{Liveness, LivenessStore, Registration, Rewrite};
use crate::route::{Address, LayoutStyle, ServiceRoute};
use crate::telemetry::traced;
use crate::watch::{note_write, RouteWatch, SharedFeed};

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
    /// How the file is written: wayfinder's document (default), or Surging's own file (a BOM
    /// and a JSON array of routes) with the instances' liveness records beside it in
    /// `<file>.instances.json`. The `surging` layout assumes one writing process, as Surging's
    /// file does: another process's liveness is only pruned when that writer writes.
    pub layout: LayoutStyle,
}

impl FileConfig {
    /// The options `file://...?...` takes.
    pub const OPTIONS: &'static [&'static str] = &["layout", "ttl", "poll"];

    /// The configuration of the file at `location` that the options name.
    pub(crate) fn from_options(location: &str, options: &BackendOptions) -> Result<Self> {
        if location.is_empty() {
            return Err(Error::invalid_input(
                "file URL has no path (use file:///abs/path.json or file://./relative.json)",
            ));
        }
        options.accept_only(Self::OPTIONS)?;
        let mut config = FileConfig::new(location);
        config.layout = options.style()?;
        if let Some(ttl) = options.ttl()? {
            config.ttl = ttl;
        }
        if let Some(poll) = options.duration("poll")? {
            config.poll_interval = poll.max(Duration::from_millis(10));
        }
        Ok(config)
    }

    /// Defaults for a file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileConfig {
            path: path.into(),
            ttl: DEFAULT_TTL,
            poll_interval: DEFAULT_POLL_INTERVAL,
            layout: LayoutStyle::Instances,
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
    /// Since when renewals have found the file missing (an editor's save in progress, or a file
    /// deleted for good: after a whole TTL, registrations write it again).
    missing_since: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
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
        let storage = FileStorage::new(config.path.clone(), config.layout)?;
        Ok(FileRouteManager {
            inner: Arc::new(FileStore {
                config,
                storage,
                feed: SharedFeed::new(),
                missing_since: Arc::default(),
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
        let ttl = self.ttl_of(instance);
        let expires = expiry(ttl);
        let missing_since = self.missing_since.clone();
        let path = self.storage.path().display().to_string();
        let storage = self.storage.clone();
        let alive = blocking(move || {
            storage.update_with(move |doc, existed| {
                let mut since = missing_since
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if existed {
                    *since = None;
                    return Ok(doc.touch(&id, &lease, expires));
                }
                // A missing file is most often an editor's save in progress: writing now would
                // replace everybody's routes with this instance's alone. Wait for the file for a
                // whole TTL; after that it is gone for good and the instance registers again.
                let first = *since.get_or_insert_with(std::time::Instant::now);
                if first.elapsed() < ttl {
                    return Err(Error::new(
                        ErrorKind::Unavailable,
                        format!("routes file {path} is missing; renewal waits for it"),
                    ));
                }
                *since = None;
                Ok(false)
            })
        })
        .await?;
        Ok(if alive {
            Liveness::Alive
        } else {
            Liveness::Lost
        })
    }

    async fn heal(&self, instance: &Instance, lease: &String, which: Rewrite) -> Result<usize> {
        // Read without the lock first: the file is rewritten only when something is missing.
        let storage = self.storage.clone();
        let (check, lease_) = (instance.clone(), lease.clone());
        let missing = blocking(move || match storage.load_for_writer()? {
            Some(doc) => Ok(!doc.stale_routes(&check, &lease_, which)?.is_empty()),
            None => Ok(false),
        })
        .await?;
        if !missing {
            return Ok(0);
        }
        let (instance, lease) = (instance.clone(), lease.clone());
        self.update(move |doc| doc.heal(&instance, &lease, which))
            .await
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
impl RouteSource for FileRouteManager {
    fn backend(&self) -> &'static str {
        "file"
    }

    fn default_ttl(&self) -> Duration {
        self.inner.config.ttl
    }

    fn registry_id(&self) -> String {
        // The directory exists once the manager does; the file may not yet.
        let storage = &self.inner.storage;
        let dir = std::fs::canonicalize(storage.dir()).unwrap_or_else(|_| storage.dir().into());
        format!("file {}", dir.join(storage.file_name()).display())
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

    async fn watch(&self) -> Result<RouteWatch> {
        let (storage, poll) = (self.inner.storage.clone(), self.inner.config.poll_interval);
        self.inner
            .feed
            .watch(|hub| feed::start(storage, hub, poll))
            .await
    }
}

#[async_trait]
impl RouteManager for FileRouteManager {
    fn election(&self) -> Result<Arc<dyn crate::election::Election>> {
        let store = election::FileElections::beside(self.inner.storage.path());
        let ttl = self.inner.config.ttl;
        Ok(Arc::new(RegistryElection::new(
            Arc::new(store),
            ttl,
            "file",
        )))
    }

    async fn register(&self, instance: Instance) -> Result<Registration> {
        Registration::start(
            Arc::new(self.clone()),
            self.inner.clone(),
            instance,
            self.inner.config.ttl,
        )
        .await
    }

    async fn remove_addresses(&self, addresses: &[Address]) -> Result<usize> {
        traced(
            "file",
            "remove_addresses",
            async {
                let addresses = addresses.to_vec();
                let removed = self
                    .inner
                    .update(move |doc| doc.remove_addresses(&addresses))
                    .await?;
                note_write();
                Ok(removed)
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
                    .await?;
                note_write();
                Ok(())
            },
            |_| 0,
        )
        .await
    }
}
