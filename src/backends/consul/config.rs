//! The Consul backend's options: agents, key layout, TTL, ACL token and timeouts, from a URL and
//! its options or built in code.

use std::time::Duration;

use crate::backends::http_url;
use crate::config::{BackendOptions, BackendUrl};
use crate::error::{Error, Result};
use crate::manager::DEFAULT_TTL;
use crate::route::KeyLayout;

/// Options of the Consul backend (`consul://host:port[,host:port]?prefix=..&ttl=..&token=..`).
#[derive(Clone)]
pub struct ConsulConfig {
    /// Agent addresses, `http://host:port`; the next one is tried when one fails.
    pub agents: Vec<String>,
    /// Key layout (prefix).
    pub layout: KeyLayout,
    /// Default registration TTL (Consul sessions need at least 10 s).
    pub ttl: Duration,
    /// ACL token, sent only in the `X-Consul-Token` header.
    pub token: Option<String>,
    /// Longest wait of one blocking query.
    pub wait: Duration,
    /// Time allowed for ordinary requests.
    pub timeout: Duration,
}

impl std::fmt::Debug for ConsulConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulConfig")
            .field("agents", &self.agents)
            .field("layout", &self.layout)
            .field("ttl", &self.ttl)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("wait", &self.wait)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ConsulConfig {
    /// The options `consul://...?...` takes.
    pub const OPTIONS: &'static [&'static str] =
        &["prefix", "layout", "ttl", "timeout", "wait", "token"];

    /// The configuration the URL (its agents) and the options name; the token defaults to
    /// `$CONSUL_HTTP_TOKEN`.
    pub(crate) fn from_options(url: &BackendUrl, options: &BackendOptions) -> Result<Self> {
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
        options.accept_only(Self::OPTIONS)?;
        let mut config = ConsulConfig::new(agents);
        config.layout = options.layout()?;
        if let Some(ttl) = options.ttl()? {
            config.ttl = ttl;
        }
        if let Some(wait) = options.duration("wait")? {
            config.wait = wait;
        }
        if let Some(timeout) = options.duration("timeout")? {
            config.timeout = timeout;
        }
        config.token = options
            .text("token")
            .or_else(|| std::env::var("CONSUL_HTTP_TOKEN").ok())
            .filter(|t| !t.is_empty());
        Ok(config)
    }

    /// Defaults for these agents (`host:port` or full URLs).
    pub fn new(agents: impl IntoIterator<Item = impl Into<String>>) -> Self {
        ConsulConfig {
            agents: agents.into_iter().map(|a| http_url(a.into())).collect(),
            layout: KeyLayout::default(),
            ttl: DEFAULT_TTL,
            token: None,
            wait: Duration::from_secs(60),
            timeout: Duration::from_secs(5),
        }
    }
}
