//! The greeter service the examples share: its routes, a tiny HTTP/1 server that answers every
//! request with `hello from <name>`, and a client call to one instance.
//!
//! Each example uses part of this module.
#![allow(dead_code)]

use std::convert::Infallible;

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::BoxError;
use wayfinder::route::service_id;
use wayfinder::{Address, ServiceDescriptor};

/// The route path the greeter serves.
pub const HELLO_PATH: &str = "api/greeter/hello";

/// The interface the greeter's service ids derive from.
const GREETER_INTERFACE: &str = "Greeter.IGreeterService";

/// The greeter's routes: `api/greeter/hello` (and `api/greeter/goodbye`).
pub fn greeter_routes() -> Vec<ServiceDescriptor> {
    vec![
        ServiceDescriptor::new(
            service_id(GREETER_INTERFACE, "Hello", &["name"]),
            HELLO_PATH,
        ),
        ServiceDescriptor::new(
            service_id(GREETER_INTERFACE, "Goodbye", &["name"]),
            "api/greeter/goodbye",
        ),
    ]
}

/// An HTTP/1 client for calling instances.
pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// A new client for calling instances.
pub fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// `GET http://<address>/<path>`; the answer's body as text.
pub async fn call(client: &HttpClient, address: &Address, path: &str) -> Result<String, BoxError> {
    let uri: Uri = format!("http://{address}/{path}").parse()?;
    let response = client
        .request(Request::get(uri).body(Empty::new())?)
        .await?;
    if !response.status().is_success() {
        return Err(format!("{address} answered {}", response.status()).into());
    }
    let body = response.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8(body.to_vec())?)
}

/// Serves `hello from <name>` on every connection `listener` accepts, until accepting fails.
///
/// Each connection runs on its own task; run this one on a task too and abort it to stop.
pub async fn serve_hello(listener: TcpListener, name: String) {
    serve_hello_failing(listener, name, Failing::never()).await
}

/// Answers `500` to a share of requests for a while (to show outlier ejection).
#[derive(Debug, Clone, Copy)]
pub struct Failing {
    /// The share of requests answered with an error, 0 to 1.
    pub rate: f64,
    /// Until when (then every request succeeds).
    pub until: std::time::Instant,
}

impl Failing {
    /// Never fails.
    pub fn never() -> Self {
        Failing {
            rate: 0.0,
            until: std::time::Instant::now(),
        }
    }

    fn now(&self) -> bool {
        self.rate > 0.0 && std::time::Instant::now() < self.until && fastrand::f64() < self.rate
    }
}

/// Connections the hello servers of this process hold open now.
static OPEN_CONNECTIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Connections the hello servers of this process hold open now (a load to report).
pub fn open_connections() -> usize {
    OPEN_CONNECTIONS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Counts a connection open for as long as it lives.
struct Open;

impl Open {
    fn new() -> Self {
        OPEN_CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Open
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        OPEN_CONNECTIONS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Like [`serve_hello`], answering `500 Internal Server Error` as `failing` says.
pub async fn serve_hello_failing(listener: TcpListener, name: String, failing: Failing) {
    while let Ok((stream, _)) = listener.accept().await {
        let name = name.clone();
        let body = Bytes::from(format!("hello from {name}"));
        let open = Open::new();
        tokio::spawn(async move {
            let _open = open;
            let answer = service_fn(move |_request: Request<Incoming>| {
                let body = body.clone();
                async move {
                    let mut response = Response::new(Full::new(body));
                    if failing.now() {
                        *response.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    Ok::<_, Infallible>(response)
                }
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
