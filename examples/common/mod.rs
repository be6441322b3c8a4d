//! What the backend examples do, whatever the backend: register at start-up, resolve by path.

use tokio::net::TcpListener;
use wayfinder::{connect, Address, AddressResolver, Instance, ServiceDescriptor};

/// Runs the example against `$WAYFINDER_BACKEND`, else `default_url`.
pub async fn register_and_resolve(default_url: &str) -> wayfinder::Result<()> {
    let url = std::env::var("WAYFINDER_BACKEND").unwrap_or_else(|_| default_url.to_owned());
    let registry = connect(&url).await?;
    println!("registry: {}", wayfinder::config::redact_url(&url));

    // The service: listen, then register its routes bound to the backend's liveness.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = Address::new("127.0.0.1", listener.local_addr()?.port());
    let routes = vec![
        ServiceDescriptor::new("Demo.IOrderService.Get_id", "api/order/get/{id}"),
        ServiceDescriptor::new("Demo.IOrderService.Create", "api/order/create"),
    ];
    let registration = registry
        .register(Instance::new(address.clone(), routes))
        .await?;
    println!(
        "registered {address} (instance {})",
        registration.instance_id()
    );

    // A client: resolve by route path.
    let resolver = AddressResolver::new(registry.clone()).await?;
    for path in ["api/order/create", "api/order/get/42"] {
        let target = resolver.resolve_path(path, None).await?;
        println!("{path} -> {}", target.address());
    }

    registration.shutdown().await?;
    println!(
        "deregistered; routes left: {}",
        registry.list().await?.len()
    );
    Ok(())
}
