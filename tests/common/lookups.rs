//! A long-lived client for fault tests: resolves route paths in a loop through a fault window
//! and counts the lookups that failed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wayfinder::AddressResolver;

/// Resolves each of its paths every 2 ms on its own task until [`Lookups::finish`].
pub struct Lookups {
    failures: Arc<AtomicU64>,
    total: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Duration>,
}

/// What a [`Lookups`] loop saw.
#[derive(Debug, Clone, Copy)]
pub struct LookupCount {
    /// Lookups that failed.
    pub failures: u64,
    /// Lookups made.
    pub total: u64,
    /// From the first failed lookup to the last one (zero without failures).
    pub failing_for: Duration,
}

impl Lookups {
    /// Starts resolving `paths` through `resolver`.
    pub fn start(resolver: Arc<AddressResolver>, paths: &[&str]) -> Self {
        let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        let (failures, total, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (f, t, s) = (failures.clone(), total.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut failing: Option<(Instant, Instant)> = None;
            while !s.load(Ordering::Relaxed) {
                for path in &paths {
                    if let Err(err) = resolver.resolve_path(path, None).await {
                        if f.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("first failed lookup of {path}: {err}");
                        }
                        let now = Instant::now();
                        let (first, _) = failing.unwrap_or((now, now));
                        failing = Some((first, now));
                    }
                    t.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            failing.map_or(Duration::ZERO, |(first, last)| last - first)
        });
        Lookups {
            failures,
            total,
            stop,
            task,
        }
    }

    /// Stops the loop and returns its counts (printed, for the record).
    pub async fn finish(self, fault: &str) -> LookupCount {
        self.stop.store(true, Ordering::Relaxed);
        let failing_for = self.task.await.expect("the lookup loop panicked");
        let count = LookupCount {
            failures: self.failures.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            failing_for,
        };
        eprintln!(
            "fault [{fault}]: {} failed lookups of {} (failing for {:?})",
            count.failures, count.total, count.failing_for
        );
        count
    }
}
