//! Elections in the file backend: one JSON document beside the routes file
//! (`<file>.elections.json`), edited under its own lock file. A leader's heartbeat raises its
//! record's beat count. A candidate takes a held record only once it has seen the same holder
//! and beat for a whole TTL on its own monotonic clock, so no host's wall clock (a step, a skew
//! between hosts on a network file system) can hand over a live leadership. The record's expiry
//! time is only for observers.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::blocking;
use super::storage::{lock_writers, write_atomically};
use crate::clock::now_ms;
use crate::election::{ElectionStore, Leader};
use crate::error::{Error, Result};
use crate::registration::Liveness;

/// How often a campaigner or an observer reads the document again.
const POLL: Duration = Duration::from_millis(100);

/// One election's record.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Record {
    /// The leader's value.
    value: String,
    /// The leader's campaign, while one leads.
    holder: Option<String>,
    /// The last leader's fencing token; the next one gets a greater one.
    token: u64,
    /// The leader's heartbeats so far.
    #[serde(default)]
    beat: u64,
    /// When the leadership looks lapsed to an observer, ms since the Unix epoch.
    expires_ms: u64,
}

impl Record {
    fn leader(&self, now_ms: u64) -> Option<Leader> {
        (self.holder.is_some() && self.expires_ms > now_ms).then(|| Leader {
            value: self.value.clone(),
            token: self.token,
        })
    }
}

/// The elections document of a routes file.
#[derive(Debug, Clone)]
pub(crate) struct FileElections {
    path: PathBuf,
    lock_path: PathBuf,
}

/// One campaign in the file backend.
#[derive(Debug)]
pub(crate) struct FileCampaign {
    id: String,
    name: String,
    ttl: Duration,
    /// Whether it has been elected (a renewal then needs the record to be its own); set under
    /// the lock as the record is taken.
    leading: Arc<AtomicBool>,
    /// The holder and beat it last saw, and since when (its own clock).
    seen: Mutex<Option<(Option<String>, u64, Instant)>>,
    /// Released: an acquisition still under way must not take the record any more.
    released: Arc<AtomicBool>,
}

impl FileCampaign {
    /// Whether `record` may be taken now: nobody holds it, or its holder's beat has not moved
    /// for a whole TTL as this campaign saw it.
    fn may_take(&self, record: Option<&Record>) -> bool {
        let Some(record) = record.filter(|r| r.holder.is_some()) else {
            return true;
        };
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match &*seen {
            Some((holder, beat, since)) if *holder == record.holder && *beat == record.beat => {
                since.elapsed() >= self.ttl
            }
            _ => {
                *seen = Some((record.holder.clone(), record.beat, Instant::now()));
                false
            }
        }
    }

    /// Whether `record` is still as this campaign last saw it.
    fn unchanged(record: Option<&Record>, seen: &Option<(Option<String>, u64)>) -> bool {
        match (record.filter(|r| r.holder.is_some()), seen) {
            (None, _) => true,
            (Some(record), Some((holder, beat))) => {
                record.holder == *holder && record.beat == *beat
            }
            (Some(_), None) => false,
        }
    }
}

impl FileElections {
    /// The elections beside the routes file `routes`.
    pub(crate) fn beside(routes: &Path) -> Self {
        let mut path = routes.as_os_str().to_owned();
        path.push(".elections.json");
        let path = PathBuf::from(path);
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        FileElections {
            path,
            lock_path: PathBuf::from(lock_path),
        }
    }

    fn read(path: &Path) -> Result<BTreeMap<String, Record>> {
        match fs::read(path) {
            Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(BTreeMap::new()),
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::malformed(format!("{}: {e}; fix or remove the file", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(Error::from(e).context(format!("read {}", path.display()))),
        }
    }

    /// Runs `edit` on the document under the lock and writes it back.
    async fn update<R: Send + 'static>(
        &self,
        edit: impl FnOnce(&mut BTreeMap<String, Record>) -> R + Send + 'static,
    ) -> Result<R> {
        let (path, lock_path) = (self.path.clone(), self.lock_path.clone());
        blocking(move || {
            let dir = match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
                _ => PathBuf::from("."),
            };
            let lock = lock_writers(&dir, &lock_path)?;
            let mut records = Self::read(&path)?;
            let result = edit(&mut records);
            let bytes = serde_json::to_vec_pretty(&records)
                .map_err(|e| Error::malformed(format!("elections: {e}")))?;
            write_atomically(&dir, &path, &bytes)?;
            drop(lock);
            Ok(result)
        })
        .await
    }

    async fn record(&self, name: &str) -> Result<Option<Record>> {
        let (path, name) = (self.path.clone(), name.to_owned());
        blocking(move || Ok(Self::read(&path)?.remove(&name))).await
    }
}

#[async_trait]
impl ElectionStore for FileElections {
    type Lease = FileCampaign;

    async fn grant(&self, name: &str, ttl: Duration) -> Result<FileCampaign> {
        Ok(FileCampaign {
            id: format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
            name: name.to_owned(),
            ttl,
            leading: Arc::new(AtomicBool::new(false)),
            seen: Mutex::new(None),
            released: Arc::new(AtomicBool::new(false)),
        })
    }

    async fn renew(&self, campaign: &FileCampaign) -> Result<Liveness> {
        if !campaign.leading.load(Ordering::SeqCst) {
            // A candidate holds nothing that could lapse.
            return Ok(Liveness::Alive);
        }
        let (id, name) = (campaign.id.clone(), campaign.name.clone());
        let expires = now_ms() + campaign.ttl.as_millis() as u64;
        let held = self
            .update(move |records| match records.get_mut(&name) {
                Some(record) if record.holder.as_deref() == Some(id.as_str()) => {
                    record.beat += 1;
                    record.expires_ms = expires;
                    true
                }
                _ => false,
            })
            .await?;
        Ok(if held {
            Liveness::Alive
        } else {
            Liveness::Lost
        })
    }

    async fn acquire(&self, name: &str, value: &str, campaign: &FileCampaign) -> Result<u64> {
        loop {
            // Read without the lock; lock and write only when the record looks free.
            let record = self.record(name).await?;
            if campaign.may_take(record.as_ref()) {
                let seen = record.as_ref().map(|r| (r.holder.clone(), r.beat));
                let (id, name_, value) = (campaign.id.clone(), name.to_owned(), value.to_owned());
                let ttl = campaign.ttl;
                let (leading, released) = (campaign.leading.clone(), campaign.released.clone());
                let taken = self
                    .update(move |records| {
                        let record = records.entry(name_).or_default();
                        if released.load(Ordering::SeqCst)
                            || !FileCampaign::unchanged(Some(&*record), &seen)
                        {
                            return None;
                        }
                        // Above every earlier token, even if the document was deleted since.
                        record.token = (record.token + 1).max(now_ms());
                        record.holder = Some(id);
                        record.beat = 0;
                        record.value = value;
                        record.expires_ms = now_ms() + ttl.as_millis() as u64;
                        leading.store(true, Ordering::SeqCst);
                        Some(record.token)
                    })
                    .await?;
                if let Some(token) = taken {
                    return Ok(token);
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn release(&self, name: &str, campaign: &FileCampaign) -> Result<()> {
        // Under the lock, as an acquisition is: whichever comes second sees the other.
        campaign.released.store(true, Ordering::SeqCst);
        let (name, id) = (name.to_owned(), campaign.id.clone());
        self.update(move |records| {
            if let Some(record) = records.get_mut(&name) {
                if record.holder.as_deref() == Some(id.as_str()) {
                    record.holder = None;
                    record.expires_ms = 0;
                }
            }
        })
        .await
    }

    async fn leader(&self, name: &str) -> Result<Option<Leader>> {
        Ok(self.record(name).await?.and_then(|r| r.leader(now_ms())))
    }

    async fn next_leader(&self, name: &str, _seen: &Option<Leader>) -> Result<Option<Leader>> {
        tokio::time::sleep(POLL).await;
        self.leader(name).await
    }
}
