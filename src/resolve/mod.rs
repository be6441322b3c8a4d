//! Resolution: from a route path or service id to one healthy address.
//!
//! [`AddressResolver`] keeps a [`RouteTable`] current from a [`crate::RouteSource::watch`],
//! [`HealthMonitor`] keeps each distinct address's local health, and a [`select::Selector`] picks
//! one address per call.

mod endpoint;
mod health;
mod latency;
#[cfg(feature = "metrics")]
mod metrics;
mod outlier;
mod reports;
mod resolver;
pub mod select;
mod sharded;
mod slow_start;
mod snapshot;
mod table;
mod users;
mod view;

#[cfg(feature = "tower")]
pub(crate) use table::trim_path;

pub use endpoint::{Endpoint, EndpointKey};
pub use health::{probe, HealthConfig, HealthMonitor};
pub use outlier::OutlierConfig;
pub use resolver::{
    AddressResolver, ResolveFuture, Resolved, ResolverConfig, ResolverStats, DEFAULT_NEGATIVE_TTL,
    DEFAULT_PANIC_THRESHOLD, DEFAULT_START_TIMEOUT, MAX_ALTERNATES,
};
pub use slow_start::SlowStartConfig;
pub use table::{RouteEntry, RouteState, RouteTable};
