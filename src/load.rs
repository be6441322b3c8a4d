//! [`LoadReport`]: the load an instance publishes on its heartbeat, read by the
//! `least_resource` selector from each address's `ProcessorTime`.

use std::fmt;
use std::sync::Arc;

/// An application's report of its own load: any number where lower means less busy (processor
/// use in percent, a queue's length). A registration reads it when it registers and on each
/// heartbeat (every third of the TTL), and publishes it as the address's `ProcessorTime` when it
/// moved by more than [`LOAD_DEADBAND`].
#[derive(Clone)]
pub struct LoadReport {
    read: Arc<dyn Fn() -> f64 + Send + Sync>,
    /// The smallest change published, besides [`LOAD_DEADBAND`].
    min_change: f64,
}

/// The relative change in a reported load below which it is not published again (each
/// publication rewrites every route entry of the instance).
pub const LOAD_DEADBAND: f64 = 0.05;

impl LoadReport {
    /// A report read from `read`.
    pub fn new(read: impl Fn() -> f64 + Send + Sync + 'static) -> Self {
        LoadReport {
            read: Arc::new(read),
            min_change: 0.0,
        }
    }

    /// Publishes a new load only when it moved by at least `min_change` as well (for a load
    /// counted in small whole numbers, where one more is already more than 5%).
    pub fn with_min_change(mut self, min_change: f64) -> Self {
        self.min_change = min_change.max(0.0);
        self
    }

    /// Whether `now` differs from the published load by enough to publish it (see
    /// [`LOAD_DEADBAND`] and [`LoadReport::with_min_change`]); always when none is published.
    pub(crate) fn worth_publishing(&self, published: Option<f64>, now: f64) -> bool {
        match published {
            None => true,
            Some(before) => {
                let moved = (now - before).abs();
                moved >= self.min_change && !within_deadband(before, now)
            }
        }
    }

    /// The load now, or `None` (with a warning) when the function gives a value that is not a
    /// finite number.
    pub(crate) fn read(&self) -> Option<f64> {
        let load = (self.read)();
        if load.is_finite() {
            Some(load)
        } else {
            tracing::warn!(
                load,
                "the load function gave no finite number; not publishing it"
            );
            None
        }
    }
}

/// Whether two loads differ by no more than [`LOAD_DEADBAND`] of the larger: not worth
/// publishing, and not worth choosing between.
pub(crate) fn within_deadband(a: f64, b: f64) -> bool {
    (a - b).abs() <= LOAD_DEADBAND * a.abs().max(b.abs())
}

impl fmt::Debug for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LoadReport(..)")
    }
}

impl PartialEq for LoadReport {
    /// The same function (one report, cloned).
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.read, &other.read) && self.min_change == other.min_change
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_moves_are_not_published() {
        let report = LoadReport::new(|| 0.0);
        assert!(report.worth_publishing(None, 0.0));
        assert!(!report.worth_publishing(Some(50.0), 51.0));
        assert!(report.worth_publishing(Some(50.0), 60.0));
        assert!(!report.worth_publishing(Some(0.0), 0.0));
        assert!(report.worth_publishing(Some(0.0), 0.5));
        let counted = report.with_min_change(2.0);
        assert!(!counted.worth_publishing(Some(3.0), 4.0));
        assert!(counted.worth_publishing(Some(3.0), 5.0));
    }

    #[test]
    fn a_value_that_is_no_number_is_not_read() {
        assert_eq!(LoadReport::new(|| f64::NAN).read(), None);
        assert_eq!(LoadReport::new(|| 7.5).read(), Some(7.5));
    }
}
