//! Register at start-up and resolve by path against Consul.
//!
//! Start a Consul agent first (for instance `backends/.local/bin/consul agent -dev` after
//! `bash backends/install.sh`), then run `cargo run --example consul` (or set `WAYFINDER_BACKEND`
//! to another `consul://` URL).

use std::sync::Arc;

use tokio::net::TcpListener;
use wayfinder::{connect, Address, AddressResolver, Instance, ServiceDescriptor};

#[tokio::main]
async fn main() -> wayfinder::Result<()> {
    let url = std::env::var("WAYFINDER_BACKEND")
        .unwrap_or_else(|_| "consul://127.0.0.1:8500?prefix=examples/consul/&ttl=10s".to_owned());
    let registry = connect(&url).await?;
    println!("registry: {url}");

    // The service: listen, then register its routes bound to a Consul session.
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
    let resolver = AddressResolver::new(Arc::clone(&registry)).await?;
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
