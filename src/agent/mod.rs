//! [`Agent`]: a resolver behind a small HTTP API, for callers that are not Rust (.NET, Go,
//! scripts), as `wayfinder agent` runs it (feature `agent`).
//!
//! | request | answer |
//! |---|---|
//! | `GET /v1/resolve/<route path>[?key=K]` | one pick: `address`, `host`, `port`, `service_id`, `fail_open`; 404 for an unknown path |
//! | `GET /v1/routes` | the table: each route's id, path, state and addresses with their health |
//! | `POST /v1/report` `{"address": "HOST:PORT", "ok": false}` | an outcome, as [`AddressResolver::report_failure`] / `report_success` |
//! | `GET /metrics` | the metrics in Prometheus' text format (when the agent has a renderer) |
//! | `GET /healthz` | 200 while the view is fresh, 503 with its staleness when not |
//!
//! Every answer of the API is JSON (but `/metrics`); an error is `{"error": "..."}` with a 4xx
//! or 5xx status (a request that is not HTTP at all gets hyper's bare 400), and a bad request
//! never stops the agent. A pick through the agent is released at
//! once: the agent does not see the caller's call, so selectors that count calls in flight or
//! time them learn nothing from it (report outcomes instead).

mod answers;
mod server;

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::error::Result;
use crate::resolve::AddressResolver;

/// The default address `wayfinder agent` listens on (loopback only).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";

/// The most connections an agent serves at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 4096;

/// How long a request may take to arrive (its head, or a report's body), and the longest an
/// answer waits for the registry (an unknown path's listing).
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Renders the process's metrics as Prometheus text.
pub(crate) type MetricsRenderer = Arc<dyn Fn() -> String + Send + Sync>;

/// The HTTP agent over one resolver (see the module docs for its API).
#[derive(Clone)]
pub struct Agent {
    resolver: Arc<AddressResolver>,
    metrics: Option<MetricsRenderer>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("resolver", &self.resolver)
            .field("metrics", &self.metrics.is_some())
            .finish()
    }
}

impl Agent {
    /// An agent answering from `resolver`.
    pub fn new(resolver: Arc<AddressResolver>) -> Self {
        Agent {
            resolver,
            metrics: None,
        }
    }

    /// Serves `GET /metrics` with what `render` gives (a Prometheus exporter's handle, say);
    /// the resolver publishes its figures just before each rendering.
    pub fn with_metrics(mut self, render: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.metrics = Some(Arc::new(render));
        self
    }

    /// Answers HTTP/1.1 requests on `listener` until the task running it is dropped or
    /// aborted. Each connection runs on its own task, at most [`MAX_CONNECTIONS`] at once; a
    /// connection that sends no complete request head within [`REQUEST_TIMEOUT`] is closed; a
    /// failed accept (out of file descriptors, say) is logged and retried after a pause.
    pub async fn serve(self, listener: TcpListener) -> Result<()> {
        server::serve(Arc::new(self), listener).await
    }
}
