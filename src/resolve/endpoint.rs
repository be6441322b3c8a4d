//! [`Endpoint`]: one distinct address a client may call, with its local health and load.
//!
//! Routes that share an address share one `Endpoint`, so it is probed once and its in-flight
//! count covers every route's calls.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use super::latency::RttEstimate;
use super::outlier::Outlier;
use super::reports::Reports;
use super::slow_start::Warmth;
use crate::route::Address;

/// Identity of an endpoint: its host (ignoring ASCII case and IPv6 brackets) and port. Cheap to
/// copy: it shares the address it was made from.
#[derive(Clone)]
pub struct EndpointKey {
    address: Arc<Address>,
    /// A digest of the identity, computed once: tables hash this instead of reaching into the
    /// address (a cache miss each at 100k endpoints, many times over as tables grow).
    digest: u64,
}

/// The digest of an address's identity (see [`EndpointKey`]).
fn digest(address: &Address) -> u64 {
    let mut state = foldhash::fast::FixedState::with_seed(0x0e4d_901b_7c3a_5f21).build_hasher();
    state.write_u16(address.port);
    let host = bare_host(address).as_bytes();
    if host.iter().any(u8::is_ascii_uppercase) {
        state.write(&host.to_ascii_lowercase());
    } else {
        state.write(host);
    }
    state.finish()
}

/// An address's host without IPv6 brackets (`[::1]` and `::1` are one endpoint).
fn bare_host(address: &Address) -> &str {
    address.ip.trim_start_matches('[').trim_end_matches(']')
}

impl EndpointKey {
    /// The key of an address (a copy of it).
    pub fn of(address: &Address) -> Self {
        Self::shared(&Arc::new(address.clone()))
    }

    /// The key of a shared address (sharing it).
    pub fn shared(address: &Arc<Address>) -> Self {
        EndpointKey {
            address: address.clone(),
            digest: digest(address),
        }
    }

    /// Whether `address` is this endpoint.
    pub fn matches(&self, address: &Address) -> bool {
        self.address.port == address.port
            && bare_host(&self.address).eq_ignore_ascii_case(bare_host(address))
    }

    /// Hashes `address` as its key hashes, so it can be looked up without making a key.
    pub(crate) fn hash_address<H: Hasher>(address: &Address, state: &mut H) {
        state.write_u64(digest(address));
    }
}

impl PartialEq for EndpointKey {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest && self.matches(&other.address)
    }
}

impl Eq for EndpointKey {}

impl PartialOrd for EndpointKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for EndpointKey {
    /// By lower-cased host, then port.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let host = |key: &Self| {
            bare_host(&key.address)
                .bytes()
                .map(|b| b.to_ascii_lowercase())
                .collect::<Vec<u8>>()
        };
        host(self)
            .cmp(&host(other))
            .then(self.address.port.cmp(&other.address.port))
    }
}

impl std::fmt::Debug for EndpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointKey")
            .field("host", &bare_host(&self.address))
            .field("port", &self.address.port)
            .finish()
    }
}

impl Hash for EndpointKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.digest);
    }
}

/// Endpoints in this process that are unhealthy or ejected (counted once for each). While there
/// are none, selection need not look at any route's endpoints.
static DISRUPTED: AtomicUsize = AtomicUsize::new(0);

/// Whether any endpoint in this process is unhealthy or ejected now.
pub(crate) fn any_disrupted() -> bool {
    DISRUPTED.load(Ordering::Relaxed) != 0
}

/// One endpoint became unhealthy or ejected (`true`), or stopped being so.
pub(crate) fn note_disrupted(disrupted: bool) {
    if disrupted {
        DISRUPTED.fetch_add(1, Ordering::Relaxed);
    } else {
        DISRUPTED.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if !self.is_healthy() {
            note_disrupted(false);
        }
        if self.is_ejected() {
            note_disrupted(false);
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
    healthy: AtomicBool,
    in_flight: AtomicUsize,
    pub(crate) streak: Mutex<Streak>,
    pub(crate) outlier: Outlier,
    pub(crate) warmth: Warmth,
    /// Its round-trip time estimate (kept by the peak-EWMA selector).
    pub(crate) rtt: RttEstimate,
    /// Where outcomes reported on a resolution of this endpoint go (its resolver's records),
    /// set at its first resolution.
    pub(crate) reports: OnceLock<Weak<Reports>>,
}

impl Endpoint {
    /// A new endpoint, healthy until checks say otherwise.
    pub fn new(address: impl Into<Arc<Address>>) -> Self {
        Self::with_key(EndpointKey::shared(&address.into()))
    }

    /// A new endpoint of a key.
    pub(crate) fn with_key(key: EndpointKey) -> Self {
        Endpoint {
            key,
            healthy: AtomicBool::new(true),
            in_flight: AtomicUsize::new(0),
            streak: Mutex::new(Streak::default()),
            outlier: Outlier::default(),
            warmth: Warmth::default(),
            rtt: RttEstimate::default(),
            reports: OnceLock::new(),
        }
    }

    /// The endpoint's identity.
    pub fn key(&self) -> &EndpointKey {
        &self.key
    }

    /// The address as first published (its host and port are what is probed; a route's
    /// current details are in the route).
    pub fn address(&self) -> &Address {
        &self.key.address
    }

    /// Whether local checks consider it healthy.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether outlier ejection has it out of selection now.
    pub fn is_ejected(&self) -> bool {
        self.outlier.is_ejected()
    }

    /// Sets health; returns whether it changed.
    pub(crate) fn set_healthy(&self, healthy: bool) -> bool {
        let changed = self.healthy.swap(healthy, Ordering::Relaxed) != healthy;
        if changed {
            note_disrupted(!healthy);
        }
        changed
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
