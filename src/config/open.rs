//! Opening each backend from a parsed URL and its options: the scheme picks the backend, and
//! the backend reads its own options (see each backend's `OPTIONS` and `from_options`).

use std::sync::Arc;

use super::options::BackendOptions;
use super::url::{redact_url, BackendUrl};
use super::KNOWN_SCHEMES;
use crate::backends::memory::{MemoryConfig, MemoryRouteManager};
use crate::error::{Error, Result};
use crate::manager::RouteManager;

/// Refuses a scheme [`open`] does not know, listing the known ones.
pub(super) fn check_scheme(url: &BackendUrl) -> Result<()> {
    match KNOWN_SCHEMES.contains(&url.scheme.as_str()) {
        true => Ok(()),
        false => Err(unknown_scheme(url)),
    }
}

fn unknown_scheme(url: &BackendUrl) -> Error {
    Error::invalid_input(format!(
        "unknown backend scheme {:?} in {:?}; known schemes: {}",
        url.scheme,
        redact_url(&format!("{}://{}", url.scheme, url.location)),
        KNOWN_SCHEMES.join(", ")
    ))
}

/// Opens the backend `url` names with `options`.
pub(super) async fn open(
    url: &BackendUrl,
    options: &BackendOptions,
) -> Result<Arc<dyn RouteManager>> {
    match url.scheme.as_str() {
        "memory" => open_memory(options),
        "file" => open_file(url, options),
        "etcd" => open_etcd(url, options).await,
        "consul" => open_consul(url, options),
        _ => Err(unknown_scheme(url)),
    }
}

fn open_memory(options: &BackendOptions) -> Result<Arc<dyn RouteManager>> {
    let config = MemoryConfig::from_options(options)?;
    Ok(Arc::new(MemoryRouteManager::new(config)))
}

#[cfg(feature = "file")]
fn open_file(url: &BackendUrl, options: &BackendOptions) -> Result<Arc<dyn RouteManager>> {
    use crate::backends::file::{FileConfig, FileRouteManager};
    let config = FileConfig::from_options(&url.location, options)?;
    Ok(Arc::new(FileRouteManager::new(config)?))
}

#[cfg(feature = "etcd")]
async fn open_etcd(url: &BackendUrl, options: &BackendOptions) -> Result<Arc<dyn RouteManager>> {
    use crate::backends::etcd::{EtcdConfig, EtcdRouteManager};
    let config = EtcdConfig::from_options(url, options)?;
    Ok(Arc::new(EtcdRouteManager::connect(config).await?))
}

#[cfg(feature = "consul")]
fn open_consul(url: &BackendUrl, options: &BackendOptions) -> Result<Arc<dyn RouteManager>> {
    use crate::backends::consul::{ConsulConfig, ConsulRouteManager};
    let config = ConsulConfig::from_options(url, options)?;
    Ok(Arc::new(ConsulRouteManager::new(config)?))
}

#[cfg(not(feature = "file"))]
fn open_file(url: &BackendUrl, _: &BackendOptions) -> Result<Arc<dyn RouteManager>> {
    not_compiled_in(url)
}

#[cfg(not(feature = "etcd"))]
async fn open_etcd(url: &BackendUrl, _: &BackendOptions) -> Result<Arc<dyn RouteManager>> {
    not_compiled_in(url)
}

#[cfg(not(feature = "consul"))]
fn open_consul(url: &BackendUrl, _: &BackendOptions) -> Result<Arc<dyn RouteManager>> {
    not_compiled_in(url)
}

#[cfg(not(all(feature = "file", feature = "etcd", feature = "consul")))]
fn not_compiled_in(url: &BackendUrl) -> Result<Arc<dyn RouteManager>> {
    let scheme = &url.scheme;
    Err(Error::new(
        crate::error::ErrorKind::Unsupported,
        format!("the {scheme} backend is not compiled in (enable the cargo feature \"{scheme}\")"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, OPTION_NAMES};
    use std::time::Duration;

    #[test]
    fn config_fields_win_over_url_options() {
        let url = BackendUrl::parse("memory://?ttl=5s&prefix=from-url/").unwrap();
        let mut config = Config::from_url("memory://");
        config.ttl = Some(Duration::from_secs(7));
        let options = BackendOptions::gather(&url, &config).unwrap();
        assert_eq!(options.ttl().unwrap(), Some(Duration::from_secs(7)));
        assert_eq!(options.layout().unwrap().prefix(), "from-url/");
        assert!(options.accept_only(MemoryConfig::OPTIONS).is_ok());
        assert!(options.accept_only(&["ttl", "poll"]).is_err());
    }

    /// Every option some backend takes is a `Config` field and a `WAYFINDER_*` variable.
    #[cfg(all(feature = "file", feature = "etcd", feature = "consul"))]
    #[test]
    fn the_option_names_are_the_backends_own() {
        use crate::backends::{consul::ConsulConfig, etcd::EtcdConfig, file::FileConfig};
        let mut taken: Vec<&str> = [
            MemoryConfig::OPTIONS,
            FileConfig::OPTIONS,
            EtcdConfig::OPTIONS,
            ConsulConfig::OPTIONS,
        ]
        .concat();
        taken.sort_unstable();
        taken.dedup();
        let mut names = OPTION_NAMES.to_vec();
        names.sort_unstable();
        assert_eq!(taken, names);
    }
}
