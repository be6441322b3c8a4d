//! [`Endpoint`]: one distinct address a client may call, with its local health and load.
//!
//! Routes that share an address share one `Endpoint`, so it is probed once and its in-flight
//! count covers every route's calls.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::route::Address;

/// Identity of an endpoint: lower-cased host and port. Cheap to copy (the host is shared).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    host: Arc<str>,
    port: u16,
}

impl EndpointKey {
    /// The key of an address (`[::1]` and `::1` are one endpoint).
    pub fn of(address: &Address) -> Self {
        let host = address.ip.trim_start_matches('[').trim_end_matches(']');
        let host: Arc<str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            host.to_ascii_lowercase().into()
        } else {
            host.into()
        };
        EndpointKey {
            host,
            port: address.port,
        }
    }
}

/// Consecutive check outcomes, used against the thresholds.
#[derive(Debug, Default)]
pub(crate) struct Streak {
    pub failures: u32,
    pub successes: u32,
}

/// A distinct address with its local health and in-flight count.
#[derive(Debug)]
pub struct Endpoint {
    key: EndpointKey,
    address: Arc<Address>,
    healthy: AtomicBool,
    in_flight: AtomicUsize,
    pub(crate) streak: Mutex<Streak>,
}

impl Endpoint {
    /// A new endpoint, healthy until checks say otherwise.
    pub fn new(address: impl Into<Arc<Address>>) -> Self {
        let address = address.into();
        Self::with_key(EndpointKey::of(&address), address)
    }

    /// A new endpoint whose key is already known.
    pub(crate) fn with_key(key: EndpointKey, address: Arc<Address>) -> Self {
        Endpoint {
            key,
            address,
            healthy: AtomicBool::new(true),
            in_flight: AtomicUsize::new(0),
            streak: Mutex::new(Streak::default()),
        }
    }

    /// The endpoint's identity.
    pub fn key(&self) -> &EndpointKey {
        &self.key
    }

    /// The address as first published (its host and port are what is probed; a route's
    /// current details are in the route).
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Whether local checks consider it healthy.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Sets health; returns whether it changed.
    pub(crate) fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::Relaxed) != healthy
    }

    /// Calls in flight: live resolutions through routes whose selector balances by load.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn begin_call(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn end_call(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
