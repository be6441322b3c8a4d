//! A [`tower::discover::Discover`] of a route's addresses (feature `tower`).
//!
//! [`discover_path`] and [`discover_id`] turn a [`RouteSource`]'s watch into a stream of
//! [`Change`]s keyed by [`EndpointKey`]: an `Insert` when an address starts serving the route, a
//! `Remove` when the last matching route stops listing it. The stream is a `Discover` through
//! tower's blanket implementation, so it feeds `tower::balance::p2c::Balance` directly, or a
//! tonic `Channel::balance_channel` sender by forwarding each change.
//!
//! ```no_run
//! # async fn demo() -> wayfinder::Result<()> {
//! use wayfinder::discover::discover_path;
//!
//! let registry = wayfinder::connect("file://./routes.json").await?;
//! let discover = discover_path(registry, "api/user/getuser", |address| address.to_string());
//! # let _ = discover;
//! # Ok(())
//! # }
//! ```
//!
//! The watch keeps the last good routes while the backend cannot be read, so an outage removes
//! nothing: the balancer keeps calling the addresses it knows.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tower::discover::Change;

use crate::error::{Error, Result};
use crate::manager::RouteSource;
use crate::resolve::{trim_path, EndpointKey};
use crate::route::{Address, ServiceRoute};
use crate::watch::{RouteEvent, RouteWatch};

type OpenWatch = Pin<Box<dyn Future<Output = Result<RouteWatch>> + Send>>;

enum State {
    Opening(OpenWatch),
    Watching(RouteWatch),
    Done,
}

enum Matcher {
    Path(String),
    Id(String),
}

impl Matcher {
    fn matches(&self, route: &ServiceRoute) -> bool {
        match self {
            Matcher::Path(path) => trim_path(route.route_path()).eq_ignore_ascii_case(path),
            Matcher::Id(id) => route.id() == id,
        }
    }
}

/// The addresses of the routes matching a route path or a service id, as a stream of
/// [`Change`]s; a [`tower::discover::Discover`] through tower's blanket implementation.
///
/// The watch is opened on the first poll. If opening it fails, the stream yields that error and
/// ends. The stream holds the manager, so it follows the registry for as long as it lives. Route
/// paths are matched as the resolver matches them: case-insensitively, without leading or
/// trailing `/`. Each address gets one service,
/// made by the `make_service` function when the address first appears; changes to an address's
/// metadata (same host and port) make no new service.
pub struct RouteDiscover<S, F> {
    /// Kept so the registry outlives every other handle on it.
    _manager: Arc<dyn RouteSource>,
    state: State,
    matcher: Matcher,
    make_service: F,
    /// Endpoints of each matching service id, in route order.
    routes: HashMap<String, Vec<EndpointKey>>,
    /// How many matching service ids list each endpoint.
    served: HashMap<EndpointKey, usize>,
    pending: VecDeque<Change<EndpointKey, S>>,
}

/// The addresses of every route whose path is `route_path` (compared case-insensitively); several
/// service ids with that path give the union of their addresses.
pub fn discover_path<S, F>(
    manager: Arc<dyn RouteSource>,
    route_path: &str,
    make_service: F,
) -> RouteDiscover<S, F>
where
    F: FnMut(&Address) -> S,
{
    let path = trim_path(route_path).to_owned();
    RouteDiscover::new(manager, Matcher::Path(path), make_service)
}

/// The addresses of the route with exactly this service id.
pub fn discover_id<S, F>(
    manager: Arc<dyn RouteSource>,
    service_id: &str,
    make_service: F,
) -> RouteDiscover<S, F>
where
    F: FnMut(&Address) -> S,
{
    RouteDiscover::new(manager, Matcher::Id(service_id.to_owned()), make_service)
}

impl<S, F> RouteDiscover<S, F>
where
    F: FnMut(&Address) -> S,
{
    fn new(manager: Arc<dyn RouteSource>, matcher: Matcher, make_service: F) -> Self {
        let opener = manager.clone();
        RouteDiscover {
            _manager: manager,
            state: State::Opening(Box::pin(async move { opener.watch().await })),
            matcher,
            make_service,
            routes: HashMap::new(),
            served: HashMap::new(),
            pending: VecDeque::new(),
        }
    }

    fn apply(&mut self, event: RouteEvent) {
        match event {
            RouteEvent::Created(route) | RouteEvent::Changed(route) => {
                if self.matcher.matches(&route) {
                    self.update(route.id(), &route.addresses);
                } else {
                    self.update(route.id(), &[]);
                }
            }
            RouteEvent::Removed(route) => self.update(route.id(), &[]),
            RouteEvent::Synced => {}
        }
    }

    /// Sets the addresses of one service id and queues the changes: inserts before removes, so a
    /// replaced address never leaves the balancer empty in between.
    fn update(&mut self, service_id: &str, addresses: &[Arc<Address>]) {
        let mut fresh: Vec<(EndpointKey, &Address)> = Vec::with_capacity(addresses.len());
        for address in addresses {
            let key = EndpointKey::shared(address);
            if !fresh.iter().any(|(k, _)| *k == key) {
                fresh.push((key, address));
            }
        }
        let keys: Vec<EndpointKey> = fresh.iter().map(|(k, _)| k.clone()).collect();
        let old = if keys.is_empty() {
            self.routes.remove(service_id)
        } else {
            self.routes.insert(service_id.to_owned(), keys.clone())
        }
        .unwrap_or_default();

        for (key, address) in fresh {
            if old.contains(&key) {
                continue;
            }
            let count = self.served.entry(key.clone()).or_insert(0);
            *count += 1;
            if *count == 1 {
                let service = (self.make_service)(address);
                self.pending.push_back(Change::Insert(key, service));
            }
        }
        for key in old {
            if keys.contains(&key) {
                continue;
            }
            if let Some(count) = self.served.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    self.served.remove(&key);
                    self.pending.push_back(Change::Remove(key));
                }
            }
        }
    }
}

impl<S, F> Unpin for RouteDiscover<S, F> {}

impl<S, F> futures_core::Stream for RouteDiscover<S, F>
where
    F: FnMut(&Address) -> S,
{
    type Item = Result<Change<EndpointKey, S>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(change) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            let event = match &mut this.state {
                State::Opening(open) => {
                    match ready!(open.as_mut().poll(cx)) {
                        Ok(watch) => this.state = State::Watching(watch),
                        Err(error) => {
                            this.state = State::Done;
                            return Poll::Ready(Some(Err::<_, Error>(error)));
                        }
                    }
                    continue;
                }
                State::Watching(watch) => ready!(Pin::new(watch).poll_next(cx)),
                State::Done => return Poll::Ready(None),
            };
            match event {
                Some(event) => this.apply(event),
                None => this.state = State::Done,
            }
        }
    }
}

impl<S, F> fmt::Debug for RouteDiscover<S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Opening(_) => "opening",
            State::Watching(_) => "watching",
            State::Done => "done",
        };
        let target = match &self.matcher {
            Matcher::Path(path) => ("route_path", path),
            Matcher::Id(id) => ("service_id", id),
        };
        f.debug_struct("RouteDiscover")
            .field(target.0, target.1)
            .field("state", &state)
            .field("endpoints", &self.served.len())
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::memory::MemoryRouteManager;
    use crate::route::ServiceDescriptor;

    fn route(id: &str, path: &str, ports: &[u16]) -> ServiceRoute {
        ServiceRoute::new(
            ServiceDescriptor::new(id, path),
            ports
                .iter()
                .map(|p| Address::new("127.0.0.1", *p))
                .collect(),
        )
    }

    fn drain(discover: &mut RouteDiscover<u16, fn(&Address) -> u16>) -> Vec<String> {
        discover
            .pending
            .drain(..)
            .map(|change| match change {
                Change::Insert(_, port) => format!("+{port}"),
                Change::Remove(key) => format!("-{key:?}"),
            })
            .collect()
    }

    #[test]
    fn is_send_when_its_parts_are() {
        fn assert_send<T: Send + Unpin>() {}
        assert_send::<RouteDiscover<u16, fn(&Address) -> u16>>();
    }

    #[test]
    fn shared_path_is_the_union_and_removes_only_what_no_route_lists() {
        let manager: Arc<dyn RouteSource> = Arc::new(MemoryRouteManager::default());
        let port: fn(&Address) -> u16 = |address| address.port;
        let mut discover = discover_path(manager, "api/x", port);

        discover.apply(RouteEvent::Created(Arc::new(route(
            "X.A",
            "api/x",
            &[1, 2],
        ))));
        discover.apply(RouteEvent::Created(Arc::new(route(
            "X.B",
            "API/X",
            &[2, 3],
        ))));
        discover.apply(RouteEvent::Created(Arc::new(route("Y", "api/y", &[4]))));
        assert_eq!(drain(&mut discover), ["+1", "+2", "+3"]);

        discover.apply(RouteEvent::Removed(Arc::new(route(
            "X.A",
            "api/x",
            &[1, 2],
        ))));
        let left = drain(&mut discover);
        assert_eq!(left.len(), 1, "only port 1 leaves: {left:?}");
        assert!(
            left[0].starts_with('-') && left[0].contains("port: 1 "),
            "{left:?}"
        );
        assert_eq!(discover.served.len(), 2);

        let mut moved = route("X.B", "api/x", &[3, 5]);
        Arc::make_mut(&mut moved.addresses[0]).weight = Some(7);
        discover.apply(RouteEvent::Changed(Arc::new(moved)));
        let changes = drain(&mut discover);
        assert_eq!(changes[0], "+5");
        assert!(changes[1].starts_with('-') && changes[1].contains("port: 2"));

        discover.apply(RouteEvent::Changed(Arc::new(route(
            "X.B",
            "api/other",
            &[3, 5],
        ))));
        assert_eq!(
            drain(&mut discover).len(),
            2,
            "a route moved away removes its addresses"
        );
        assert!(discover.served.is_empty());
    }
}
