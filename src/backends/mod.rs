//! Registry backends, one module each.

#[cfg(feature = "file")]
pub mod file;
pub mod memory;
