//! [`HealthMonitor`]: local TCP health checks of every distinct endpoint.
//!
//! One background task probes each endpoint once per interval (with jitter), however many routes
//! share it, with at most `max_concurrency` probes in flight; a probe that hangs until its timeout
//! holds one slot and delays nobody else. Consecutive failures / successes flip an endpoint's
//! health, and callers can add their own signals with [`HealthMonitor::report_failure`] and
//! [`HealthMonitor::report_success`]. Health is local: nothing is written to the registry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::endpoint::{Endpoint, EndpointKey};
use crate::route::Address;

/// Health-check settings.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Whether active TCP checks run at all (passive reports always count).
    pub enabled: bool,
    /// Time allowed for one TCP connect.
    #[serde(deserialize_with = "crate::config::duration::deserialize")]
    pub timeout: Duration,
    /// Time between checks of one endpoint.
    #[serde(deserialize_with = "crate::config::duration::deserialize")]
    pub interval: Duration,
    /// Spread of the interval, as a fraction (0.1 = +-10%).
    pub jitter: f64,
    /// Consecutive failures that make a healthy endpoint unhealthy.
    pub failure_threshold: u32,
    /// Consecutive successes that make an unhealthy endpoint healthy.
    pub success_threshold: u32,
    /// Most probes in flight at once.
    pub max_concurrency: usize,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            enabled: true,
            timeout: Duration::from_secs(1),
            interval: Duration::from_secs(10),
            jitter: 0.1,
            failure_threshold: 3,
            success_threshold: 2,
            max_concurrency: 32,
        }
    }
}

/// Tries one TCP connection to `address` within `timeout`.
pub async fn probe(address: &Address, timeout: Duration) -> bool {
    let host = address.ip.trim_start_matches('[').trim_end_matches(']');
    matches!(
        tokio::time::timeout(timeout, TcpStream::connect((host, address.port))).await,
        Ok(Ok(_))
    )
}

#[derive(Debug, Default)]
struct Counters {
    probes: AtomicU64,
    flips: AtomicU64,
}

/// Checks endpoints' health in the background; ends when dropped.
#[derive(Debug)]
pub struct HealthMonitor {
    config: HealthConfig,
    counters: Arc<Counters>,
    targets: watch::Sender<Vec<Arc<Endpoint>>>,
    task: Option<JoinHandle<()>>,
}

impl Drop for HealthMonitor {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl HealthConfig {
    /// The settings with out-of-range values brought into range (zero intervals, NaN jitter,
    /// zero thresholds), each correction logged.
    pub fn sanitized(&self) -> HealthConfig {
        let mut fixed = self.clone();
        let floor = Duration::from_millis(10);
        let ceiling = Duration::from_secs(24 * 3600);
        fixed.interval = self.interval.clamp(floor, ceiling);
        fixed.timeout = self.timeout.clamp(Duration::from_millis(1), ceiling);
        fixed.jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        fixed.failure_threshold = self.failure_threshold.max(1);
        fixed.success_threshold = self.success_threshold.max(1);
        fixed.max_concurrency = self.max_concurrency.max(1);
        if fixed != *self {
            tracing::warn!(given = ?self, used = ?fixed, "health settings out of range; adjusted");
        }
        fixed
    }
}

impl HealthMonitor {
    /// Starts the monitor (its task starts only when checks are enabled). Out-of-range settings
    /// are adjusted (see [`HealthConfig::sanitized`]).
    pub fn start(config: HealthConfig) -> Self {
        let config = config.sanitized();
        let (targets, receiver) = watch::channel(Vec::new());
        let counters = Arc::new(Counters::default());
        let task = config
            .enabled
            .then(|| tokio::spawn(run(config.clone(), counters.clone(), receiver)));
        HealthMonitor {
            config,
            counters,
            targets,
            task,
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &HealthConfig {
        &self.config
    }

    /// Replaces the set of endpoints to check: new ones are checked at once, gone ones dropped.
    pub(crate) fn set_targets(&self, endpoints: Vec<Arc<Endpoint>>) {
        self.targets.send_replace(endpoints);
    }

    /// A caller's call to the endpoint failed (counts like a failed check).
    pub fn report_failure(&self, endpoint: &Endpoint) {
        record(&self.config, &self.counters, endpoint, false);
    }

    /// A caller's call to the endpoint succeeded (counts like a passed check).
    pub fn report_success(&self, endpoint: &Endpoint) {
        record(&self.config, &self.counters, endpoint, true);
    }

    /// Probes sent since start.
    pub fn probes_sent(&self) -> u64 {
        self.counters.probes.load(Ordering::Relaxed)
    }

    /// Health changes (either way) since start.
    pub fn health_flips(&self) -> u64 {
        self.counters.flips.load(Ordering::Relaxed)
    }
}

/// Applies one outcome against the thresholds; flips and logs when one is crossed.
fn record(config: &HealthConfig, counters: &Counters, endpoint: &Endpoint, ok: bool) {
    let mut streak = endpoint
        .streak
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if ok {
        streak.successes = streak.successes.saturating_add(1);
        streak.failures = 0;
        if !endpoint.is_healthy()
            && streak.successes >= config.success_threshold
            && endpoint.set_healthy(true)
        {
            counters.flips.fetch_add(1, Ordering::Relaxed);
            tracing::info!(address = %endpoint.address(), successes = streak.successes, "address healthy again");
        }
    } else {
        streak.failures = streak.failures.saturating_add(1);
        streak.successes = 0;
        if endpoint.is_healthy()
            && streak.failures >= config.failure_threshold
            && endpoint.set_healthy(false)
        {
            counters.flips.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(address = %endpoint.address(), failures = streak.failures, "address unhealthy");
        }
    }
}

struct Scheduled {
    endpoint: Arc<Endpoint>,
    due: Instant,
    /// The probe in flight for this entry, if any.
    probing: Option<tokio::task::Id>,
}

fn jittered(config: &HealthConfig) -> Duration {
    crate::backoff::jittered(config.interval, config.jitter)
}

async fn run(
    config: HealthConfig,
    counters: Arc<Counters>,
    mut targets: watch::Receiver<Vec<Arc<Endpoint>>>,
) {
    let mut schedule: HashMap<EndpointKey, Scheduled> = HashMap::new();
    let mut probes: JoinSet<bool> = JoinSet::new();
    let mut probing: HashMap<tokio::task::Id, EndpointKey> = HashMap::new();
    loop {
        let now = Instant::now();
        if probes.len() < config.max_concurrency {
            // Most overdue first, so no address is starved when probes are slow.
            let mut due: Vec<(Instant, &EndpointKey)> = schedule
                .iter()
                .filter(|(_, e)| e.probing.is_none() && e.due <= now)
                .map(|(key, e)| (e.due, key))
                .collect();
            due.sort_unstable_by_key(|(due, _)| *due);
            let launch: Vec<EndpointKey> = due
                .into_iter()
                .take(config.max_concurrency - probes.len())
                .map(|(_, key)| key.clone())
                .collect();
            for key in launch {
                let Some(entry) = schedule.get_mut(&key) else {
                    continue;
                };
                counters.probes.fetch_add(1, Ordering::Relaxed);
                let (address, timeout) = (entry.endpoint.address().clone(), config.timeout);
                let task = probes.spawn(async move { probe(&address, timeout).await });
                entry.probing = Some(task.id());
                probing.insert(task.id(), key);
            }
        }
        let next_due = schedule
            .values()
            .filter(|e| e.probing.is_none())
            .map(|e| e.due)
            .min()
            .filter(|_| probes.len() < config.max_concurrency)
            .unwrap_or_else(|| now + config.interval);
        tokio::select! {
            changed = targets.changed() => {
                if changed.is_err() {
                    return;
                }
                let current = targets.borrow_and_update().clone();
                let mut keep: HashMap<EndpointKey, Arc<Endpoint>> =
                    current.into_iter().map(|e| (e.key().clone(), e)).collect();
                schedule.retain(|key, _| keep.contains_key(key));
                for (key, endpoint) in keep.drain() {
                    match schedule.get_mut(&key) {
                        // An address that left and came back has a new endpoint: follow it.
                        Some(entry) if !Arc::ptr_eq(&entry.endpoint, &endpoint) => {
                            entry.endpoint = endpoint;
                            entry.due = Instant::now();
                        }
                        Some(_) => {}
                        None => {
                            schedule.insert(key, Scheduled { endpoint, due: Instant::now(), probing: None });
                        }
                    }
                }
            }
            Some(done) = probes.join_next_with_id(), if !probes.is_empty() => {
                let (id, ok) = match done {
                    Ok((id, ok)) => (id, Some(ok)),
                    Err(err) => (err.id(), None),
                };
                let Some(key) = probing.remove(&id) else { continue };
                // Only the entry's own probe counts (not one from before it left and came back).
                if let Some(entry) = schedule.get_mut(&key).filter(|e| e.probing == Some(id)) {
                    if let Some(ok) = ok {
                        record(&config, &counters, &entry.endpoint, ok);
                    }
                    entry.probing = None;
                    entry.due = Instant::now() + jittered(&config);
                }
            }
            _ = tokio::time::sleep_until(next_due) => {}
        }
    }
}
