//! Choosing a backend from a URL: [`connect`].
//!
//! | URL | backend |
//! |---|---|
//! | `file:///var/lib/app/routes.json?ttl=10s&poll=1s` | shared file (absolute path) |
//! | `file://./routes.json` | shared file (relative to the working directory) |
//! | `memory://?prefix=services/serviceRoutes/&ttl=10s` | in-process registry (tests) |
//! | `etcd://127.0.0.1:2379,127.0.0.1:22379?prefix=app/&ttl=10s` | etcd (feature `etcd`) |
//! | `etcd://user:password@127.0.0.1:2379` | etcd with authentication |
//! | `consul://127.0.0.1:8500` | Consul KV (feature `consul`) |

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::backends::memory::{MemoryConfig, MemoryRouteManager};
use crate::error::{Error, Result};
use crate::manager::{RouteManager, MIN_TTL};
use crate::route::KeyLayout;

/// The URL schemes [`connect`] knows.
pub const KNOWN_SCHEMES: &[&str] = &["file", "memory", "etcd", "consul"];

/// The default backend URL when none is given.
pub const DEFAULT_BACKEND_URL: &str = "file://./routes.json";

/// Opens the backend a URL names. See the module docs for the forms.
pub async fn connect(url: &str) -> Result<Arc<dyn RouteManager>> {
    let parsed = BackendUrl::parse(url)?;
    match parsed.scheme.as_str() {
        "memory" => {
            let mut options = parsed.options(&["prefix", "ttl"])?;
            let mut config = MemoryConfig::default();
            if let Some(prefix) = options.remove("prefix") {
                config.layout = KeyLayout::new(&prefix)?;
            }
            if let Some(ttl) = options.remove("ttl") {
                config.ttl = parse_ttl(&ttl)?;
            }
            Ok(Arc::new(MemoryRouteManager::new(config)))
        }
        "file" => connect_file(&parsed),
        "etcd" => connect_etcd(&parsed).await,
        "consul" => connect_consul(&parsed),
        other => Err(Error::invalid_input(format!(
            "unknown backend scheme {other:?} in {url:?}; known schemes: {}",
            KNOWN_SCHEMES.join(", ")
        ))),
    }
}

#[cfg(feature = "file")]
fn connect_file(parsed: &BackendUrl) -> Result<Arc<dyn RouteManager>> {
    use crate::backends::file::{FileConfig, FileRouteManager};
    if parsed.location.is_empty() {
        return Err(Error::invalid_input(
            "file URL has no path (use file:///abs/path.json or file://./relative.json)",
        ));
    }
    let mut options = parsed.options(&["ttl", "poll"])?;
    let mut config = FileConfig::new(&parsed.location);
    if let Some(ttl) = options.remove("ttl") {
        config.ttl = parse_ttl(&ttl)?;
    }
    if let Some(poll) = options.remove("poll") {
        config.poll_interval = parse_duration(&poll)?.max(std::time::Duration::from_millis(10));
    }
    Ok(Arc::new(FileRouteManager::new(config)?))
}

#[cfg(not(feature = "file"))]
fn connect_file(parsed: &BackendUrl) -> Result<Arc<dyn RouteManager>> {
    not_compiled_in(parsed)
}

#[cfg(feature = "etcd")]
async fn connect_etcd(parsed: &BackendUrl) -> Result<Arc<dyn RouteManager>> {
    use crate::backends::etcd::{EtcdConfig, EtcdRouteManager, EtcdTls};
    let (credentials, hosts) = match parsed.location.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            let decode = |s: &str| {
                url::form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            (Some((decode(user), decode(password))), hosts)
        }
        None => (None, parsed.location.as_str()),
    };
    let hosts: Vec<&str> = hosts.split(',').filter(|h| !h.is_empty()).collect();
    if hosts.is_empty() {
        return Err(Error::invalid_input(
            "etcd URL names no endpoint (etcd://host:port[,host:port])",
        ));
    }
    let mut options = parsed.options(&[
        "prefix", "ttl", "user", "password", "timeout", "ca", "cert", "key",
    ])?;
    let mut config = EtcdConfig::new(hosts);
    if let Some(prefix) = options.remove("prefix") {
        config.layout = KeyLayout::new(&prefix)?;
    }
    if let Some(ttl) = options.remove("ttl") {
        config.ttl = parse_ttl(&ttl)?;
    }
    if let Some(timeout) = options.remove("timeout") {
        config.timeout = parse_duration(&timeout)?;
    }
    config.credentials = match (options.remove("user"), options.remove("password")) {
        (Some(user), password) => Some((user, password.unwrap_or_default())),
        (None, _) => credentials,
    };
    let identity = match (options.remove("cert"), options.remove("key")) {
        (Some(cert), Some(key)) => Some((cert.into(), key.into())),
        (None, None) => None,
        _ => return Err(Error::invalid_input("etcd URL: cert and key go together")),
    };
    match options.remove("ca") {
        Some(ca) => {
            config = config.with_tls(EtcdTls {
                ca: ca.into(),
                identity,
            })
        }
        None if identity.is_some() => {
            return Err(Error::invalid_input("etcd URL: cert and key need ca"))
        }
        None => {}
    }
    Ok(Arc::new(EtcdRouteManager::connect(config).await?))
}

#[cfg(feature = "consul")]
fn connect_consul(parsed: &BackendUrl) -> Result<Arc<dyn RouteManager>> {
    use crate::backends::consul::{ConsulConfig, ConsulRouteManager};
    let agents: Vec<&str> = parsed
        .location
        .split(',')
        .filter(|a| !a.is_empty())
        .collect();
    if agents.is_empty() {
        return Err(Error::invalid_input(
            "consul URL names no agent (consul://host:port[,host:port])",
        ));
    }
    let mut options = parsed.options(&["prefix", "ttl", "token", "wait", "timeout"])?;
    let mut config = ConsulConfig::new(agents);
    if let Some(prefix) = options.remove("prefix") {
        config.layout = KeyLayout::new(&prefix)?;
    }
    if let Some(ttl) = options.remove("ttl") {
        config.ttl = parse_ttl(&ttl)?;
    }
    if let Some(wait) = options.remove("wait") {
        config.wait = parse_duration(&wait)?;
    }
    if let Some(timeout) = options.remove("timeout") {
        config.timeout = parse_duration(&timeout)?;
    }
    config.token = options
        .remove("token")
        .or_else(|| std::env::var("CONSUL_HTTP_TOKEN").ok())
        .filter(|t| !t.is_empty());
    Ok(Arc::new(ConsulRouteManager::new(config)?))
}

#[cfg(not(feature = "consul"))]
fn connect_consul(parsed: &BackendUrl) -> Result<Arc<dyn RouteManager>> {
    not_compiled_in(parsed)
}

#[cfg(not(feature = "etcd"))]
async fn connect_etcd(parsed: &BackendUrl) -> Result<Arc<dyn RouteManager>> {
    not_compiled_in(parsed)
}

#[cfg(not(all(feature = "file", feature = "etcd", feature = "consul")))]
fn not_compiled_in(parsed: &BackendUrl) -> Result<Arc<dyn RouteManager>> {
    let scheme = &parsed.scheme;
    Err(Error::new(
        crate::error::ErrorKind::Unsupported,
        format!("the {scheme} backend is not compiled in (enable the cargo feature \"{scheme}\")"),
    ))
}

/// A backend URL split into scheme, location and query options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUrl {
    /// `file`, `memory`, `etcd`, `consul`, ...
    pub scheme: String,
    /// Everything between `://` and `?`: a path, or `host:port[,host:port]`.
    pub location: String,
    /// The query options, percent-decoded.
    pub query: Vec<(String, String)>,
}

impl BackendUrl {
    /// Splits `scheme://location?key=value&...`.
    pub fn parse(url: &str) -> Result<Self> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            Error::invalid_input(format!(
                "backend URL {url:?} has no scheme; expected one of {}",
                KNOWN_SCHEMES
                    .iter()
                    .map(|s| format!("{s}://"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        Ok(BackendUrl {
            scheme: scheme.to_ascii_lowercase(),
            location: location.to_owned(),
            query: url::form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        })
    }

    /// The options as a map, refusing any not in `allowed` and any given twice.
    pub fn options(&self, allowed: &[&str]) -> Result<BTreeMap<String, String>> {
        let mut map = BTreeMap::new();
        for (key, value) in &self.query {
            if !allowed.contains(&key.as_str()) {
                return Err(Error::invalid_input(format!(
                    "unknown option {key:?} for the {} backend; known options: {}",
                    self.scheme,
                    allowed.join(", ")
                )));
            }
            if map.insert(key.clone(), value.clone()).is_some() {
                return Err(Error::invalid_input(format!(
                    "option {key:?} is given twice"
                )));
            }
        }
        Ok(map)
    }
}

/// Parses `10`, `2.5`, `10s`, `500ms` or `2m` into a duration (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration> {
    let bad = || Error::invalid_input(format!("{text:?} is not a duration (e.g. 10, 2.5s, 500ms)"));
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let number: f64 = number.trim().parse().map_err(|_| bad())?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| bad())
}

fn parse_ttl(text: &str) -> Result<Duration> {
    let ttl = parse_duration(text)?;
    if ttl < MIN_TTL {
        return Err(Error::invalid_input(format!(
            "ttl {ttl:?} is below the minimum of {MIN_TTL:?}"
        )));
    }
    Ok(ttl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn durations_take_units_and_bare_seconds() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2.5s").unwrap(), Duration::from_millis(2500));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        for bad in ["", "abc", "5h", "-1", "1e400"] {
            assert_eq!(
                parse_duration(bad).unwrap_err().kind(),
                ErrorKind::InvalidInput,
                "{bad}"
            );
        }
        assert_eq!(
            parse_ttl("0.5").unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn urls_split_into_scheme_location_and_options() {
        let url = BackendUrl::parse("FILE://./dir/routes.json?ttl=5s&poll=200ms").unwrap();
        assert_eq!(url.scheme, "file");
        assert_eq!(url.location, "./dir/routes.json");
        let options = url.options(&["ttl", "poll"]).unwrap();
        assert_eq!(options["ttl"], "5s");
        assert_eq!(options["poll"], "200ms");
        assert!(url.options(&["ttl"]).is_err(), "poll is not allowed here");
        let twice = BackendUrl::parse("memory://?ttl=1&ttl=2").unwrap();
        assert!(twice.options(&["ttl"]).is_err());
        let encoded = BackendUrl::parse("memory://?prefix=a%2Fb%2F").unwrap();
        assert_eq!(
            encoded.query,
            vec![("prefix".to_owned(), "a/b/".to_owned())]
        );
    }

    #[tokio::test]
    async fn connect_explains_what_it_cannot_open() {
        let unknown = connect("zk://127.0.0.1:2181").await.unwrap_err();
        assert_eq!(unknown.kind(), ErrorKind::InvalidInput);
        assert!(unknown.to_string().contains("file, memory, etcd, consul"));
        let consul = connect("consul://?ttl=10s").await.unwrap_err();
        assert_eq!(consul.kind(), ErrorKind::InvalidInput);
        let no_hosts = connect("etcd://?ttl=5").await.unwrap_err();
        assert!(matches!(
            no_hosts.kind(),
            ErrorKind::InvalidInput | ErrorKind::Unsupported
        ));
        let empty = connect("file://").await.unwrap_err();
        assert_eq!(empty.kind(), ErrorKind::InvalidInput);
        let memory = connect("memory://?prefix=apps/x&ttl=3s").await.unwrap();
        assert_eq!(memory.backend(), "memory");
    }
}
