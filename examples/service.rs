//! A greeter service that registers its routes at start-up and deregisters on SIGTERM or
//! Ctrl-C. The registry comes from configuration only, so the same binary runs against a file,
//! etcd or Consul:
//!
//! ```text
//! WAYFINDER_BACKEND=file://./routes.json      cargo run --example service
//! WAYFINDER_BACKEND=etcd://127.0.0.1:2379     cargo run --features etcd --example service
//! WAYFINDER_BACKEND=consul://127.0.0.1:8500   cargo run --example service
//! ```
//!
//! Every `WAYFINDER_*` variable of [`wayfinder::Config`] applies (`WAYFINDER_TTL`,
//! `WAYFINDER_PREFIX`, `WAYFINDER_TOKEN`, ...); `WAYFINDER_CONFIG` names a TOML or JSON file read
//! first. `SERVICE_ADDRESS` sets where it listens (default `127.0.0.1:0`, any free port) and
//! `SERVICE_NAME` what it answers with; `SERVICE_FAIL_RATE` and `SERVICE_FAIL_FOR` make it answer
//! errors to a share of requests for a while. It prints `registered <address>` once its routes are in
//! the registry and `deregistered <address>` when they are gone. On SIGTERM it drains: it
//! deregisters and keeps serving until watchers have the change (at most 2 s), then stops. It
//! publishes its open connections as its load, for the `least_resource` selector.

mod hello;

use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;
use tower::BoxError;
use wayfinder::config::redact_url;
use wayfinder::{connect_with, Address, Config, Instance, LoadReport};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,wayfinder=info".into()),
        )
        .init();
    let config_file = std::env::var_os("WAYFINDER_CONFIG").map(PathBuf::from);
    let config = Config::load(config_file.as_deref())?;
    let registry = connect_with(&config).await?;

    let listen_on = std::env::var("SERVICE_ADDRESS").unwrap_or_else(|_| "127.0.0.1:0".into());
    let listener = TcpListener::bind(&listen_on).await?;
    let local = listener.local_addr()?;
    let address = Address::new(local.ip().to_string(), local.port());
    let name = std::env::var("SERVICE_NAME").unwrap_or_else(|_| address.to_string());
    let server = tokio::spawn(hello::serve_hello_failing(listener, name, failing()?));

    let registration = registry
        .register(
            // The load the least_resource selector reads: connections open now, published when
            // it moved by two or more (and by 5%).
            Instance::new(address.clone(), hello::greeter_routes()).with_load_report(
                LoadReport::new(|| hello::open_connections() as f64).with_min_change(2.0),
            ),
        )
        .await?;
    println!(
        "registered {address} in {} ({})",
        registry.backend(),
        redact_url(&config.backend)
    );

    stop_signal().await?;
    // Keep serving until watchers have seen the deregistration, then stop accepting.
    registration.drain(Duration::from_secs(2)).await?;
    server.abort();
    println!("deregistered {address}");
    Ok(())
}

/// `SERVICE_FAIL_RATE` (a share, 0 to 1) of requests answered `500` for `SERVICE_FAIL_FOR`
/// seconds after start (default: for as long as it runs), to show outlier ejection.
fn failing() -> Result<hello::Failing, BoxError> {
    let Ok(rate) = std::env::var("SERVICE_FAIL_RATE") else {
        return Ok(hello::Failing::never());
    };
    let seconds: f64 = match std::env::var("SERVICE_FAIL_FOR") {
        Ok(seconds) => seconds.parse()?,
        Err(_) => 1e9,
    };
    Ok(hello::Failing {
        rate: rate.parse()?,
        until: std::time::Instant::now() + Duration::from_secs_f64(seconds),
    })
}

/// Waits for SIGTERM or Ctrl-C.
async fn stop_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result,
            _ = terminate.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await
}
