//! A resolver's figures as metrics (feature `metrics`; see [`crate::metrics`] for the names),
//! published once a second and on demand. Counters go out as what was added since the last
//! publication, so several resolvers add up. Gauges are set to the process's totals over every
//! live resolver (the route and endpoint counts summed, the staleness the worst), so they are
//! right from the first publication after a recorder is installed and drop a resolver's share
//! when it goes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::resolver::ResolverStats;
use super::table::{RouteState, RouteTable};
use crate::metrics::*;

/// How often a resolver publishes its figures.
pub(crate) const PUBLISH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The counters one resolver published last.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    found: u64,
    not_found: u64,
    fail_open: u64,
    ejections: u64,
    health_flips: u64,
    watch_reconnects: u64,
}

/// One resolver's gauges.
#[derive(Debug, Default, Clone, Copy)]
struct Gauges {
    /// Routes by state, in [`ROUTE_STATES`] order.
    routes: [u64; 4],
    /// Endpoints by state, in [`ENDPOINT_STATES`] order.
    endpoints: [u64; 3],
    staleness_ms: u64,
}

const ROUTE_STATES: [RouteState; 4] = [
    RouteState::Healthy,
    RouteState::Degraded,
    RouteState::Panic,
    RouteState::Empty,
];
const ENDPOINT_STATES: [&str; 3] = ["healthy", "unhealthy", "ejected"];

/// Every live resolver's last gauges, by publisher.
static LIVE: Mutex<BTreeMap<u64, Gauges>> = Mutex::new(BTreeMap::new());
static NEXT_PUBLISHER: AtomicU64 = AtomicU64::new(0);

impl Gauges {
    fn of(stats: &ResolverStats, table: &RouteTable) -> Self {
        let mut gauges = Gauges {
            staleness_ms: u64::try_from(stats.age.as_millis()).unwrap_or(u64::MAX),
            ..Gauges::default()
        };
        for entry in table.entries() {
            let state = entry.state();
            let slot = ROUTE_STATES.iter().position(|s| *s == state).unwrap_or(0);
            gauges.routes[slot] += 1;
        }
        for endpoint in table.endpoints() {
            let slot = match (endpoint.is_healthy(), endpoint.is_ejected()) {
                (false, _) => 1,
                (true, true) => 2,
                (true, false) => 0,
            };
            gauges.endpoints[slot] += 1;
        }
        gauges
    }
}

/// What a publisher holds under its lock.
#[derive(Debug, Default)]
struct State {
    published: Counts,
    /// The resolver is gone: publish nothing more.
    retracted: bool,
}

/// A resolver's publisher.
#[derive(Debug)]
pub(crate) struct Publisher {
    id: u64,
    state: Mutex<State>,
}

impl Default for Publisher {
    fn default() -> Self {
        Publisher {
            id: NEXT_PUBLISHER.fetch_add(1, Ordering::Relaxed),
            state: Mutex::default(),
        }
    }
}

impl Publisher {
    /// Publishes the figures `read` gives, read under the publisher's lock (so a slower
    /// publication never follows a newer one with older figures).
    pub(crate) fn publish(&self, read: impl FnOnce() -> (ResolverStats, Arc<RouteTable>)) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.retracted {
            return;
        }
        let (stats, table) = read();
        let now = Counts {
            found: stats.found,
            not_found: stats.not_found,
            fail_open: stats.fail_open,
            ejections: stats.ejections,
            health_flips: stats.health_flips,
            watch_reconnects: stats.watch_reconnects,
        };
        state.published = add_counts(&state.published, &now);
        let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
        live.insert(self.id, Gauges::of(&stats, &table));
        set_totals(&live);
    }

    /// Takes the resolver's gauges out of the totals; it publishes nothing more.
    pub(crate) fn retract(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.retracted = true;
        let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
        if live.remove(&self.id).is_some() {
            set_totals(&live);
        }
    }
}

/// Adds to each counter what it gained since `before`; returns what is published now (a
/// counter never goes back).
fn add_counts(before: &Counts, now: &Counts) -> Counts {
    let add = |name: &'static str, labels: &[(&'static str, &'static str)], from: u64, to: u64| {
        if to > from {
            ::metrics::counter!(name, labels).increment(to - from);
        }
        from.max(to)
    };
    Counts {
        found: add(RESOLUTIONS, &[("result", "found")], before.found, now.found),
        not_found: add(
            RESOLUTIONS,
            &[("result", "not_found")],
            before.not_found,
            now.not_found,
        ),
        fail_open: add(FAIL_OPEN_SELECTIONS, &[], before.fail_open, now.fail_open),
        ejections: add(EJECTIONS, &[], before.ejections, now.ejections),
        health_flips: add(HEALTH_FLIPS, &[], before.health_flips, now.health_flips),
        watch_reconnects: add(
            WATCH_RECONNECTS,
            &[],
            before.watch_reconnects,
            now.watch_reconnects,
        ),
    }
}

/// Sets the gauges to the totals over every live resolver.
fn set_totals(live: &BTreeMap<u64, Gauges>) {
    let mut total = Gauges::default();
    for gauges in live.values() {
        for (sum, n) in total.routes.iter_mut().zip(gauges.routes) {
            *sum += n;
        }
        for (sum, n) in total.endpoints.iter_mut().zip(gauges.endpoints) {
            *sum += n;
        }
        total.staleness_ms = total.staleness_ms.max(gauges.staleness_ms);
    }
    for (state, n) in ROUTE_STATES.iter().zip(total.routes) {
        ::metrics::gauge!(ROUTES, "state" => state.as_str()).set(n as f64);
    }
    for (state, n) in ENDPOINT_STATES.iter().zip(total.endpoints) {
        ::metrics::gauge!(ENDPOINTS, "state" => *state).set(n as f64);
    }
    ::metrics::gauge!(REGISTRY_STALENESS).set(total.staleness_ms as f64 / 1000.0);
}
