//! Where callers' call outcomes go: each one counts toward the address's health (the passive
//! half of health checking) and toward its outlier record (ejection).

use std::sync::atomic::{AtomicU64, Ordering};

use super::endpoint::Endpoint;
use super::health::HealthMonitor;
use super::outlier::{self, OutlierConfig};
use crate::clock::now_ms;

/// The resolver's receivers of reported outcomes.
#[derive(Debug)]
pub(crate) struct Reports {
    pub(crate) health: HealthMonitor,
    pub(crate) outlier: OutlierConfig,
    /// Ejections since start.
    ejections: AtomicU64,
}

impl Reports {
    pub(crate) fn new(health: HealthMonitor, outlier: OutlierConfig) -> Self {
        Reports {
            health,
            outlier,
            ejections: AtomicU64::new(0),
        }
    }

    /// One call's outcome at `endpoint`.
    pub(crate) fn record(&self, endpoint: &Endpoint, ok: bool) {
        if ok {
            self.health.report_success(endpoint);
        } else {
            self.health.report_failure(endpoint);
        }
        if outlier::record(&self.outlier, endpoint, ok, now_ms()) {
            self.ejections.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Runs the outlier sweep over `endpoints` (see [`outlier::sweep`]).
    pub(crate) fn sweep<'a>(&self, endpoints: impl IntoIterator<Item = &'a Endpoint>) {
        let ejected = outlier::sweep(&self.outlier, endpoints, now_ms());
        self.ejections.fetch_add(ejected as u64, Ordering::Relaxed);
    }

    /// Ejections since start.
    pub(crate) fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }
}
