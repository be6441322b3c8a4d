//! A resolver's figures as metrics (feature `metrics`; see [`crate::metrics`] for the names): its counters and the
//! states of its routes and endpoints, published once a second and on demand. Each resolver
//! adds what changed since its last publication (and takes its gauges back when it drops), so
//! several resolvers in one process add up.

use std::sync::Mutex;

use super::resolver::ResolverStats;
use super::table::{RouteState, RouteTable};

/// How often a resolver publishes its figures.
pub(crate) const PUBLISH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// What one resolver published last.
#[derive(Debug, Default, Clone, PartialEq)]
struct Figures {
    found: u64,
    not_found: u64,
    fail_open: u64,
    ejections: u64,
    health_flips: u64,
    watch_reconnects: u64,
    /// Routes by state: healthy, degraded, panic, empty.
    routes: [f64; 4],
    /// Endpoints by state: healthy, unhealthy, ejected.
    endpoints: [f64; 3],
    staleness: f64,
}

const ROUTE_STATES: [RouteState; 4] = [
    RouteState::Healthy,
    RouteState::Degraded,
    RouteState::Panic,
    RouteState::Empty,
];
const ENDPOINT_STATES: [&str; 3] = ["healthy", "unhealthy", "ejected"];

impl Figures {
    fn of(stats: &ResolverStats, table: &RouteTable) -> Self {
        let mut routes = [0.0; 4];
        for entry in table.entries() {
            let state = entry.state();
            let slot = ROUTE_STATES.iter().position(|s| *s == state).unwrap_or(0);
            routes[slot] += 1.0;
        }
        let mut endpoints = [0.0; 3];
        for endpoint in table.endpoints() {
            let slot = match (endpoint.is_healthy(), endpoint.is_ejected()) {
                (false, _) => 1,
                (true, true) => 2,
                (true, false) => 0,
            };
            endpoints[slot] += 1.0;
        }
        Figures {
            found: stats.resolves.saturating_sub(stats.not_found),
            not_found: stats.not_found,
            fail_open: stats.fail_open,
            ejections: stats.ejections,
            health_flips: stats.health_flips,
            watch_reconnects: stats.watch_reconnects,
            routes,
            endpoints,
            staleness: stats.age.as_secs_f64(),
        }
    }
}

/// A resolver's publisher: remembers what it published, to add only the difference.
#[derive(Debug, Default)]
pub(crate) struct Publisher {
    last: Mutex<Figures>,
}

impl Publisher {
    /// Publishes the resolver's figures now.
    pub(crate) fn publish(&self, stats: &ResolverStats, table: &RouteTable) {
        let now = Figures::of(stats, table);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        send(&last, &now);
        *last = now;
    }

    /// Takes back this resolver's gauges (it is going away); its counters stay counted.
    pub(crate) fn retract(&self) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let gone = Figures {
            routes: [0.0; 4],
            endpoints: [0.0; 3],
            staleness: 0.0,
            ..last.clone()
        };
        send(&last, &gone);
        *last = gone;
    }
}

/// Sends the difference between two publications to the recorder.
fn send(before: &Figures, now: &Figures) {
    use crate::metrics::*;
    let add = |name: &'static str, labels: &[(&'static str, &'static str)], from: u64, to: u64| {
        if to > from {
            ::metrics::counter!(name, labels).increment(to - from);
        }
    };
    add(RESOLUTIONS, &[("result", "found")], before.found, now.found);
    add(
        RESOLUTIONS,
        &[("result", "not_found")],
        before.not_found,
        now.not_found,
    );
    add(FAIL_OPEN_SELECTIONS, &[], before.fail_open, now.fail_open);
    add(EJECTIONS, &[], before.ejections, now.ejections);
    add(HEALTH_FLIPS, &[], before.health_flips, now.health_flips);
    add(
        WATCH_RECONNECTS,
        &[],
        before.watch_reconnects,
        now.watch_reconnects,
    );
    for (i, state) in ROUTE_STATES.iter().enumerate() {
        ::metrics::gauge!(ROUTES, "state" => state.as_str())
            .increment(now.routes[i] - before.routes[i]);
    }
    for (i, state) in ENDPOINT_STATES.iter().enumerate() {
        ::metrics::gauge!(ENDPOINTS, "state" => *state)
            .increment(now.endpoints[i] - before.endpoints[i]);
    }
    ::metrics::gauge!(REGISTRY_STALENESS).increment(now.staleness - before.staleness);
}
