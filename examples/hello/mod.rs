//! A tiny HTTP/1 server for the examples: every request is answered with `hello from <name>`.

use std::convert::Infallible;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Serves `hello from <name>` on every connection `listener` accepts, until accepting fails.
///
/// Each connection runs on its own task; run this one on a task too and abort it to stop.
pub async fn serve_hello(listener: TcpListener, name: String) {
    while let Ok((stream, _)) = listener.accept().await {
        let name = name.clone();
        let body = Bytes::from(format!("hello from {name}"));
        tokio::spawn(async move {
            let answer = service_fn(move |_request: Request<Incoming>| {
                let body = body.clone();
                async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), answer)
                .await
            {
                eprintln!("hello server {name}: {error}");
            }
        });
    }
}
