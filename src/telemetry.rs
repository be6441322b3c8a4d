//! Tracing of backend calls: every call runs in a `backend_call` span with its backend,
//! operation, key count and duration, and ends with one `debug` event carrying them; its
//! duration and outcome also go to the metrics (feature `metrics`).
//!
//! Subscribe with a filter such as `wayfinder=debug` to see them; with no subscriber interested
//! the cost is a disabled-callsite check.

use std::future::Future;
use std::time::Instant;

use tracing::field::Empty;
use tracing::Instrument;

use crate::error::Result;
use crate::metrics;

/// Runs `call` as operation `operation` of `backend`; `keys` counts the keys of its answer.
pub(crate) async fn traced<T>(
    backend: &'static str,
    operation: &'static str,
    call: impl Future<Output = Result<T>>,
    keys: impl FnOnce(&T) -> usize,
) -> Result<T> {
    let span = tracing::debug_span!(
        "backend_call",
        backend,
        operation,
        keys = Empty,
        duration_us = Empty
    );
    let started = Instant::now();
    if span.is_disabled() {
        let result = call.await;
        metrics::backend_request(backend, operation, started.elapsed(), result.is_ok());
        return result;
    }
    let result = call.instrument(span.clone()).await;
    let took = started.elapsed();
    metrics::backend_request(backend, operation, took, result.is_ok());
    let duration_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    span.record("duration_us", duration_us);
    match &result {
        Ok(answer) => {
            let keys = keys(answer);
            span.record("keys", keys);
            tracing::debug!(parent: &span, backend, operation, keys, duration_us, "backend call done");
        }
        Err(error) => {
            tracing::debug!(parent: &span, backend, operation, duration_us, %error, "backend call failed");
        }
    }
    result
}
