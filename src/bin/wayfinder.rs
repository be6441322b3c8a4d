//! `wayfinder`: list, watch, register and deregister routes in any backend from the shell.
//!
//! Results go to stdout; logs and errors go to stderr, and errors exit non-zero.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use wayfinder::agent::Agent;
use wayfinder::config::parse_duration;
use wayfinder::resolve::{probe, HealthConfig};
use wayfinder::route::{decode_descriptors, encode_route_value};
use wayfinder::{
    connect_with, Address, AddressResolver, Config, Error, ErrorKind, Instance, ResolverConfig,
    Result, RouteEvent, ServiceRoute,
};

/// Service discovery from the command line.
#[derive(Debug, Parser)]
#[command(name = "wayfinder", version, about)]
struct Cli {
    /// Backend URL: file:///path.json, file://./relative.json, memory://, etcd://.., consul://..
    /// [default: $WAYFINDER_BACKEND, else the configuration file's, else file://./routes.json]
    #[arg(long, global = true)]
    backend: Option<String>,

    /// A .toml or .json configuration file (see wayfinder::Config); WAYFINDER_* variables
    /// override it, and --backend overrides both.
    #[arg(long, global = true, env = "WAYFINDER_CONFIG")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every route: id, path, addresses.
    List {
        /// Print the routes as a JSON array in Surging's form.
        #[arg(long)]
        json: bool,
    },
    /// One route as JSON.
    Get {
        /// The service id.
        id: String,
    },
    /// Route events as JSON lines, the current routes first.
    Watch,
    /// Register routes at an address and keep them registered until SIGINT or SIGTERM.
    Register {
        /// HOST:PORT of the instance.
        #[arg(long)]
        address: String,
        /// JSON file: an array of ServiceDescriptor objects (Id, RoutePath, Token, Metadatas).
        #[arg(long)]
        routes: PathBuf,
        /// Liveness TTL (seconds, or with a unit: 500ms, 10s, 1m).
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Resolve a route path to addresses, one line per pick.
    Resolve {
        /// The route path, e.g. api/user/getusername.
        path: String,
        /// Affinity key (for the consistent_hash selector).
        #[arg(long)]
        key: Option<String>,
        /// How many successive picks to print.
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Selector: round_robin, random, consistent_hash, least_connections, p2c, weighted,
        /// peak_ewma, least_resource
        /// [default: the configuration's, else round_robin].
        #[arg(long)]
        selector: Option<String>,
    },
    /// Probe each address of a route now and print whether it is healthy.
    Health {
        /// The route path.
        path: String,
        /// Time allowed for each TCP connect.
        #[arg(long, default_value = "1s")]
        timeout: String,
    },
    /// Serve a resolver over HTTP for callers that are not Rust: GET /v1/resolve/<path>,
    /// GET /v1/routes, POST /v1/report, GET /metrics, GET /healthz (see wayfinder::agent).
    Agent {
        /// Where to listen (HOST:PORT); loopback unless told otherwise.
        #[arg(long, default_value = wayfinder::agent::DEFAULT_LISTEN)]
        listen: String,
    },
    /// Campaign in election NAME: prints `leader` once elected, then leads until SIGINT or
    /// SIGTERM (and resigns) or until the leadership is lost (exit non-zero).
    Elect {
        /// The election's name.
        name: String,
        /// What observers see as the leader's value (an address, a host name).
        #[arg(long)]
        value: String,
    },
    /// Print the value of the current leader of election NAME; exit non-zero when none leads.
    Leader {
        /// The election's name.
        name: String,
    },
    /// Remove an address from every route.
    Deregister {
        /// HOST:PORT to remove.
        #[arg(long)]
        address: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,wayfinder=info".into()),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    // Before anything talks to the registry, so that every backend call is measured.
    let metrics = match cli.command {
        Command::Agent { .. } => Some(install_prometheus()?),
        _ => None,
    };
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(backend) = cli.backend {
        config.set_backend(&backend)?;
    }
    let registry = connect_with(&config).await?;
    match cli.command {
        Command::List { json } => {
            let routes = registry.list().await?;
            if json {
                let values = routes
                    .iter()
                    .map(encode_route_value)
                    .collect::<Result<Vec<_>>>()?;
                println!("{}", to_pretty(&values)?);
            } else {
                for route in &routes {
                    println!("{}\t{}\t{}", route.id(), route.route_path(), joined(route));
                }
            }
        }
        Command::Get { id } => match registry.get(&id).await? {
            Some(route) => println!("{}", to_pretty(&encode_route_value(&route)?)?),
            None => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("no route with service id {id:?}"),
                ))
            }
        },
        Command::Watch => {
            let mut watch = registry.watch().await?;
            while let Some(event) = watch.next().await {
                if let Some(route) = event.route() {
                    println!("{}", event_line(&event, route));
                }
            }
        }
        Command::Register {
            address,
            routes,
            ttl,
        } => {
            let bytes = std::fs::read(&routes)
                .map_err(|e| Error::from(e).context(format!("read {}", routes.display())))?;
            let mut instance =
                Instance::new(Address::parse(&address)?, decode_descriptors(&bytes)?);
            if let Some(ttl) = ttl {
                instance = instance.with_ttl(parse_duration(&ttl)?);
            }
            let count = instance.routes.len();
            let registration = registry.register(instance).await?;
            eprintln!("registered {count} routes at {address}; SIGINT or SIGTERM deregisters");
            wait_for_stop_signal().await?;
            registration.shutdown().await?;
            eprintln!("deregistered {address}");
        }
        Command::Elect { name, value } => {
            let stop = stop_requested()?;
            let election = registry.election()?;
            // A stop while campaigning withdraws the candidacy before the process exits.
            let campaign = election.campaign_until(&name, &value, Box::pin(stopped(stop.clone())));
            let Some(leadership) = campaign.await? else {
                return Ok(());
            };
            println!("leader");
            eprintln!("leading {name} with token {}", leadership.token());
            tokio::select! {
                () = leadership.lost() => {
                    let _ = leadership.resign().await;
                    return Err(Error::new(ErrorKind::Unavailable, format!("lost the leadership of {name}")));
                }
                () = stopped(stop) => {
                    leadership.resign().await?;
                    eprintln!("resigned from {name}");
                }
            }
        }
        Command::Leader { name } => match registry.election()?.leader(&name).await? {
            Some(leader) => println!("{}", leader.value),
            None => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("election {name} has no leader"),
                ))
            }
        },
        Command::Resolve {
            path,
            key,
            count,
            selector,
        } => {
            if let Some(selector) = selector {
                config.selector = selector;
            }
            let resolver = one_shot_resolver(registry, &config).await?;
            for _ in 0..count {
                let resolved = resolver
                    .resolve_path(&path, key.as_deref().map(str::as_bytes))
                    .await?;
                println!("{}", resolved.address());
            }
        }
        Command::Agent { listen } => {
            let resolver =
                AddressResolver::with_config(registry, config.resolver_config()?).await?;
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .map_err(|err| {
                    Error::new(
                        ErrorKind::InvalidInput,
                        format!("cannot listen on {listen}: {err}"),
                    )
                })?;
            let local = listener.local_addr().map_err(|err| {
                Error::new(ErrorKind::Unavailable, format!("listening socket: {err}"))
            })?;
            let mut agent = Agent::new(std::sync::Arc::new(resolver));
            if let Some(handle) = metrics {
                agent = agent.with_metrics(move || handle.render());
            }
            println!("agent listening on {local}");
            tokio::select! {
                served = agent.serve(listener) => served?,
                _ = tokio::signal::ctrl_c() => eprintln!("agent stopped"),
            }
        }
        Command::Health { path, timeout } => {
            let timeout = parse_duration(&timeout)?;
            let resolver = one_shot_resolver(registry, &config).await?;
            let table = resolver.table();
            let route = table.by_path(&path).ok_or_else(|| {
                Error::new(ErrorKind::NotFound, format!("no route for path {path:?}"))
            })?;
            let mut probes = tokio::task::JoinSet::new();
            for (index, address) in route.route().addresses.iter().cloned().enumerate() {
                probes.spawn(async move { (index, probe(&address, timeout).await, address) });
            }
            let mut results = probes.join_all().await;
            results.sort_by_key(|(index, _, _)| *index);
            for (_, healthy, address) in results {
                let verdict = if healthy { "healthy" } else { "unhealthy" };
                println!("{address} {verdict}");
            }
        }
        Command::Deregister { address } => {
            let removed = registry.deregister(&Address::parse(&address)?).await?;
            eprintln!("removed {address} from {removed} routes");
        }
    }
    Ok(())
}

fn joined(route: &ServiceRoute) -> String {
    route
        .addresses
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn event_line(event: &RouteEvent, route: &ServiceRoute) -> serde_json::Value {
    json!({
        "event": event.name(),
        "id": route.id(),
        "path": route.route_path(),
        "addresses": route.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

fn to_pretty(value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string_pretty(value)
        .map_err(|e| Error::invalid_input(format!("cannot print JSON: {e}")))
}

/// SIGINT and SIGTERM, listened for from the moment this is made (a signal that comes before
/// the first wait is kept, not lost).
struct StopSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn new() -> Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(StopSignals {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(StopSignals {})
    }

    /// Waits for the next SIGINT or SIGTERM.
    async fn recv(&mut self) -> Result<()> {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        tokio::signal::ctrl_c().await?;
        Ok(())
    }
}

async fn wait_for_stop_signal() -> Result<()> {
    StopSignals::new()?.recv().await
}

/// Becomes `true` at the first SIGINT or SIGTERM from now on.
fn stop_requested() -> Result<tokio::sync::watch::Receiver<bool>> {
    let mut signals = StopSignals::new()?;
    let (requested, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if signals.recv().await.is_ok() {
            let _ = requested.send(true);
        }
        // Keep the sender: a dropped one would read as a stop.
        std::future::pending::<()>().await;
    });
    Ok(stop)
}

/// Completes once a stop was requested.
async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// A resolver with the configured settings but no health checks: one-shot commands answer from
/// the registry, not from probes over time.
async fn one_shot_resolver(
    registry: std::sync::Arc<dyn wayfinder::RouteManager>,
    config: &Config,
) -> wayfinder::Result<AddressResolver> {
    let resolver_config = ResolverConfig {
        health: HealthConfig {
            enabled: false,
            ..config.health.clone()
        },
        ..config.resolver_config()?
    };
    AddressResolver::with_config(registry, resolver_config).await
}

/// Installs the Prometheus recorder the agent renders at `/metrics`, with buckets for the backend
/// request durations (from 1 ms to 10 s).
fn install_prometheus() -> Result<PrometheusHandle> {
    const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5, 10.0];
    let failed = |err: &dyn std::fmt::Display| {
        Error::new(
            ErrorKind::Unavailable,
            format!("cannot install the metrics recorder: {err}"),
        )
    };
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(wayfinder::metrics::BACKEND_REQUEST_DURATION.to_owned()),
            &BUCKETS,
        )
        .map_err(|err| failed(&err))?
        .install_recorder()
        .map_err(|err| failed(&err))
}
