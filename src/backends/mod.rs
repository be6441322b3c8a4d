//! Registry backends, one module each.

#[cfg(feature = "consul")]
pub mod consul;
#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(feature = "file")]
pub mod file;
pub mod memory;
#[cfg(any(feature = "etcd", feature = "consul"))]
pub(crate) mod shared;

/// `address` as a URL: `host:port` gets `http://`; a full URL is kept.
#[cfg(any(feature = "etcd", feature = "consul"))]
pub(crate) fn http_url(address: String) -> String {
    if address.contains("://") {
        address
    } else {
        format!("http://{address}")
    }
}
