//! Register at start-up and resolve by path against etcd.
//!
//! Start an etcd first (for instance `backends/.local/bin/etcd` after `bash backends/install.sh`),
//! then run `cargo run --features etcd --example etcd` (or set `WAYFINDER_BACKEND` to another
//! `etcd://` URL).

use std::sync::Arc;

use tokio::net::TcpListener;
use wayfinder::{connect, Address, AddressResolver, Instance, ServiceDescriptor};

#[tokio::main]
async fn main() -> wayfinder::Result<()> {
    let url = std::env::var("WAYFINDER_BACKEND")
        .unwrap_or_else(|_| "etcd://127.0.0.1:2379?prefix=examples/etcd/&ttl=5s".to_owned());
    let registry = connect(&url).await?;
    println!("registry: {url}");

    // The service: listen, then register its routes bound to an etcd lease.
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
