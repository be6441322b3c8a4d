//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`): the
//! exporter the application installs (Prometheus, OpenTelemetry, ...) receives them; with the
//! feature off, or no recorder installed, they cost nothing worth counting.
//!
//! Names follow Prometheus conventions (`_total` counters, base units in the name). The backend
//! and registration figures are recorded where they happen; a resolver's figures are published
//! from its own counters once a second and whenever `AddressResolver::publish_metrics` is
//! called. Install the recorder before the first backend call, or those before it go unseen.

use std::time::Duration;

/// Backend requests by backend and operation, in seconds (histogram).
pub const BACKEND_REQUEST_DURATION: &str = "wayfinder_backend_request_duration_seconds";
/// Backend requests that failed, by backend and operation (counter).
pub const BACKEND_REQUEST_ERRORS: &str = "wayfinder_backend_request_errors_total";
/// Registrations written, by backend and `kind` (`first`, or `again` after liveness was lost).
pub const REGISTRATIONS: &str = "wayfinder_registrations_total";
/// Lookups by `result`: `found` or `not_found` (counter).
pub const RESOLUTIONS: &str = "wayfinder_resolutions_total";
/// Selections made in panic mode, among all of a route's addresses (counter).
pub const FAIL_OPEN_SELECTIONS: &str = "wayfinder_fail_open_selections_total";
/// Outlier ejections (counter).
pub const EJECTIONS: &str = "wayfinder_ejections_total";
/// Health flips seen by checks or reported by callers (counter).
pub const HEALTH_FLIPS: &str = "wayfinder_health_flips_total";
/// Re-established backend watches (counter).
pub const WATCH_RECONNECTS: &str = "wayfinder_watch_reconnects_total";
/// Routes in resolvers' tables by `state`: `healthy` (every address usable), `degraded` (some
/// not, above the panic threshold), `panic` (below it: selection uses all), `empty` (gauge).
pub const ROUTES: &str = "wayfinder_routes";
/// Distinct endpoints by `state`: `healthy`, `unhealthy`, `ejected` (gauge).
pub const ENDPOINTS: &str = "wayfinder_endpoints";
/// Seconds since the registry was last read well; 0 while current (gauge).
pub const REGISTRY_STALENESS: &str = "wayfinder_registry_staleness_seconds";

/// One backend request's time and outcome.
pub(crate) fn backend_request(
    backend: &'static str,
    operation: &'static str,
    took: Duration,
    ok: bool,
) {
    #[cfg(feature = "metrics")]
    {
        let labels = [("backend", backend), ("operation", operation)];
        ::metrics::histogram!(BACKEND_REQUEST_DURATION, &labels).record(took.as_secs_f64());
        if !ok {
            ::metrics::counter!(BACKEND_REQUEST_ERRORS, &labels).increment(1);
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (backend, operation, took, ok);
}

/// A registration written: the first time, or `again` after its liveness was lost.
pub(crate) fn registered(backend: &'static str, again: bool) {
    #[cfg(feature = "metrics")]
    {
        let kind = if again { "again" } else { "first" };
        ::metrics::counter!(REGISTRATIONS, "backend" => backend, "kind" => kind).increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (backend, again);
}
