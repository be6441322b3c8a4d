//! A long-lived client for fault tests: resolves route paths in a loop through a fault window
//! and counts the lookups that failed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wayfinder::AddressResolver;

/// Resolves each of its paths every 2 ms on its own task until [`Lookups::finish`].
pub struct Lookups {
    failures: Arc<AtomicU64>,
    total: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// What a [`Lookups`] loop saw.
#[derive(Debug, Clone, Copy)]
pub struct LookupCount {
    pub failures: u64,
    pub total: u64,
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
            while !s.load(Ordering::Relaxed) {
                for path in &paths {
                    if let Err(err) = resolver.resolve_path(path, None).await {
                        if f.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("first failed lookup of {path}: {err}");
                        }
                    }
                    t.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
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
        self.task.await.unwrap();
        let count = LookupCount {
            failures: self.failures.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
        };
        eprintln!(
            "fault [{fault}]: {} failed lookups of {}",
            count.failures, count.total
        );
        count
    }
}
