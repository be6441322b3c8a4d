//! Register at start-up and resolve by path against etcd.
//!
//! Start an etcd first (for instance `backends/.local/bin/etcd` after `bash backends/install.sh`),
//! then run `cargo run --features etcd --example etcd` (or set `WAYFINDER_BACKEND` to another
//! `etcd://` URL).

mod common;

#[tokio::main]
async fn main() -> wayfinder::Result<()> {
    common::register_and_resolve("etcd://127.0.0.1:2379?prefix=examples/etcd/&ttl=5s").await
}
