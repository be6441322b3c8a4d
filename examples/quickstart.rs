//! Quickstart on the shared-file backend: no server needed.
//!
//! Registers two instances of a user service into a file under a temp dir, lists the routes,
//! then watches while a third instance registers and one deregisters.
//!
//! Run with `cargo run --example quickstart`.

use std::time::Duration;

use wayfinder::route::{service_id, RouteTemplate};
use wayfinder::{connect, Address, Instance, RouteEvent, RouteWatch, ServiceDescriptor};

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
        "done; the registry is empty again: {}",
        registry.list().await?.is_empty()
    );
    Ok(())
}
