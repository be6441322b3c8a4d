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
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// Whether active TCP checks run at all (passive reports always count).
    pub enabled: bool,
    /// Time allowed for one TCP connect.
    pub timeout: Duration,
    /// Time between checks of one endpoint.
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

impl HealthMonitor {
    /// Starts the monitor (its task starts only when checks are enabled).
    pub fn start(config: HealthConfig) -> Self {
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
    pub fn set_targets(&self, endpoints: Vec<Arc<Endpoint>>) {
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
    probing: bool,
}

fn jittered(config: &HealthConfig) -> Duration {
    let spread = config.jitter.clamp(0.0, 1.0);
    config
        .interval
        .mul_f64(1.0 - spread + 2.0 * spread * fastrand::f64())
}

async fn run(
    config: HealthConfig,
    counters: Arc<Counters>,
    mut targets: watch::Receiver<Vec<Arc<Endpoint>>>,
) {
    let mut schedule: HashMap<EndpointKey, Scheduled> = HashMap::new();
    let mut probes: JoinSet<(EndpointKey, bool)> = JoinSet::new();
    let max = config.max_concurrency.max(1);
    loop {
        let now = Instant::now();
        for (key, entry) in schedule.iter_mut() {
            if probes.len() >= max {
                break;
            }
            if !entry.probing && entry.due <= now {
                entry.probing = true;
                counters.probes.fetch_add(1, Ordering::Relaxed);
                let (key, address, timeout) = (
                    key.clone(),
                    entry.endpoint.address().clone(),
                    config.timeout,
                );
                probes.spawn(async move { (key, probe(&address, timeout).await) });
            }
        }
        let next_due = schedule
            .values()
            .filter(|e| !e.probing)
            .map(|e| e.due)
            .min()
            .filter(|_| probes.len() < max)
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
                    schedule.entry(key).or_insert(Scheduled { endpoint, due: Instant::now(), probing: false });
                }
            }
            Some(done) = probes.join_next(), if !probes.is_empty() => {
                if let Ok((key, ok)) = done {
                    if let Some(entry) = schedule.get_mut(&key) {
                        record(&config, &counters, &entry.endpoint, ok);
                        entry.probing = false;
                        entry.due = Instant::now() + jittered(&config);
                    }
                }
            }
            _ = tokio::time::sleep_until(next_due) => {}
        }
    }
}
