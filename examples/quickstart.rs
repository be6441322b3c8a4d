//! Quickstart on the shared-file backend: no server needed.
//!
//! Registers two instances of a user service into a file under a temp dir, lists the routes,
//! then watches while a third instance registers and one deregisters. Then resolves a route path
//! over three instances listening on 127.0.0.1 (round robin), closes one listener, and shows that
//! once the health monitor notices, it is no longer chosen.
//!
//! Run with `cargo run --example quickstart`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use wayfinder::resolve::HealthConfig;
use wayfinder::route::{service_id, RouteTemplate};
use wayfinder::{
    connect, Address, AddressResolver, Instance, ResolverConfig, RouteEvent, RouteManager,
    RouteWatch, ServiceDescriptor,
};

const INTERFACE: &str = "Surging.IModuleServices.Common.IUserService";

/// The routes of the user service, built the way Surging builds them.
fn user_service_routes() -> wayfinder::Result<Vec<ServiceDescriptor>> {
    let template = RouteTemplate::parse("api/{Service}/{Method}")?;
    Ok(vec![
        ServiceDescriptor::new(
            service_id(INTERFACE, "GetUserName", &["id"]),
            template.expand(INTERFACE, "GetUserName", None)?,
        ),
        ServiceDescriptor::new(
            service_id(INTERFACE, "Save", &["requestData"]),
            template.expand(INTERFACE, "Save", None)?,
        )
        .with_metadata("HttpMethod", "POST,PUT"),
    ])
}

async fn print_events(watch: &mut RouteWatch, count: usize) {
    for _ in 0..count {
        match tokio::time::timeout(Duration::from_secs(5), watch.next()).await {
            Ok(Some(event)) => {
                if let Some(route) = event.route() {
                    let addresses: Vec<String> =
                        route.addresses.iter().map(ToString::to_string).collect();
                    println!(
                        "  event: {:<8} {} -> {}",
                        event.name(),
                        route.route_path(),
                        addresses.join(", ")
                    );
                }
            }
            _ => println!("  (no event within 5 s)"),
        }
    }
}

/// A TCP listener that accepts and drops connections, standing in for a service instance.
async fn listen() -> wayfinder::Result<(Address, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = Address::new("127.0.0.1", listener.local_addr()?.port());
    let task = tokio::spawn(async move { while listener.accept().await.is_ok() {} });
    Ok((address, task))
}

async fn resolve_some(
    resolver: &AddressResolver,
    path: &str,
    times: usize,
) -> wayfinder::Result<()> {
    let mut picks = Vec::with_capacity(times);
    for _ in 0..times {
        picks.push(
            resolver
                .resolve_path(path, None)
                .await?
                .address()
                .to_string(),
        );
    }
    println!("  resolve {path} x{times}: {}", picks.join(" "));
    Ok(())
}

/// Three listening instances, a resolver with fast health checks, one listener closed.
async fn resolve_with_health(
    registry: Arc<dyn RouteManager>,
    routes: &[ServiceDescriptor],
) -> wayfinder::Result<()> {
    let mut instances = Vec::new();
    for _ in 0..3 {
        let (address, listener) = listen().await?;
        let registration = registry
            .register(Instance::new(address.clone(), routes.to_vec()))
            .await?;
        instances.push((address, listener, registration));
    }
    let addresses: Vec<String> = instances.iter().map(|(a, _, _)| a.to_string()).collect();
    println!("three instances listening at {}", addresses.join(", "));

    let config = ResolverConfig {
        health: HealthConfig {
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(200),
            failure_threshold: 2,
            ..HealthConfig::default()
        },
        ..ResolverConfig::default()
    };
    let resolver = AddressResolver::with_config(registry.clone(), config).await?;
    let path = routes[0].route_path.as_str();
    resolve_some(&resolver, path, 6).await?;

    let (closed, listener, _) = &instances[0];
    listener.abort();
    println!("closed the listener of {closed}; waiting for the health monitor...");
    let started = Instant::now();
    while resolver.is_healthy(closed) != Some(false) && started.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("  {closed} marked unhealthy after {:?}", started.elapsed());
    resolve_some(&resolver, path, 6).await?;

    for (_, listener, registration) in instances {
        listener.abort();
        registration.shutdown().await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> wayfinder::Result<()> {
    let dir = tempfile::tempdir()?;
    let url = format!("file://{}", dir.path().join("routes.json").display());
    let registry = connect(&url).await?;
    println!("registry: {url}");

    let routes = user_service_routes()?;
    let first = registry
        .register(Instance::new(
            Address::new("127.0.0.1", 9001),
            routes.clone(),
        ))
        .await?;
    let second = registry
        .register(Instance::new(
            Address::new("127.0.0.1", 9002),
            routes.clone(),
        ))
        .await?;
    println!("registered two instances (127.0.0.1:9001 and :9002)");

    println!("routes:");
    for route in registry.list().await? {
        let addresses: Vec<String> = route.addresses.iter().map(ToString::to_string).collect();
        println!(
            "  {} ({}) -> {}",
            route.route_path(),
            route.id(),
            addresses.join(", ")
        );
    }

    let mut watch = registry.watch().await?;
    let mut current = 0;
    while let Some(event) = watch.next().await {
        match event {
            RouteEvent::Synced => break,
            _ => current += 1,
        }
    }
    println!("watching ({current} routes at start)");

    println!("a third instance registers at 127.0.0.1:9003:");
    let third = registry
        .register(Instance::new(
            Address::new("127.0.0.1", 9003),
            routes.clone(),
        ))
        .await?;
    print_events(&mut watch, routes.len()).await;

    println!("the instance at 127.0.0.1:9001 deregisters:");
    first.shutdown().await?;
    print_events(&mut watch, routes.len()).await;

    second.shutdown().await?;
    third.shutdown().await?;
    println!(
        "the registry is empty again: {}",
        registry.list().await?.is_empty()
    );

    resolve_with_health(registry.clone(), &routes).await?;
    println!("done");
    Ok(())
}
