//! The [`RouteSource`] and [`RouteManager`] traits every backend implements, and the
//! [`Instance`] it registers.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::load::LoadReport;
use crate::registration::Registration;
use crate::route::{
    encode_route, instance_id, validate_service_id, Address, ServiceDescriptor, ServiceRoute,
};
use crate::scope;
use crate::watch::RouteWatch;

/// Default liveness TTL of a registration: entries vanish this long after heartbeats stop.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// Shortest TTL accepted.
pub const MIN_TTL: Duration = Duration::from_secs(1);

/// One running process at one address, and the routes of all the methods it serves.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// Where the instance listens.
    pub address: Address,
    /// What it serves.
    pub routes: Vec<ServiceDescriptor>,
    /// Liveness TTL; `None` takes the backend's (see [`DEFAULT_TTL`]).
    pub ttl: Option<Duration>,
    /// The load it publishes on its heartbeat as its address's `ProcessorTime`; `None`
    /// publishes none.
    pub load: Option<LoadReport>,
}

impl Instance {
    /// An instance at `address` serving `routes`, with the backend's TTL.
    pub fn new(address: Address, routes: Vec<ServiceDescriptor>) -> Self {
        Instance {
            address,
            routes,
            ttl: None,
            load: None,
        }
    }

    /// Sets the liveness TTL (builder style).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Publishes the load `read` gives on each heartbeat, for the `least_resource` selector
    /// (builder style; see [`LoadReport`]).
    pub fn with_load(self, read: impl Fn() -> f64 + Send + Sync + 'static) -> Self {
        self.with_load_report(LoadReport::new(read))
    }

    /// Publishes the load `report` reads on each heartbeat (builder style).
    pub fn with_load_report(mut self, report: LoadReport) -> Self {
        self.load = Some(report);
        self
    }

    /// The instance id: the address encoded for use in a key (see [`crate::route::instance_id`]).
    pub fn id(&self) -> Result<String> {
        instance_id(&self.address)
    }

    /// The route one of its descriptors makes with this instance's address alone.
    pub fn route(&self, descriptor: &ServiceDescriptor) -> ServiceRoute {
        ServiceRoute::new(descriptor.clone(), vec![self.address.clone()])
    }

    /// Checks everything a backend needs before writing: address, ids, duplicates, sizes, TTL.
    pub fn validate(&self) -> Result<()> {
        self.id()?;
        if self.routes.is_empty() {
            return Err(Error::invalid_input(format!(
                "instance {} has no routes to register",
                self.address
            )));
        }
        let mut seen = HashSet::new();
        for descriptor in &self.routes {
            validate_service_id(&descriptor.id)?;
            if !seen.insert(descriptor.id.as_str()) {
                return Err(Error::invalid_input(format!(
                    "service id {:?} is listed twice",
                    descriptor.id
                )));
            }
            encode_route(&self.route(descriptor))?;
        }
        if let Some(ttl) = self.ttl {
            if ttl < MIN_TTL {
                return Err(Error::invalid_input(format!(
                    "TTL {ttl:?} is below the minimum of {MIN_TTL:?}"
                )));
            }
        }
        Ok(())
    }
}

/// What a reader of a registry needs: the routes now, and a watch of them. Resolvers and
/// `tower` discovery take this; [`RouteManager`] adds the writes.
///
/// Usable as `Arc<dyn RouteSource>` (an `Arc<dyn RouteManager>` converts to it).
#[async_trait]
pub trait RouteSource: Send + Sync + fmt::Debug {
    /// The backend's name: `memory`, `file`, `etcd` or `consul`.
    fn backend(&self) -> &'static str;

    /// The liveness TTL registrations get when they name none. A resolver's empty protection
    /// lasts twice this by default.
    fn default_ttl(&self) -> Duration {
        DEFAULT_TTL
    }

    /// What identifies this registry and namespace (backend, place, prefix), so that a
    /// resolver's snapshot written for one registry is never served for another.
    fn registry_id(&self) -> String {
        self.backend().to_owned()
    }

    /// Every route in the registry, read now, in service id order.
    async fn list(&self) -> Result<Vec<ServiceRoute>>;

    /// Watches the routes: the current ones as `Created`, then `Synced`, then each change.
    ///
    /// While the backend cannot be read the watch keeps the last good routes and says so in
    /// [`RouteWatch::status`].
    async fn watch(&self) -> Result<RouteWatch>;

    /// The routes whose service id starts with one of `services`, read now, in service id
    /// order. An empty list, or an empty prefix, means every service.
    ///
    /// etcd and Consul read only those key ranges; other backends filter a whole listing.
    async fn list_services(&self, services: &[String]) -> Result<Vec<ServiceRoute>> {
        let services = scope::normalize(services);
        let mut routes = self.list().await?;
        routes.retain(|route| scope::covers(&services, route.id()));
        Ok(routes)
    }

    /// Like [`RouteSource::watch`], over the service ids that start with one of `services`
    /// only. An empty list, or an empty prefix, means every service.
    ///
    /// etcd follows one watch per prefix and Consul one blocking query per prefix, so what the
    /// client holds grows with what it subscribed to; other backends filter a whole watch.
    async fn watch_services(&self, services: &[String]) -> Result<RouteWatch> {
        let services = scope::normalize(services);
        let watch = self.watch().await?;
        if services.is_empty() {
            return Ok(watch);
        }
        Ok(scope::combine(vec![watch], services))
    }
}

/// A registry of routes: etcd, Consul KV, a shared file, or memory. The reads are
/// [`RouteSource`]'s; this adds registration and removal.
///
/// Usable as `Arc<dyn RouteManager>`; every method may be called from many tasks at once.
#[async_trait]
pub trait RouteManager: RouteSource {
    /// The route of one service id, read now; `None` if it has no live address.
    async fn get(&self, service_id: &str) -> Result<Option<ServiceRoute>> {
        validate_service_id(service_id)?;
        Ok(self
            .list_services(&[service_id.to_owned()])
            .await?
            .into_iter()
            .find(|route| route.id() == service_id))
    }

    /// Publishes an instance's routes, bound to its liveness, and keeps them alive.
    ///
    /// The returned [`Registration`] renews liveness at TTL/3, registers everything again if the
    /// liveness was lost (registry wiped or restarted), and deregisters on `shutdown()`.
    async fn register(&self, instance: Instance) -> Result<Registration>;

    /// Removes an address from every route; returns how many entries were removed.
    async fn deregister(&self, address: &Address) -> Result<usize> {
        self.remove_addresses(std::slice::from_ref(address)).await
    }

    /// Leader election on this registry, with its liveness TTL (see [`crate::election`]);
    /// `Unsupported` on a backend without it.
    fn election(&self) -> Result<std::sync::Arc<dyn crate::election::Election>> {
        Err(Error::new(
            crate::error::ErrorKind::Unsupported,
            format!("the {} backend has no leader election", self.backend()),
        ))
    }

    /// Removes these addresses from every route; returns how many entries were removed.
    ///
    /// An instance that is still running stays registered with its liveness but without these
    /// entries until its liveness is lost; its heartbeat never writes them back.
    async fn remove_addresses(&self, addresses: &[Address]) -> Result<usize>;

    /// Removes every route and every liveness record under this manager's namespace.
    ///
    /// Running instances notice the lost liveness and register again.
    async fn clear(&self) -> Result<()>;
}
