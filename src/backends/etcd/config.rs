//! The etcd backend's options: endpoints, key layout, TTL, timeout, credentials and TLS, from a
//! URL and its options or built in code, and the client options they make.

use std::time::Duration;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

use super::members::Members;
use crate::backends::http_url;
use crate::config::{BackendOptions, BackendUrl};
use crate::error::{Error, Result};
use crate::manager::DEFAULT_TTL;
use crate::route::KeyLayout;

/// Options of the etcd backend (`etcd://[user:password@]host:port[,host:port]?prefix=..&ttl=..`).
#[derive(Clone)]
pub struct EtcdConfig {
    /// Client endpoints, `http://host:port` (or `https://` with TLS).
    pub endpoints: Vec<String>,
    /// Key layout (prefix).
    pub layout: KeyLayout,
    /// Default registration TTL (whole seconds; at least 2, etcd's floor for leases).
    pub ttl: Duration,
    /// User name and password, when etcd has authentication on.
    pub credentials: Option<(String, String)>,
    /// Time allowed for each request, including moving on to another member when one fails.
    pub timeout: Duration,
    /// TLS: PEM files of the CA to trust and, for client-certificate auth, the client's own.
    pub tls: Option<EtcdTls>,
}

/// TLS files for the etcd connection (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA certificate that signed the server's certificate.
    pub ca: std::path::PathBuf,
    /// The client certificate and its key, when etcd requires client certificates.
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl std::fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("layout", &self.layout)
            .field("ttl", &self.ttl)
            .field(
                "credentials",
                &self
                    .credentials
                    .as_ref()
                    .map(|(user, _)| (user, "<redacted>")),
            )
            .field("timeout", &self.timeout)
            .field("tls", &self.tls)
            .finish()
    }
}

impl EtcdConfig {
    /// The options `etcd://...?...` takes.
    pub const OPTIONS: &'static [&'static str] = &[
        "prefix", "layout", "ttl", "timeout", "user", "password", "ca", "cert", "key",
    ];

    /// The configuration the URL (its endpoints, and credentials before an `@`) and the options
    /// name.
    pub(crate) fn from_options(url: &BackendUrl, options: &BackendOptions) -> Result<Self> {
        let (userinfo, hosts) = url.userinfo();
        let hosts: Vec<&str> = hosts.split(',').filter(|h| !h.is_empty()).collect();
        if hosts.is_empty() {
            return Err(Error::invalid_input(
                "etcd URL names no endpoint (etcd://host:port[,host:port])",
            ));
        }
        options.accept_only(Self::OPTIONS)?;
        let mut config = EtcdConfig::new(hosts);
        config.layout = options.layout()?;
        if let Some(ttl) = options.ttl()? {
            config.ttl = ttl;
        }
        if let Some(timeout) = options.duration("timeout")? {
            config.timeout = timeout;
        }
        let (url_user, url_password) = userinfo.unzip();
        let user = options.text("user").or(url_user);
        let password = options.text("password").or(url_password);
        config.credentials = match (user, password) {
            (Some(user), password) => Some((user, password.unwrap_or_default())),
            (None, Some(_)) => return Err(Error::invalid_input("etcd: a password needs a user")),
            (None, None) => None,
        };
        let identity = match (options.path("cert"), options.path("key")) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err(Error::invalid_input("etcd: cert and key go together")),
        };
        match options.path("ca") {
            Some(ca) => config = config.with_tls(EtcdTls { ca, identity }),
            None if identity.is_some() => {
                return Err(Error::invalid_input("etcd: cert and key need ca"))
            }
            None => {}
        }
        Ok(config)
    }

    /// Defaults for these endpoints (`host:port` or full URLs).
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        EtcdConfig {
            endpoints: endpoints.into_iter().map(|e| http_url(e.into())).collect(),
            layout: KeyLayout::default(),
            ttl: DEFAULT_TTL,
            credentials: None,
            timeout: Duration::from_secs(5),
            tls: None,
        }
    }

    /// Turns TLS on: endpoints switch to `https://`.
    pub fn with_tls(mut self, tls: EtcdTls) -> Self {
        for endpoint in &mut self.endpoints {
            if let Some(rest) = endpoint.strip_prefix("http://") {
                *endpoint = format!("https://{rest}");
            }
        }
        self.tls = Some(tls);
        self
    }

    /// The cluster's members, with clients built from these options (`require_leader` for
    /// watches, so a member cut off from the cluster does not keep a silent stream).
    pub(super) fn members(&self, require_leader: bool) -> Result<Members> {
        let options = self.connect_options()?.with_require_leader(require_leader);
        Ok(Members::new(self.endpoints.clone(), options, self.timeout))
    }

    fn connect_options(&self) -> Result<ConnectOptions> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.timeout)
            .with_timeout(self.timeout)
            .with_keep_alive(Duration::from_secs(10), self.timeout);
        if let Some((user, password)) = &self.credentials {
            // Tokens expire (etcd's --auth-token-ttl); the client authenticates again when told so.
            options = options
                .with_user(user.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        if let Some(tls) = &self.tls {
            let read = |path: &std::path::Path| {
                std::fs::read(path).map_err(|e| {
                    Error::invalid_input(format!("etcd TLS file {}: {e}", path.display()))
                })
            };
            let mut config =
                TlsOptions::new().ca_certificate(Certificate::from_pem(read(&tls.ca)?));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            options = options.with_tls(config);
        }
        Ok(options)
    }
}
