//! tonic's balancing channel fed by `discover_path`, against real gRPC servers (tonic-health's
//! Health service): instances register, drain and stop while calls flow, and every call after
//! the first address arrives succeeds.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::descriptor;
use futures_util::StreamExt;
use tokio::sync::oneshot;
use tonic::transport::channel::Change as TonicChange;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::discover::Change;
use wayfinder::discover::discover_path;
use wayfinder::{connect, Address, Instance, Registration, RouteManager};

const PATH: &str = "api/demo/health";

/// One gRPC server serving the Health service, registered under [`PATH`].
struct GrpcInstance {
    stop: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
    registration: Registration,
}

async fn start(registry: &Arc<dyn RouteManager>) -> GrpcInstance {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let (stop, stopped) = oneshot::channel::<()>();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    let instance = Instance::new(Address::new("127.0.0.1", port), vec![descriptor("Health")]);
    let registration = registry.register(instance).await.unwrap();
    GrpcInstance {
        stop,
        server,
        registration,
    }
}

impl GrpcInstance {
    /// A rolling deploy's stop: drain (deregister, wait for watchers), then stop serving.
    async fn drain_and_stop(self) {
        self.registration
            .drain(Duration::from_secs(2))
            .await
            .unwrap();
        let _ = self.stop.send(());
        self.server.await.unwrap();
    }
}

/// A balancing channel over the addresses of [`PATH`], kept current by `discover_path`.
fn balanced_channel(registry: Arc<dyn RouteManager>) -> Channel {
    let (channel, changes) = Channel::balance_channel::<wayfinder::resolve::EndpointKey>(16);
    let mut discover = discover_path(registry, PATH, |address: &Address| {
        Endpoint::from_shared(format!("http://{address}")).unwrap()
    });
    tokio::spawn(async move {
        while let Some(change) = discover.next().await {
            let change = match change.unwrap() {
                Change::Insert(key, endpoint) => TonicChange::Insert(key, endpoint),
                Change::Remove(key) => TonicChange::Remove(key),
            };
            if changes.send(change).await.is_err() {
                return;
            }
        }
    });
    channel
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_through_a_balanced_channel_survive_instances_coming_and_going() {
    common::init_logging();
    let registry = connect("memory://").await.unwrap();
    let mut instances = Vec::new();
    for _ in 0..2 {
        instances.push(start(&registry).await);
    }
    let channel = balanced_channel(registry.clone());
    let mut client = HealthClient::new(channel.clone());
    // The first call waits for the first address to reach the channel.
    common::eventually(Duration::from_secs(15), "a first answer", || {
        let mut client = client.clone();
        async move {
            let request = HealthCheckRequest {
                service: String::new(),
            };
            // A balanced channel with no endpoint yet waits: bound each attempt.
            let attempt = tokio::time::timeout(Duration::from_secs(1), client.check(request));
            attempt.await.ok()?.ok().map(|_| ())
        }
    })
    .await;

    let done = Arc::new(AtomicBool::new(false));
    let (calls, failures) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut callers = Vec::new();
    for _ in 0..4 {
        let mut client = HealthClient::new(channel.clone());
        let (done, calls, failures) = (done.clone(), calls.clone(), failures.clone());
        callers.push(tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let request = HealthCheckRequest {
                    service: String::new(),
                };
                match client.check(request).await {
                    Ok(answer) => assert_eq!(answer.into_inner().status, 1, "SERVING"),
                    Err(status) => {
                        eprintln!("call failed: {status}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                calls.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Replace each instance in turn: a new one registers, then the old one drains and stops.
    for _ in 0..2 {
        let fresh = start(&registry).await;
        let old = instances.remove(0);
        old.drain_and_stop().await;
        instances.push(fresh);
    }
    let before = calls.load(Ordering::Relaxed);
    common::eventually(
        Duration::from_secs(15),
        "calls on the new instances",
        || {
            let calls = calls.clone();
            async move { (calls.load(Ordering::Relaxed) > before + 100).then_some(()) }
        },
    )
    .await;
    done.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await.unwrap();
    }
    client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    let (calls, failures) = (
        calls.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
    );
    eprintln!("tonic balance_channel through two replacements: {calls} calls, {failures} failed");
    assert!(calls > 200, "{calls} calls");
    assert_eq!(failures, 0, "of {calls} calls");
    for instance in instances {
        instance.drain_and_stop().await;
    }
}
