//! Opening each backend from a parsed URL and its options.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;

use super::url::{check_ttl, parse_duration, redact_url, BackendUrl};
use super::{Config, KNOWN_SCHEMES, OPTION_NAMES};
use crate::backends::memory::{MemoryConfig, MemoryRouteManager};
use crate::error::{Error, Result};
use crate::manager::RouteManager;
use crate::route::{KeyLayout, LayoutStyle};

/// The backend options, typed: from the URL's query, then overlaid with a [`Config`].
#[derive(Default)]
pub(super) struct BackendOptions {
    prefix: Option<String>,
    layout: Option<LayoutStyle>,
    ttl: Option<Duration>,
    timeout: Option<Duration>,
    poll: Option<Duration>,
    wait: Option<Duration>,
    user: Option<String>,
    password: Option<SecretString>,
    token: Option<SecretString>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

impl BackendOptions {
    /// The URL's query options, each checked; unknown and repeated options are refused.
    pub(super) fn from_query(url: &BackendUrl) -> Result<Self> {
        let mut options = BackendOptions::default();
        for (key, value) in &url.query {
            let duration = || parse_duration(value).map(Some);
            let repeated = match key.as_str() {
                "prefix" => options.prefix.replace(value.clone()).is_some(),
                "layout" => options.layout.replace(LayoutStyle::parse(value)?).is_some(),
                "ttl" => std::mem::replace(&mut options.ttl, duration()?).is_some(),
                "timeout" => std::mem::replace(&mut options.timeout, duration()?).is_some(),
                "poll" => std::mem::replace(&mut options.poll, duration()?).is_some(),
                "wait" => std::mem::replace(&mut options.wait, duration()?).is_some(),
                "user" => options.user.replace(value.clone()).is_some(),
                "password" => options.password.replace(value.as_str().into()).is_some(),
                "token" => options.token.replace(value.as_str().into()).is_some(),
                "ca" => options.ca.replace(value.into()).is_some(),
                "cert" => options.cert.replace(value.into()).is_some(),
                "key" => options.key.replace(value.into()).is_some(),
                _ => {
                    // A key holding `@` is likely part of an unencoded password: not echoed.
                    let shown = if key.contains('@') {
                        "(not shown)"
                    } else {
                        key
                    };
                    return Err(Error::invalid_input(format!(
                        "unknown option {shown:?} for the {} backend; known options: {} \
                         (percent-encode `?`, `&` and `#` in passwords)",
                        url.scheme,
                        OPTION_NAMES.join(", ")
                    )));
                }
            };
            if repeated {
                return Err(Error::invalid_input(format!(
                    "option {key:?} is given twice"
                )));
            }
        }
        Ok(options)
    }

    /// These options with every field `config` sets put in their place.
    pub(super) fn overlaid_with(self, config: &Config) -> Result<Self> {
        let layout = config
            .layout
            .as_deref()
            .map(LayoutStyle::parse)
            .transpose()?;
        Ok(BackendOptions {
            prefix: config.prefix.clone().or(self.prefix),
            layout: layout.or(self.layout),
            ttl: config.ttl.or(self.ttl),
            timeout: config.timeout.or(self.timeout),
            poll: config.poll.or(self.poll),
            wait: config.wait.or(self.wait),
            user: config.user.clone().or(self.user),
            password: config.password.clone().or(self.password),
            token: config.token.clone().or(self.token),
            ca: config.ca.clone().or(self.ca),
            cert: config.cert.clone().or(self.cert),
            key: config.key.clone().or(self.key),
        })
    }

    /// Refuses options that `scheme` does not take, so a misplaced setting is not ignored.
    fn accept_only(&self, scheme: &str, allowed: &[&str]) -> Result<()> {
        let set = [
            ("prefix", self.prefix.is_some()),
            ("layout", self.layout.is_some()),
            ("ttl", self.ttl.is_some()),
            ("timeout", self.timeout.is_some()),
            ("poll", self.poll.is_some()),
            ("wait", self.wait.is_some()),
            ("user", self.user.is_some()),
            ("password", self.password.is_some()),
            ("token", self.token.is_some()),
            ("ca", self.ca.is_some()),
            ("cert", self.cert.is_some()),
            ("key", self.key.is_some()),
        ];
        match set.iter().find(|(name, on)| *on && !allowed.contains(name)) {
            Some((name, _)) => Err(Error::invalid_input(format!(
                "option {name:?} does not apply to the {scheme} backend; it takes: {}",
                allowed.join(", ")
            ))),
            None => Ok(()),
        }
    }

    /// The key layout: the prefix given or the default, in the style given or the default.
    fn layout(&self) -> Result<KeyLayout> {
        let layout = match self.prefix.as_deref() {
            Some(prefix) => KeyLayout::new(prefix)?,
            None => KeyLayout::default(),
        };
        Ok(layout.with_style(self.layout.unwrap_or_default()))
    }

    fn ttl(&self) -> Result<Option<Duration>> {
        self.ttl.map(check_ttl).transpose()
    }
}

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
    options: BackendOptions,
) -> Result<Arc<dyn RouteManager>> {
    match url.scheme.as_str() {
        "memory" => open_memory(options),
        "file" => open_file(url, options),
        "etcd" => open_etcd(url, options).await,
        "consul" => open_consul(url, options),
        _ => Err(unknown_scheme(url)),
    }
}

fn open_memory(options: BackendOptions) -> Result<Arc<dyn RouteManager>> {
    options.accept_only("memory", &["prefix", "ttl"])?;
    let mut config = MemoryConfig {
        layout: options.layout()?,
        ..MemoryConfig::default()
    };
    if let Some(ttl) = options.ttl()? {
        config.ttl = ttl;
    }
    Ok(Arc::new(MemoryRouteManager::new(config)))
}

#[cfg(feature = "file")]
fn open_file(url: &BackendUrl, options: BackendOptions) -> Result<Arc<dyn RouteManager>> {
    use crate::backends::file::{FileConfig, FileRouteManager};
    if url.location.is_empty() {
        return Err(Error::invalid_input(
            "file URL has no path (use file:///abs/path.json or file://./relative.json)",
        ));
    }
    options.accept_only("file", &["layout", "ttl", "poll"])?;
    let mut config = FileConfig::new(&url.location);
    config.layout = options.layout()?.style();
    if let Some(ttl) = options.ttl()? {
        config.ttl = ttl;
    }
    if let Some(poll) = options.poll {
        config.poll_interval = poll.max(Duration::from_millis(10));
    }
    Ok(Arc::new(FileRouteManager::new(config)?))
}

#[cfg(feature = "etcd")]
async fn open_etcd(url: &BackendUrl, options: BackendOptions) -> Result<Arc<dyn RouteManager>> {
    use crate::backends::etcd::{EtcdConfig, EtcdRouteManager, EtcdTls};
    use secrecy::ExposeSecret;
    let (userinfo, hosts) = url.userinfo();
    let hosts: Vec<&str> = hosts.split(',').filter(|h| !h.is_empty()).collect();
    if hosts.is_empty() {
        return Err(Error::invalid_input(
            "etcd URL names no endpoint (etcd://host:port[,host:port])",
        ));
    }
    options.accept_only(
        "etcd",
        &[
            "prefix", "layout", "ttl", "timeout", "user", "password", "ca", "cert", "key",
        ],
    )?;
    let mut config = EtcdConfig::new(hosts);
    config.layout = options.layout()?;
    if let Some(ttl) = options.ttl()? {
        config.ttl = ttl;
    }
    if let Some(timeout) = options.timeout {
        config.timeout = timeout;
    }
    let (url_user, url_password) = userinfo.unzip();
    let user = options.user.or(url_user);
    let password = options
        .password
        .map(|p| p.expose_secret().to_owned())
        .or(url_password);
    config.credentials = match (user, password) {
        (Some(user), password) => Some((user, password.unwrap_or_default())),
        (None, Some(_)) => return Err(Error::invalid_input("etcd: a password needs a user")),
        (None, None) => None,
    };
    let identity = match (options.cert, options.key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err(Error::invalid_input("etcd: cert and key go together")),
    };
    match options.ca {
        Some(ca) => config = config.with_tls(EtcdTls { ca, identity }),
        None if identity.is_some() => {
            return Err(Error::invalid_input("etcd: cert and key need ca"))
        }
        None => {}
    }
    Ok(Arc::new(EtcdRouteManager::connect(config).await?))
}

#[cfg(feature = "consul")]
fn open_consul(url: &BackendUrl, options: BackendOptions) -> Result<Arc<dyn RouteManager>> {
    use crate::backends::consul::{ConsulConfig, ConsulRouteManager};
    use secrecy::ExposeSecret;
    if url.location.contains('@') {
        return Err(Error::invalid_input(
            "consul URLs take no user:password@; give an ACL token with the token option",
        ));
    }
    let agents: Vec<&str> = url.location.split(',').filter(|a| !a.is_empty()).collect();
    if agents.is_empty() {
        return Err(Error::invalid_input(
            "consul URL names no agent (consul://host:port[,host:port])",
        ));
    }
    options.accept_only(
        "consul",
        &["prefix", "layout", "ttl", "timeout", "wait", "token"],
    )?;
    let mut config = ConsulConfig::new(agents);
    config.layout = options.layout()?;
    if let Some(ttl) = options.ttl()? {
        config.ttl = ttl;
    }
    if let Some(wait) = options.wait {
        config.wait = wait;
    }
    if let Some(timeout) = options.timeout {
        config.timeout = timeout;
    }
    config.token = options
        .token
        .map(|t| t.expose_secret().to_owned())
        .or_else(|| std::env::var("CONSUL_HTTP_TOKEN").ok())
        .filter(|t| !t.is_empty());
    Ok(Arc::new(ConsulRouteManager::new(config)?))
}

#[cfg(not(feature = "file"))]
fn open_file(url: &BackendUrl, _: BackendOptions) -> Result<Arc<dyn RouteManager>> {
    not_compiled_in(url)
}

#[cfg(not(feature = "etcd"))]
async fn open_etcd(url: &BackendUrl, _: BackendOptions) -> Result<Arc<dyn RouteManager>> {
    not_compiled_in(url)
}

#[cfg(not(feature = "consul"))]
fn open_consul(url: &BackendUrl, _: BackendOptions) -> Result<Arc<dyn RouteManager>> {
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

    #[test]
    fn config_fields_win_over_url_options() {
        let url = BackendUrl::parse("memory://?ttl=5s&prefix=from-url/").unwrap();
        let mut config = Config::from_url("memory://");
        config.ttl = Some(Duration::from_secs(7));
        let options = BackendOptions::from_query(&url)
            .unwrap()
            .overlaid_with(&config)
            .unwrap();
        assert_eq!(options.ttl, Some(Duration::from_secs(7)));
        assert_eq!(options.prefix.as_deref(), Some("from-url/"));
        assert!(options.accept_only("memory", &["prefix", "ttl"]).is_ok());
        assert!(options.accept_only("file", &["ttl", "poll"]).is_err());
    }
}
