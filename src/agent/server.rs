//! The agent's HTTP/1.1 server: an accept loop and one task per connection (hyper).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::answers::answer;
use super::{Agent, MAX_CONNECTIONS, REQUEST_TIMEOUT};
use crate::error::Result;

/// Pause after a failed accept, so a full descriptor table is not spun on.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

pub(super) async fn serve(agent: Arc<Agent>, listener: TcpListener) -> Result<()> {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "agent listening");
    }
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return Ok(());
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(error = %err, "agent could not accept a connection");
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let agent = agent.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request: Request<Incoming>| {
                let agent = agent.clone();
                async move { Ok::<_, Infallible>(answer(&agent, request).await) }
            });
            if let Err(err) = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %err, "agent connection ended with an error");
            }
        });
    }
}
