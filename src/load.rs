//! [`LoadReport`]: the load an instance publishes on its heartbeat, read by the
//! `least_resource` selector from each address's `ProcessorTime`.

use std::fmt;
use std::sync::Arc;

/// An application's report of its own load: any number where lower means less busy (processor
/// use in percent, a queue's length). A registration reads it when it registers and on each
/// heartbeat (every third of the TTL), and publishes it as the address's `ProcessorTime` when it
/// moved by more than [`LOAD_DEADBAND`].
#[derive(Clone)]
pub struct LoadReport(Arc<dyn Fn() -> f64 + Send + Sync>);

/// The relative change in a reported load below which it is not published again (each
/// publication rewrites every route entry of the instance).
pub const LOAD_DEADBAND: f64 = 0.05;

impl LoadReport {
    /// A report read from `read`.
    pub fn new(read: impl Fn() -> f64 + Send + Sync + 'static) -> Self {
        LoadReport(Arc::new(read))
    }

    /// The load now, or `None` (with a warning) when the function gives a value that is not a
    /// finite number.
    pub(crate) fn read(&self) -> Option<f64> {
        let load = (self.0)();
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

/// Whether `now` differs from the published load by enough to publish it (see
/// [`LOAD_DEADBAND`]); always when none is published.
pub(crate) fn worth_publishing(published: Option<f64>, now: f64) -> bool {
    match published {
        None => true,
        Some(before) => (now - before).abs() > LOAD_DEADBAND * before.abs().max(now.abs()),
    }
}

impl fmt::Debug for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LoadReport(..)")
    }
}

impl PartialEq for LoadReport {
    /// The same function (one report, cloned).
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_moves_are_not_published() {
        assert!(worth_publishing(None, 0.0));
        assert!(!worth_publishing(Some(50.0), 51.0));
        assert!(worth_publishing(Some(50.0), 60.0));
        assert!(!worth_publishing(Some(0.0), 0.0));
        assert!(worth_publishing(Some(0.0), 0.5));
    }

    #[test]
    fn a_value_that_is_no_number_is_not_read() {
        assert_eq!(LoadReport::new(|| f64::NAN).read(), None);
        assert_eq!(LoadReport::new(|| 7.5).read(), Some(7.5));
    }
}
