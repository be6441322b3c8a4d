//! Reading and atomically rewriting the shared file.
//!
//! Writers take an exclusive lock on a separate `<file>.lock` (never the data file, which is
//! replaced by rename), re-read the file under the lock, write a temp file in the same directory,
//! fsync it, rename it over the file and fsync the directory. Readers never lock: they always see
//! either the old or the new file, never a partial one, as long as every writer is this code.
//!
//! In the `surging` layout the file is Surging's own (a BOM and a JSON array of routes) and the
//! instances' liveness records go to `<file>.instances.json` beside it, written under the same
//! lock, so Surging reads the file as it writes it.
//!
//! Other writers (an editor, a deploy script) may not be as careful: a save that renames the file
//! away before writing the new one leaves no file for a moment, and a write in place leaves an
//! empty or half-written one. Readers cannot tell those apart from a real outage, so the watch
//! feed treats all of them as one (see `feed`).

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind as IoKind, Write};
use std::path::{Path, PathBuf};

use super::document::Document;
use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::route::LayoutStyle;

/// A cheap fingerprint of the file, to notice changes when polling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    len: u64,
    modified: Option<std::time::SystemTime>,
    inode: u64,
}

/// The location of a shared routes file and its lock file.
#[derive(Debug, Clone)]
pub(crate) struct FileStorage {
    path: PathBuf,
    lock_path: PathBuf,
    dir: PathBuf,
    /// Where the liveness records go in the `surging` layout (`<file>.instances.json`).
    records_path: Option<PathBuf>,
}

impl FileStorage {
    /// The storage for `path`, written in `style`; its directory is created if missing.
    pub(crate) fn new(path: PathBuf, style: LayoutStyle) -> Result<Self> {
        let file_name = path
            .file_name()
            .ok_or_else(|| Error::invalid_input(format!("{} is not a file path", path.display())))?
            .to_owned();
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let beside = |suffix: &str| {
            let mut name = file_name.clone();
            name.push(suffix);
            dir.join(name)
        };
        Ok(FileStorage {
            lock_path: beside(".lock"),
            records_path: (style == LayoutStyle::Surging).then(|| beside(".instances.json")),
            dir,
            path,
        })
    }

    /// The routes file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The directory holding it.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file's name, to pick its events out of a directory watch.
    pub(crate) fn file_name(&self) -> &std::ffi::OsStr {
        self.path.file_name().unwrap_or_default()
    }

    /// The current fingerprint, `None` when the file does not exist.
    pub(crate) fn fingerprint(&self) -> Option<Fingerprint> {
        let meta = fs::metadata(&self.path).ok()?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let inode = 0;
        Some(Fingerprint {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode,
        })
    }

    /// Reads the file; `None` when it does not exist (an empty registry).
    pub(crate) fn read(&self) -> Result<Option<Vec<u8>>> {
        match fs::read(&self.path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == IoKind::NotFound => Ok(None),
            Err(e) => Err(io_error(&self.path, "read", e)),
        }
    }

    /// Reads and parses the file; `None` when it does not exist.
    ///
    /// What a missing file means is the caller's call: the watch feed treats it as an empty
    /// registry only until it has read the file once, and as an outage after (see `feed`).
    /// An empty or partial file is an error, never an empty document.
    pub(crate) fn load(&self) -> Result<Option<Document>> {
        self.read()?
            .map(|bytes| Document::parse(&bytes))
            .transpose()
    }

    /// Reads the document as a writer sees it (in the `surging` layout, with the liveness
    /// records kept beside the file), without the lock; `None` when the file does not exist or
    /// is blank.
    pub(crate) fn load_for_writer(&self) -> Result<Option<Document>> {
        let mut doc = match self.read()? {
            Some(bytes) if !bytes.iter().all(u8::is_ascii_whitespace) => Document::parse(&bytes)?,
            _ => return Ok(None),
        };
        self.adopt_records(&mut doc)?;
        Ok(Some(doc))
    }

    fn adopt_records(&self, doc: &mut Document) -> Result<()> {
        if let Some(records) = &self.records_path {
            match fs::read(records) {
                Ok(bytes) => doc.adopt_records(&bytes),
                Err(e) if e.kind() == IoKind::NotFound => {}
                Err(e) => return Err(io_error(records, "read", e)),
            }
        }
        Ok(())
    }

    /// Runs `edit` on the current document under the writers' lock and writes the result.
    ///
    /// Expired instances are pruned first. A file that does not parse is left alone (an error is
    /// returned) so nothing in it is lost; an empty file counts as an empty document.
    pub(crate) fn update<R>(&self, edit: impl FnOnce(&mut Document) -> Result<R>) -> Result<R> {
        self.update_with(|doc, _| edit(doc))
    }

    /// Like [`FileStorage::update`], telling `edit` whether the file existed; an error from
    /// `edit` leaves the file as it is.
    pub(crate) fn update_with<R>(
        &self,
        edit: impl FnOnce(&mut Document, bool) -> Result<R>,
    ) -> Result<R> {
        let lock = lock_writers(&self.dir, &self.lock_path)?;
        let current = self.read()?;
        let existed = current.is_some();
        let mut doc = match current {
            Some(bytes) if !bytes.iter().all(u8::is_ascii_whitespace) => Document::parse(&bytes)
                .map_err(|e| {
                    Error::malformed(format!(
                        "{}: {}; not overwriting it (fix or remove the file)",
                        self.path.display(),
                        e.message()
                    ))
                })?,
            _ => Document::default(),
        };
        self.adopt_records(&mut doc)?;
        doc.prune(now_ms());
        let result = edit(&mut doc, existed)?;
        match &self.records_path {
            None => write_atomically(&self.dir, &self.path, &doc.to_bytes()?)?,
            Some(records) => {
                write_atomically(&self.dir, records, &doc.records_to_bytes()?)?;
                write_atomically(&self.dir, &self.path, &doc.to_surging_bytes()?)?;
            }
        }
        drop(lock);
        Ok(result)
    }
}

/// Creates `dir` if need be and takes the writers' lock (`lock_path`), held until the file is
/// dropped.
pub(crate) fn lock_writers(dir: &Path, lock_path: &Path) -> Result<File> {
    fs::create_dir_all(dir).map_err(|e| io_error(dir, "create directory", e))?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path)
        .map_err(|e| io_error(lock_path, "open lock file", e))?;
    lock.lock().map_err(|e| io_error(lock_path, "lock", e))?;
    Ok(lock)
}

/// Replaces `path` (in `dir`) with `bytes` at once: a synced temporary file renamed over it,
/// then the directory synced.
pub(crate) fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(path.file_name().unwrap_or_default());
    prefix.push(".");
    let mut temp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| io_error(dir, "create temp file", e))?;
    temp.write_all(bytes)
        .map_err(|e| io_error(temp.path(), "write", e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = temp
            .as_file()
            .set_permissions(fs::Permissions::from_mode(0o644));
    }
    temp.as_file()
        .sync_all()
        .map_err(|e| io_error(temp.path(), "fsync", e))?;
    temp.persist(path)
        .map_err(|e| io_error(path, "rename temp file over", e.error))?;
    sync_dir(dir)
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, "fsync directory", e))
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<()> {
    Ok(())
}

fn io_error(path: &Path, action: &str, err: std::io::Error) -> Error {
    Error::from(err).context(format!("{action} {}", path.display()))
}
