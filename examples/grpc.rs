//! gRPC with tonic over the addresses wayfinder discovers.
//!
//! Starts two gRPC servers on 127.0.0.1 serving tonic-health's Health service, registers each as
//! an instance of the route `api/health/check`, and calls them through tonic's balancing
//! `Channel` fed by [`wayfinder::discover::discover_path`]. Then one instance drains (its
//! registration goes, then its server stops) and the calls go on through the other.
//!
//! Run with `cargo run --features tower --example grpc`. It uses an in-process registry, or the
//! registry in `$WAYFINDER_BACKEND` when set. It exits non-zero if a call fails.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::oneshot;
use tonic::transport::channel::Change as TonicChange;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::discover::Change;
use tower::BoxError;
use wayfinder::discover::discover_path;
use wayfinder::resolve::EndpointKey;
use wayfinder::{connect, Address, Instance, Registration, RouteManager, ServiceDescriptor};

const PATH: &str = "api/health/check";

/// Serves the Health service on a free loopback port and registers it; the sender stops it.
async fn serve(
    registry: &Arc<dyn RouteManager>,
) -> Result<(Registration, oneshot::Sender<()>), BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let (stop, stopped) = oneshot::channel::<()>();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            }),
    );
    let route = ServiceDescriptor::new("Demo.IHealthService.Check", PATH);
    let instance = Instance::new(Address::new("127.0.0.1", port), vec![route]);
    Ok((registry.register(instance).await?, stop))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let url = std::env::var("WAYFINDER_BACKEND").unwrap_or_else(|_| "memory://".to_owned());
    let registry = connect(&url).await?;
    let (first, stop_first) = serve(&registry).await?;
    let (second, stop_second) = serve(&registry).await?;

    // tonic balances over a set of endpoints it is told of; wayfinder's discovery tells it.
    let (channel, changes) = Channel::balance_channel::<EndpointKey>(16);
    let mut discover = discover_path(registry.clone(), PATH, |address: &Address| {
        Endpoint::from_shared(format!("http://{address}")).expect("an address is a valid URI")
    });
    tokio::spawn(async move {
        while let Some(Ok(change)) = discover.next().await {
            let change = match change {
                Change::Insert(key, endpoint) => TonicChange::Insert(key, endpoint),
                Change::Remove(key) => TonicChange::Remove(key),
            };
            if changes.send(change).await.is_err() {
                return;
            }
        }
    });

    let mut client = HealthClient::new(channel);
    let check = || HealthCheckRequest {
        service: String::new(),
    };
    // The first call waits until discovery has handed the channel an address.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let attempt = |mut client: HealthClient<Channel>| async move {
        // A balanced channel with no endpoint yet waits: bound each attempt.
        let call = tokio::time::timeout(Duration::from_secs(1), client.check(check()));
        matches!(call.await, Ok(Ok(_)))
    };
    while !attempt(client.clone()).await {
        if tokio::time::Instant::now() > deadline {
            return Err("no instance answered within 5 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..3 {
        let answer = client.check(check()).await?.into_inner();
        println!("health: {:?}", answer.status());
    }
    // A rolling deploy's stop: drain, then stop serving; the calls go on.
    first.drain(Duration::from_secs(2)).await?;
    let _ = stop_first.send(());
    for _ in 0..3 {
        let answer = client.check(check()).await?.into_inner();
        println!("after one instance left, health: {:?}", answer.status());
    }
    second.shutdown().await?;
    let _ = stop_second.send(());
    Ok(())
}
