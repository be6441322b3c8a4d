//! Client-side load balancing with tower over the addresses wayfinder discovers.
//!
//! Starts three tiny HTTP servers on 127.0.0.1, registers each as an instance of the route
//! `api/greeter/hello`, and balances requests over them with tower's power-of-two-choices
//! balancer fed by [`wayfinder::discover::discover_path`]. Then one instance deregisters (its
//! server keeps running), and once the balancer has dropped it the next requests reach only the
//! other two.
//!
//! Run with `cargo run --features tower --example balanced`. It uses a shared file in a temp dir,
//! or the registry in `$WAYFINDER_BACKEND` when set. It exits non-zero if the requests were not
//! spread as expected.

mod hello;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Request, Uri};
use tokio::net::TcpListener;
use tower::balance::p2c::Balance;
use tower::discover::Discover;
use tower::load::{CompleteOnResponse, Load, PendingRequestsDiscover};
use tower::{BoxError, Service, ServiceExt};
use wayfinder::config::redact_url;
use wayfinder::discover::discover_path;
use wayfinder::resolve::EndpointKey;
use wayfinder::{connect, Address, Instance};

use hello::{HttpClient, HELLO_PATH as ROUTE_PATH};

/// A service that sends each request to `address` through the shared client and answers with
/// the response body.
fn instance_service(
    client: HttpClient,
    address: &Address,
) -> impl Service<
    Request<Empty<Bytes>>,
    Response = String,
    Error = BoxError,
    Future = impl Future<Output = Result<String, BoxError>>,
> {
    let authority = address.to_string();
    tower::service_fn(move |mut request: Request<Empty<Bytes>>| {
        let client = client.clone();
        let target = Uri::builder()
            .scheme("http")
            .authority(authority.as_str())
            .path_and_query(
                request
                    .uri()
                    .path_and_query()
                    .map_or("/", |path| path.as_str()),
            )
            .build();
        async move {
            *request.uri_mut() = target?;
            let response = client.request(request).await?;
            let body = response.into_body().collect().await?.to_bytes();
            Ok(String::from_utf8(body.to_vec())?)
        }
    })
}

/// Drives the balancer until it tracks `count` instances.
async fn wait_for_instances<D>(
    balance: &mut Balance<D, Request<Empty<Bytes>>>,
    count: usize,
) -> Result<(), BoxError>
where
    D: Discover<Key = EndpointKey> + Unpin,
    D::Error: Into<BoxError>,
    D::Service: Service<Request<Empty<Bytes>>, Error = BoxError> + Load,
    <D::Service as Load>::Metric: std::fmt::Debug,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::timeout_at(deadline.into(), balance.ready())
            .await
            .map_err(|_| "no instance became ready within 10 s")??;
        if balance.len() == count {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the balancer tracks {} instances, not {count}, after 10 s",
                balance.len()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `count` requests one after another; returns how many each answer named.
async fn send<B>(balance: &mut B, count: usize) -> Result<BTreeMap<String, usize>, BoxError>
where
    B: Service<Request<Empty<Bytes>>, Response = String, Error = BoxError>,
{
    let mut answers = BTreeMap::new();
    for _ in 0..count {
        let request = Request::get(format!("/{ROUTE_PATH}")).body(Empty::new())?;
        let body = balance.ready().await?.call(request).await?;
        let from = body
            .strip_prefix("hello from ")
            .ok_or_else(|| format!("unexpected answer {body:?}"))?;
        *answers.entry(from.to_owned()).or_insert(0) += 1;
    }
    for (instance, answered) in &answers {
        println!("  {instance}: {answered}");
    }
    println!(
        "balanced: {count} requests over {} instances",
        answers.len()
    );
    Ok(answers)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let url = std::env::var("WAYFINDER_BACKEND")
        .unwrap_or_else(|_| format!("file://{}", dir.path().join("routes.json").display()));
    let registry = connect(&url).await?;
    println!("registry: {}", redact_url(&url));

    let mut instances = Vec::new();
    for _ in 0..3 {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = Address::new("127.0.0.1", listener.local_addr()?.port());
        let server = tokio::spawn(hello::serve_hello(listener, address.to_string()));
        let registration = registry
            .register(Instance::new(address.clone(), hello::greeter_routes()))
            .await?;
        println!("registered {address} for {ROUTE_PATH}");
        instances.push((address, server, registration));
    }

    let client = hello::http_client();
    let discover = discover_path(registry.clone(), ROUTE_PATH, move |address| {
        instance_service(client.clone(), address)
    });
    let mut balance = Balance::new(PendingRequestsDiscover::new(
        discover,
        CompleteOnResponse::default(),
    ));

    wait_for_instances(&mut balance, 3).await?;
    let answers = send(&mut balance, 30).await?;
    if answers.len() != 3 {
        return Err(format!("expected answers from 3 instances, got {answers:?}").into());
    }

    let (gone, _, registration) = instances.remove(0);
    registration.shutdown().await?;
    println!("{gone} deregistered (its server still runs)");
    wait_for_instances(&mut balance, 2).await?;
    let answers = send(&mut balance, 30).await?;
    if answers.len() != 2 || answers.contains_key(&gone.to_string()) {
        return Err(
            format!("expected answers from the 2 remaining instances, got {answers:?}").into(),
        );
    }

    for (_, server, registration) in instances {
        registration.shutdown().await?;
        server.abort();
    }
    Ok(())
}
