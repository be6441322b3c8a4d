//! Subscribing to some services only: service-id prefixes, and the watch that combines one
//! backend watch per prefix (or filters a whole-registry watch) into one [`RouteWatch`].
//!
//! A client that calls a few services need not hold the whole registry (Dubbo 3 subscribes per
//! application, xDS resources are fetched on demand): etcd and Consul follow one key range per
//! prefix, the other backends filter what they read.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

#[cfg(any(feature = "etcd", feature = "consul"))]
use crate::error::Result;
#[cfg(any(feature = "etcd", feature = "consul"))]
use crate::route::ServiceRoute;
use crate::watch::{RouteEvent, RouteWatch, SyncStatus};

/// The prefixes without repeats or prefixes covered by a shorter one, sorted; empty when any
/// prefix is empty (every service).
pub(crate) fn normalize(services: &[String]) -> Vec<String> {
    if services.iter().any(|s| s.is_empty()) {
        return Vec::new();
    }
    let mut sorted: Vec<String> = services.to_vec();
    sorted.sort();
    let mut kept: Vec<String> = Vec::with_capacity(sorted.len());
    for service in sorted {
        // Sorted order puts a prefix right before the strings it covers.
        if !kept
            .last()
            .is_some_and(|last| service.starts_with(last.as_str()))
        {
            kept.push(service);
        }
    }
    kept
}

/// Whether `service_id` is in the subscription (an empty one holds every service).
pub(crate) fn covers(services: &[String], service_id: &str) -> bool {
    services.is_empty() || services.iter().any(|s| service_id.starts_with(s.as_str()))
}

/// A backend that reads key ranges: the routes of the service ids starting with a scope (every
/// service for `""`), listed now or followed. etcd and Consul implement it.
#[cfg(any(feature = "etcd", feature = "consul"))]
pub(crate) trait ScopedReader: Sync {
    /// The routes of one range, in service id order.
    async fn list_scope(&self, scope: &str) -> Result<Vec<ServiceRoute>>;
    /// A watch of one range.
    async fn watch_scope(&self, scope: &str) -> Result<RouteWatch>;
}

/// [`crate::RouteSource::list_services`] over a [`ScopedReader`]: one listing per prefix.
#[cfg(any(feature = "etcd", feature = "consul"))]
pub(crate) async fn list_each(
    reader: &impl ScopedReader,
    services: &[String],
) -> Result<Vec<ServiceRoute>> {
    let services = normalize(services);
    if services.is_empty() {
        return reader.list_scope("").await;
    }
    let mut routes = Vec::new();
    for service in &services {
        // Normalized prefixes are sorted and disjoint: the ranges come in service id order.
        routes.extend(reader.list_scope(service).await?);
    }
    Ok(routes)
}

/// [`crate::RouteSource::watch_services`] over a [`ScopedReader`]: one watch per prefix.
#[cfg(any(feature = "etcd", feature = "consul"))]
pub(crate) async fn watch_each(
    reader: &impl ScopedReader,
    services: &[String],
) -> Result<RouteWatch> {
    let services = normalize(services);
    if services.is_empty() {
        return reader.watch_scope("").await;
    }
    let mut watches = Vec::with_capacity(services.len());
    for service in &services {
        watches.push(reader.watch_scope(service).await?);
    }
    Ok(combine(watches, Vec::new()))
}

/// The status of several watches as one: stale while any is, synced as of the oldest, with
/// their reconnects and resets added up.
fn combined(statuses: &[watch::Receiver<SyncStatus>]) -> SyncStatus {
    let mut status = SyncStatus {
        last_sync: Some(SystemTime::now()),
        error: None,
        reconnects: 0,
        resets: 0,
    };
    for receiver in statuses {
        let part = receiver.borrow();
        status.last_sync = match (status.last_sync, part.last_sync) {
            (Some(a), Some(b)) => Some(a.min(b)),
            _ => None,
        };
        if status.error.is_none() {
            status.error.clone_from(&part.error);
        }
        status.reconnects += part.reconnects;
        status.resets += part.resets;
    }
    status
}

/// Stops the forwarding tasks when the combined watch is dropped.
struct Forwarders(Vec<JoinHandle<()>>);

impl Drop for Forwarders {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// One watch carrying the events of `watches` (each over its own part of the registry) and,
/// with `keep`, only those of service ids it covers. `Synced` follows the last part's initial
/// routes. The combined status is published before each event, so a reset is counted before
/// the events that follow it, as with a single watch.
pub(crate) fn combine(watches: Vec<RouteWatch>, keep: Vec<String>) -> RouteWatch {
    let statuses: Arc<[watch::Receiver<SyncStatus>]> =
        watches.iter().map(RouteWatch::status_receiver).collect();
    let (status_tx, status_rx) = watch::channel(combined(&statuses));
    let status_tx = Arc::new(status_tx);
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let parts = watches.len();
    let synced = Arc::new(AtomicUsize::new(0));
    let keep: Arc<[String]> = keep.into();
    let tasks = watches
        .into_iter()
        .enumerate()
        .map(|(at, mut part)| {
            let (statuses, status_tx, events_tx) =
                (statuses.clone(), status_tx.clone(), events_tx.clone());
            let (synced, keep) = (synced.clone(), keep.clone());
            let mut own_status = statuses[at].clone();
            tokio::spawn(async move {
                let publish = || {
                    status_tx.send_if_modified(|status| {
                        let now = combined(&statuses);
                        let changed = *status != now;
                        *status = now;
                        changed
                    })
                };
                loop {
                    tokio::select! {
                        event = part.next() => {
                            let event = match event {
                                None => return,
                                Some(RouteEvent::Synced) => {
                                    if synced.fetch_add(1, Ordering::SeqCst) + 1 != parts {
                                        continue;
                                    }
                                    RouteEvent::Synced
                                }
                                Some(event) => {
                                    let id = event.route().map(|r| r.id()).unwrap_or_default();
                                    if !covers(&keep, id) {
                                        continue;
                                    }
                                    event
                                }
                            };
                            publish();
                            if events_tx.send(event).is_err() {
                                return;
                            }
                        }
                        changed = own_status.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            publish();
                        }
                        () = events_tx.closed() => return,
                    }
                }
            })
        })
        .collect();
    RouteWatch::from_parts(events_rx, status_rx).keep_alive(Arc::new(Forwarders(tasks)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn prefixes_covered_by_shorter_ones_go_and_an_empty_one_means_every_service() {
        let services = normalize(&strings(&[
            "App.IUser",
            "App.IOrder",
            "App.IUserService",
            "App.IOrder",
        ]));
        assert_eq!(services, ["App.IOrder", "App.IUser"]);
        assert!(covers(&services, "App.IUserService.Get_id"));
        assert!(!covers(&services, "App.IStock.Get"));
        assert!(normalize(&strings(&["App.IUser", ""])).is_empty());
        assert!(covers(&[], "anything"));
    }
}
