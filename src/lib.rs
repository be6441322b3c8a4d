//! # wayfinder
//!
//! Service discovery for microservices. A service registers its routes at start-up; a client
//! watches them and resolves a route path such as `api/user/getuser` to an address. The registry
//! behind it is etcd, Consul KV or a shared file, chosen by a URL.
//!
//! ```no_run
//! use wayfinder::{connect, Address, Instance, ServiceDescriptor};
//!
//! # async fn demo() -> wayfinder::Result<()> {
//! let registry = connect("file://./routes.json").await?;
//! let routes = vec![ServiceDescriptor::new(
//!     "Surging.IModuleServices.Common.IUserService.GetUser_id",
//!     "api/user/getuser",
//! )];
//! let registration = registry
//!     .register(Instance::new(Address::new("127.0.0.1", 9000), routes))
//!     .await?;
//! for route in registry.list().await? {
//!     println!("{} -> {:?}", route.route_path(), route.addresses);
//! }
//! registration.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! Routes are stored as Surging-compatible JSON under `<prefix><service-id>/<instance-id>`
//! (see [`route`]); every backend implements [`RouteManager`].

#![deny(missing_docs)]
#![warn(unreachable_pub)]

#[cfg(feature = "agent")]
pub mod agent;
pub mod backends;
mod backoff;
mod clock;
pub mod config;
#[cfg_attr(not(any(feature = "etcd", feature = "consul")), allow(dead_code))]
mod decode;
#[cfg(feature = "tower")]
pub mod discover;
pub mod election;
mod error;
mod load;
mod manager;
pub mod metrics;
mod registration;
pub mod resolve;
pub mod route;
mod scope;
mod telemetry;
mod watch;

pub use config::{connect, connect_with, Config};
#[cfg(feature = "tower")]
pub use discover::RouteDiscover;
pub use error::{Error, ErrorKind, Result};
pub use load::{LoadReport, LOAD_DEADBAND};
pub use manager::{Instance, RouteManager, RouteSource, DEFAULT_TTL, MIN_TTL};
pub use registration::{Registration, DRAIN_SETTLE};
pub use resolve::{AddressResolver, ResolverConfig};
pub use route::{Address, Metadata, ServiceDescriptor, ServiceRoute};
pub use watch::{RouteEvent, RouteWatch, SyncStatus};

/// Compiles the README's examples so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
