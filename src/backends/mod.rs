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
