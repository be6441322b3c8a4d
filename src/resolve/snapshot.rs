//! The resolver's snapshot file: its last good routes, for a start while the registry cannot be
//! read (after nacos-sdk-rust's cache loaded at start and Dubbo's registry cache file).
//!
//! ```json
//! {"Format":"wayfinder-snapshot","Version":1,"Registry":"etcd services/serviceRoutes/",
//!  "Written":1763740000000,"Routes":[{"AddressDescriptors":[..],"ServiceDescriptor":{..}}]}
//! ```
//! Routes are in Surging's form. `Registry` names the registry and namespace the routes came
//! from; a snapshot of another one, or one that does not parse, is ignored with a warning. The
//! file is written to a temporary file in the same directory and renamed over the old one, at
//! most once per [`MIN_WRITE_INTERVAL`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::table::RouteTable;
use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::route::{decode_route_value, encode_route_value, ServiceRoute};

/// Shortest time between two writes of the snapshot.
pub(crate) const MIN_WRITE_INTERVAL: Duration = Duration::from_secs(1);

const FORMAT: &str = "wayfinder-snapshot";
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct SnapshotDocument {
    #[serde(rename = "Format")]
    format: String,
    #[serde(rename = "Version")]
    version: u32,
    #[serde(rename = "Registry")]
    registry: String,
    /// When it was written, ms since the Unix epoch.
    #[serde(rename = "Written")]
    written: u64,
    #[serde(rename = "Routes")]
    routes: Vec<Value>,
}

/// Routes read back from a snapshot.
pub(crate) struct Snapshot {
    pub routes: Vec<Arc<ServiceRoute>>,
    pub written: SystemTime,
}

/// Reads the snapshot at `path` written for `registry`; `None` (with a warning) when it is
/// missing, corrupt, of another format or of another registry.
pub(crate) async fn load(path: &Path, registry: &str) -> Option<Snapshot> {
    let bytes = match tokio::fs::read(path).await {
        Ok(bytes) => bytes,
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "no snapshot to serve");
            return None;
        }
    };
    match parse(&bytes, registry) {
        Ok(snapshot) => Some(snapshot),
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "ignoring the snapshot");
            None
        }
    }
}

fn parse(bytes: &[u8], registry: &str) -> Result<Snapshot> {
    let doc: SnapshotDocument = serde_json::from_slice(bytes)
        .map_err(|e| Error::malformed(format!("snapshot does not parse: {e}")))?;
    if doc.format != FORMAT || doc.version != VERSION {
        return Err(Error::malformed(format!(
            "snapshot is {} version {}, not {FORMAT} version {VERSION}",
            doc.format, doc.version
        )));
    }
    if doc.registry != registry {
        return Err(Error::malformed(format!(
            "snapshot is of registry {:?}, not {registry:?}",
            doc.registry
        )));
    }
    let mut routes = Vec::with_capacity(doc.routes.len());
    for value in doc.routes {
        match decode_route_value(value) {
            Ok(route) => routes.push(Arc::new(route)),
            Err(err) => tracing::warn!(error = %err, "skipping a malformed route of the snapshot"),
        }
    }
    Ok(Snapshot {
        routes,
        written: UNIX_EPOCH + Duration::from_millis(doc.written),
    })
}

fn encode(table: &RouteTable, registry: &str) -> Result<Vec<u8>> {
    let routes = table
        .entries()
        .map(|entry| encode_route_value(entry.route()))
        .collect::<Result<Vec<_>>>()?;
    let doc = SnapshotDocument {
        format: FORMAT.to_owned(),
        version: VERSION,
        registry: registry.to_owned(),
        written: now_ms(),
        routes,
    };
    serde_json::to_vec(&doc).map_err(|e| Error::invalid_input(format!("snapshot: {e}")))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, renamed over it.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = dir.join(format!(".{name}.{:016x}.tmp", fastrand::u64(..)));
    let written = std::fs::write(&temp, bytes)
        .and_then(|()| std::fs::File::open(&temp)?.sync_all())
        .and_then(|()| std::fs::rename(&temp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// Writes every new table to the snapshot, at most once per [`MIN_WRITE_INTERVAL`] (the newest
/// table wins). Ends when the sender is dropped.
pub(crate) fn spawn_writer(
    path: PathBuf,
    registry: String,
    mut tables: watch::Receiver<Option<Arc<RouteTable>>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_error: Option<String> = None;
        while tables.changed().await.is_ok() {
            let Some(table) = tables.borrow_and_update().clone() else {
                continue;
            };
            let (path_, registry_) = (path.clone(), registry.clone());
            let written = tokio::task::spawn_blocking(move || {
                let bytes = encode(&table, &registry_)?;
                write_atomically(&path_, &bytes).map_err(|e| {
                    Error::from(e).context(format!("write snapshot {}", path_.display()))
                })
            })
            .await;
            match written {
                Ok(Ok(())) => last_error = None,
                Ok(Err(err)) => {
                    if last_error.as_deref() != Some(err.message()) {
                        tracing::warn!(error = %err, "cannot write the snapshot");
                        last_error = Some(err.message().to_owned());
                    }
                }
                Err(_) => return,
            }
            tokio::time::sleep(MIN_WRITE_INTERVAL).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{Address, ServiceDescriptor};

    fn table() -> RouteTable {
        let route = ServiceRoute::new(
            ServiceDescriptor::new("A.IUserService.Get", "api/user/get"),
            vec![Address::new("127.0.0.1", 9000)],
        );
        let mut view = crate::resolve::view::View::new(std::time::Duration::ZERO);
        view.upsert(Arc::new(route), &crate::resolve::ResolverConfig::default());
        view.table()
    }

    #[test]
    fn a_snapshot_reads_back_for_its_registry_only() {
        let bytes = encode(&table(), "memory a/").unwrap();
        let snapshot = parse(&bytes, "memory a/").unwrap();
        assert_eq!(snapshot.routes.len(), 1);
        assert_eq!(snapshot.routes[0].route_path(), "api/user/get");
        let foreign = parse(&bytes, "memory b/").err().unwrap();
        assert!(
            foreign.to_string().contains("not \"memory b/\""),
            "{foreign}"
        );
        let corrupt = parse(&bytes[..bytes.len() / 2], "memory a/").err().unwrap();
        assert!(corrupt.to_string().contains("does not parse"), "{corrupt}");
        let other = parse(
            br#"{"Format":"x","Version":1,"Registry":"memory a/","Written":0,"Routes":[]}"#,
            "memory a/",
        );
        assert!(other.is_err());
    }

    #[test]
    fn writes_replace_the_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/snapshot.json");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let leftovers = std::fs::read_dir(path.parent().unwrap()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file is left behind");
    }
}
