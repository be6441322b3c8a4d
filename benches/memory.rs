//! Memory held for 100k routes of 3 addresses each (DESIGN.md section 6: under 150 MB RSS).
//!
//! Fills an in-process registry with the routes as Surging-form values, starts a resolver on it
//! (watch, hub and route table, as a client of any backend holds them), and prints the
//! process's resident set at each step, read from `/proc/self/status`. The in-process registry
//! also keeps the raw values, which with etcd or Consul live in the server; that part is
//! printed separately.
//!
//! Run with `cargo bench --bench memory`.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::no_health;
use wayfinder::backends::memory::MemoryRouteManager;
use wayfinder::route::{encode_route, DEFAULT_PREFIX};
use wayfinder::{Address, AddressResolver, ServiceDescriptor, ServiceRoute};

const ROUTES: usize = 100_000;
const ADDRESSES: usize = 3;

/// The system allocator, counting the bytes currently allocated.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator with the same layout.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes allocated and not yet freed, in MiB (without the allocator's own overhead).
fn live_mib() -> f64 {
    LIVE.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0)
}

/// The resident set size in MiB, or `None` where `/proc` is not available.
fn rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn route(i: usize) -> ServiceRoute {
    let addresses = (0..ADDRESSES)
        .map(|k| Address::new(format!("10.{}.{}.{}", k, i / 250 % 250, i % 250 + 1), 9000))
        .collect();
    let descriptor = ServiceDescriptor::new(
        format!("Bench.IOrderService{i}.Get_id"),
        format!("api/order{i}/get"),
    )
    .with_metadata("HttpMethod", "GET");
    ServiceRoute::new(descriptor, addresses)
}

#[tokio::main]
async fn main() {
    let Some(start) = rss_mib() else {
        println!("no /proc/self/status here: nothing to measure");
        return;
    };
    let registry = MemoryRouteManager::default();
    let mut raw_bytes = 0;
    for i in 0..ROUTES {
        let route = route(i);
        let value = encode_route(&route).unwrap();
        raw_bytes += value.len();
        registry.insert_raw(&format!("{DEFAULT_PREFIX}{}", route.id()), value);
    }
    let (filled, filled_live) = (rss_mib().unwrap(), live_mib());
    let resolver = AddressResolver::with_config(Arc::new(registry.clone()), no_health())
        .await
        .unwrap();
    assert_eq!(resolver.stats().routes, ROUTES);
    let (resolving, resolving_live) = (rss_mib().unwrap(), live_mib());
    let raw_mib = raw_bytes as f64 / (1024.0 * 1024.0);

    println!("memory for {ROUTES} routes x {ADDRESSES} addresses (MiB):    RSS  allocated");
    println!("  at start                              {start:8.1}");
    println!("  registry filled                       {filled:8.1}   {filled_live:8.1}");
    println!("  resolver running                      {resolving:8.1}   {resolving_live:8.1}");
    println!("  raw values the registry keeps         {raw_mib:8.1}  (held by the server with etcd/Consul)");
    println!(
        "  total without the raw values          {:8.1}  (target: under 150)",
        resolving - raw_mib
    );
}
