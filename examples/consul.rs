//! Register at start-up and resolve by path against Consul.
//!
//! Start a Consul agent first (for instance `backends/.local/bin/consul agent -dev` after
//! `bash backends/install.sh`), then run `cargo run --example consul` (or set `WAYFINDER_BACKEND`
//! to another `consul://` URL).

mod common;

#[tokio::main]
async fn main() -> wayfinder::Result<()> {
    common::register_and_resolve("consul://127.0.0.1:8500?prefix=examples/consul/&ttl=10s").await
}
