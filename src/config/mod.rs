//! Choosing and configuring a backend: [`connect`] takes a URL, [`connect_with`] a [`Config`]
//! loaded from TOML, JSON or `WAYFINDER_*` environment variables.
//!
//! | URL | backend |
//! |---|---|
//! | `file:///var/lib/app/routes.json?ttl=10s&poll=1s` | shared file (absolute path) |
//! | `file://./routes.json` | shared file (relative to the working directory) |
//! | `memory://?prefix=services/serviceRoutes/&ttl=10s` | in-process registry (tests) |
//! | `etcd://127.0.0.1:2379,127.0.0.1:22379?prefix=app/&ttl=10s` | etcd (feature `etcd`) |
//! | `etcd://user:password@127.0.0.1:2379` | etcd with authentication |
//! | `consul://127.0.0.1:8500?token=...` | Consul KV (feature `consul`) |
//!
//! Every URL option is also a [`Config`] field and a `WAYFINDER_<OPTION>` variable; a field
//! that is set wins over the same option in the URL.

mod open;
mod options;
mod url;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::manager::RouteManager;
use crate::resolve::select::{selector_by_name, PeakEwma, PeakEwmaConfig, Selector};
use crate::resolve::{
    HealthConfig, OutlierConfig, ResolverConfig, SlowStartConfig, DEFAULT_NEGATIVE_TTL,
    DEFAULT_PANIC_THRESHOLD, DEFAULT_START_TIMEOUT,
};

/// Settings of `Config` that are not backend options.
const RESOLVER_SETTINGS: [&str; 8] = [
    "backend",
    "selector",
    "negative_ttl",
    "empty_grace",
    "snapshot",
    "start_timeout",
    "services",
    "panic_threshold",
];

pub(crate) use self::options::BackendOptions;
pub use self::url::{duration, parse_duration, redact_url, BackendUrl, REDACTED};

/// The URL schemes [`connect`] knows.
pub const KNOWN_SCHEMES: &[&str] = &["file", "memory", "etcd", "consul"];

/// The default backend URL when none is given.
pub const DEFAULT_BACKEND_URL: &str = "file://./routes.json";

/// The prefix of the environment variables [`Config::from_env`] reads.
pub const ENV_PREFIX: &str = "WAYFINDER_";

/// The backend options: URL query options, [`Config`] fields and `WAYFINDER_*` variables alike.
pub const OPTION_NAMES: &[&str] = &[
    "prefix", "layout", "ttl", "timeout", "poll", "wait", "user", "password", "token", "ca",
    "cert", "key",
];

/// Opens the backend a URL names. See the module docs for the forms.
pub async fn connect(url: &str) -> Result<Arc<dyn RouteManager>> {
    connect_with(&Config::from_url(url)).await
}

/// Opens the backend `config.backend` names, with the options of `config` over those in the URL.
pub async fn connect_with(config: &Config) -> Result<Arc<dyn RouteManager>> {
    let url = BackendUrl::parse(&config.backend)?;
    open::check_scheme(&url)?;
    let options = BackendOptions::gather(&url, config)?;
    tracing::debug!(backend = %redact_url(&config.backend), "connecting");
    open::open(&url, &options).await
}

/// Where the routes live and how to resolve them, as one serde struct.
///
/// Load it with [`Config::from_env`] (`WAYFINDER_BACKEND`, `WAYFINDER_TTL`,
/// `WAYFINDER_HEALTH__INTERVAL`, ...), [`Config::from_toml`], [`Config::from_json`],
/// [`Config::from_file`] or [`Config::load`] (file, then environment), or embed it in your own
/// configuration. Durations are seconds (`10`, `2.5`) or strings with a unit (`"500ms"`, `"1m"`).
/// Passwords and tokens are [`SecretString`]s: Debug output and logs never show them.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// Backend URL; default [`DEFAULT_BACKEND_URL`]. Query options in it apply unless the field
    /// of the same name below is set.
    pub backend: String,
    /// Key prefix for memory, etcd and Consul; default `services/serviceRoutes/`.
    pub prefix: Option<String>,
    /// How instances write routes (etcd, Consul, file): `instances` (default; a key per route
    /// per instance) or `surging` (one shared value per service id, as Surging keeps it).
    pub layout: Option<String>,
    /// Liveness TTL of registrations; default 10 s, at least 1 s.
    #[serde(deserialize_with = "duration::deserialize_option")]
    pub ttl: Option<Duration>,
    /// Time allowed for one backend request (etcd, Consul); default 5 s.
    #[serde(deserialize_with = "duration::deserialize_option")]
    pub timeout: Option<Duration>,
    /// How often the file backend re-reads the file besides file-system events; default 1 s.
    #[serde(deserialize_with = "duration::deserialize_option")]
    pub poll: Option<Duration>,
    /// How long a Consul blocking query waits for a change; default 60 s.
    #[serde(deserialize_with = "duration::deserialize_option")]
    pub wait: Option<Duration>,
    /// etcd user name.
    pub user: Option<String>,
    /// etcd password.
    pub password: Option<SecretString>,
    /// Consul ACL token; default `$CONSUL_HTTP_TOKEN`.
    pub token: Option<SecretString>,
    /// CA certificate (PEM) that makes etcd connections TLS.
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd TLS; needs `key` and `ca`.
    pub cert: Option<PathBuf>,
    /// Client private key (PEM) for etcd TLS; needs `cert` and `ca`.
    pub key: Option<PathBuf>,
    /// The resolver's selector by name (see
    /// [`SELECTOR_NAMES`](crate::resolve::select::SELECTOR_NAMES)); default `round_robin`.
    pub selector: String,
    /// The resolver's health checks.
    pub health: HealthConfig,
    /// How long the resolver remembers that a path or id is unknown; default 2 s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub negative_ttl: Duration,
    /// How long the resolver keeps a route's last addresses when the registry removes all of
    /// them (or anything after a registry reset); default 2 x TTL, `0` turns it off.
    #[serde(deserialize_with = "duration::deserialize_option")]
    pub empty_grace: Option<Duration>,
    /// A file where the resolver keeps its last good routes, served when the registry cannot be
    /// read at start; default none.
    pub snapshot: Option<PathBuf>,
    /// How long the resolver waits for the registry at start before it serves the snapshot;
    /// default 5 s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub start_timeout: Duration,
    /// The services the resolver subscribes to (service-id prefixes), as a list or one
    /// comma-separated string; default every service.
    #[serde(deserialize_with = "deserialize_services")]
    pub services: Vec<String>,
    /// The share of a route's addresses (0 to 1) below which selection uses all of them;
    /// default 0.5.
    pub panic_threshold: f64,
    /// The resolver's outlier ejection from reported call outcomes.
    pub outlier: OutlierConfig,
    /// The resolver's slow start of new addresses (off unless `window` is set).
    pub slow_start: SlowStartConfig,
    /// The `peak_ewma` selector's settings.
    pub peak_ewma: PeakEwmaConfig,
}

/// A list of strings, or one string of comma-separated items (as an environment variable
/// gives it); blanks around items are dropped, and so are empty items.
fn deserialize_services<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Services {
        List(Vec<String>),
        Text(String),
    }
    let items = match Services::deserialize(deserializer)? {
        Services::List(items) => items,
        Services::Text(text) => text.split(',').map(str::to_owned).collect(),
    };
    Ok(items
        .iter()
        .map(|item| item.trim().to_owned())
        .filter(|item| !item.is_empty())
        .collect())
}

impl Default for Config {
    fn default() -> Self {
        Config {
            backend: DEFAULT_BACKEND_URL.to_owned(),
            prefix: None,
            layout: None,
            ttl: None,
            timeout: None,
            poll: None,
            wait: None,
            user: None,
            password: None,
            token: None,
            ca: None,
            cert: None,
            key: None,
            selector: "round_robin".to_owned(),
            health: HealthConfig::default(),
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            empty_grace: None,
            snapshot: None,
            start_timeout: DEFAULT_START_TIMEOUT,
            services: Vec::new(),
            panic_threshold: DEFAULT_PANIC_THRESHOLD,
            outlier: OutlierConfig::default(),
            slow_start: SlowStartConfig::default(),
            peak_ewma: PeakEwmaConfig::default(),
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = |s: &Option<SecretString>| s.as_ref().map(|_| REDACTED);
        f.debug_struct("Config")
            .field("backend", &redact_url(&self.backend))
            .field("prefix", &self.prefix)
            .field("layout", &self.layout)
            .field("ttl", &self.ttl)
            .field("timeout", &self.timeout)
            .field("poll", &self.poll)
            .field("wait", &self.wait)
            .field("user", &self.user)
            .field("password", &secret(&self.password))
            .field("token", &secret(&self.token))
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("selector", &self.selector)
            .field("health", &self.health)
            .field("negative_ttl", &self.negative_ttl)
            .field("empty_grace", &self.empty_grace)
            .field("snapshot", &self.snapshot)
            .field("start_timeout", &self.start_timeout)
            .field("services", &self.services)
            .field("panic_threshold", &self.panic_threshold)
            .field("outlier", &self.outlier)
            .field("slow_start", &self.slow_start)
            .field("peak_ewma", &self.peak_ewma)
            .finish()
    }
}

impl Config {
    /// The defaults with `backend` set to `url`; its query options are read when connecting.
    pub fn from_url(url: &str) -> Self {
        Config {
            backend: url.to_owned(),
            ..Config::default()
        }
    }

    /// Points the configuration at `url`, an explicit choice (a command-line flag, say): the
    /// fields that the URL's query options also set are cleared, so the URL's options apply.
    pub fn set_backend(&mut self, url: &str) -> Result<()> {
        let parsed = BackendUrl::parse(url)?;
        for (key, _) in &parsed.query {
            match key.as_str() {
                "prefix" => self.prefix = None,
                "layout" => self.layout = None,
                "ttl" => self.ttl = None,
                "timeout" => self.timeout = None,
                "poll" => self.poll = None,
                "wait" => self.wait = None,
                "user" => self.user = None,
                "password" => self.password = None,
                "token" => self.token = None,
                "ca" => self.ca = None,
                "cert" => self.cert = None,
                "key" => self.key = None,
                _ => {}
            }
        }
        if parsed.userinfo().0.is_some() {
            self.user = None;
            self.password = None;
        }
        self.backend = url.to_owned();
        Ok(())
    }

    /// The defaults overlaid with the `WAYFINDER_*` environment variables: `WAYFINDER_BACKEND`,
    /// `WAYFINDER_<OPTION>` for each of [`OPTION_NAMES`], `WAYFINDER_SELECTOR`,
    /// `WAYFINDER_NEGATIVE_TTL` and `WAYFINDER_HEALTH__<FIELD>` (two underscores; a field
    /// [`HealthConfig`] lacks is an error). Other `WAYFINDER_*` variables are ignored with a
    /// warning.
    pub fn from_env() -> Result<Self> {
        Self::load(None)
    }

    /// A TOML document's settings over the defaults.
    pub fn from_toml(text: &str) -> Result<Self> {
        let source = ::config::File::from_str(text, ::config::FileFormat::Toml);
        extract(
            ::config::Config::builder().add_source(source),
            "TOML configuration",
        )
    }

    /// A JSON document's settings over the defaults.
    pub fn from_json(text: &str) -> Result<Self> {
        let source = ::config::File::from_str(text, ::config::FileFormat::Json);
        extract(
            ::config::Config::builder().add_source(source),
            "JSON configuration",
        )
    }

    /// A `.toml` or `.json` file's settings over the defaults.
    pub fn from_file(path: &Path) -> Result<Self> {
        let builder = ::config::Config::builder().add_source(file_source(path)?);
        extract(builder, &format!("configuration file {}", path.display()))
    }

    /// The defaults, overlaid with `file` if given, overlaid with the `WAYFINDER_*` environment:
    /// what a service or the CLI reads at start-up.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        let mut builder = ::config::Config::builder();
        if let Some(path) = file {
            builder = builder.add_source(file_source(path)?);
        }
        extract(
            builder.add_source(env_source(std::env::vars())),
            "configuration",
        )
    }

    /// The resolver settings: selector, health checks, negative-cache TTL, empty protection,
    /// snapshot and subscription.
    pub fn resolver_config(&self) -> Result<ResolverConfig> {
        if !(0.0..=1.0).contains(&self.panic_threshold) {
            return Err(Error::invalid_input(format!(
                "panic_threshold {} is not a share between 0 and 1",
                self.panic_threshold
            )));
        }
        self.outlier.validate()?;
        let selector: Arc<dyn Selector> = match self.selector.as_str() {
            "peak_ewma" => Arc::new(PeakEwma::new(self.peak_ewma.clone())),
            name => selector_by_name(name)?,
        };
        Ok(ResolverConfig {
            selector,
            health: self.health.clone(),
            negative_ttl: self.negative_ttl,
            empty_grace: self.empty_grace,
            snapshot: self.snapshot.clone(),
            start_timeout: self.start_timeout,
            services: self.services.clone(),
            panic_threshold: self.panic_threshold,
            outlier: self.outlier.clone(),
            slow_start: self.slow_start.clone(),
            ..ResolverConfig::default()
        })
    }
}

fn extract(
    builder: ::config::ConfigBuilder<::config::builder::DefaultState>,
    what: &str,
) -> Result<Config> {
    builder
        .build()
        .and_then(|sources| sources.try_deserialize::<Config>())
        .map_err(|e| Error::invalid_input(format!("{what}: {}", without_source_lines(&e))))
}

/// A parse error without the quoted source lines (`12 | password = "..."`) that TOML errors
/// carry, since the line may hold a secret; the position and the reason stay.
fn without_source_lines(error: &::config::ConfigError) -> String {
    let text = error.to_string();
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim_start().starts_with('|'))
        .filter(|line| {
            let digits = line
                .trim_start()
                .trim_start_matches(|c: char| c.is_ascii_digit());
            digits.len() == line.trim_start().len() || !digits.trim_start().starts_with('|')
        })
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    kept.join(" ")
}

fn file_source(
    path: &Path,
) -> Result<::config::File<::config::FileSourceFile, ::config::FileFormat>> {
    let format = match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => ::config::FileFormat::Toml,
        Some("json") => ::config::FileFormat::Json,
        _ => {
            return Err(Error::invalid_input(format!(
                "configuration file {} is neither .toml nor .json",
                path.display()
            )))
        }
    };
    Ok(::config::File::from(path).format(format).required(true))
}

/// The `WAYFINDER_*` variables that name a setting; the others are reported and left out.
fn env_source(vars: impl Iterator<Item = (String, String)>) -> ::config::Environment {
    let mut known = HashMap::new();
    for (name, value) in vars {
        let Some(setting) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let setting = setting.to_ascii_lowercase();
        if setting == "config" {
            // WAYFINDER_CONFIG names the file that programs pass to `Config::load`.
            continue;
        }
        let is_known = match setting.split_once("__") {
            // The tables (`HealthConfig`, `OutlierConfig`, ...) refuse a field they do not have.
            Some(("health" | "outlier" | "slow_start" | "peak_ewma", _)) => true,
            Some(_) => false,
            None => {
                OPTION_NAMES.contains(&setting.as_str())
                    || RESOLVER_SETTINGS.contains(&setting.as_str())
            }
        };
        if is_known {
            known.insert(name, value);
        } else {
            tracing::warn!(variable = %name, "ignoring an environment variable that names no wayfinder setting");
        }
    }
    ::config::Environment::with_prefix(ENV_PREFIX.trim_end_matches('_'))
        .prefix_separator("_")
        .separator("__")
        .ignore_empty(true)
        .source(Some(known))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use secrecy::ExposeSecret;

    fn from_vars(vars: &[(&str, &str)]) -> Result<Config> {
        let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        extract(
            ::config::Config::builder().add_source(env_source(vars)),
            "environment",
        )
    }

    #[tokio::test]
    async fn connect_explains_what_it_cannot_open() {
        let unknown = connect("zk://127.0.0.1:2181?color=red").await.unwrap_err();
        assert_eq!(unknown.kind(), ErrorKind::InvalidInput);
        assert!(unknown.to_string().contains("file, memory, etcd, consul"));
        let twice = connect("memory://?ttl=1&ttl=2").await.unwrap_err();
        assert!(twice.to_string().contains("twice"), "{twice}");
        let unknown_option = connect("memory://?color=red").await.unwrap_err();
        assert!(
            unknown_option
                .to_string()
                .contains("for the memory backend; known options: prefix, ttl"),
            "{unknown_option}"
        );
        let short_ttl = connect("memory://?ttl=500ms").await.unwrap_err();
        assert!(short_ttl.to_string().contains("minimum"), "{short_ttl}");
        let memory = connect("memory://?prefix=apps/x&ttl=3s").await.unwrap();
        assert_eq!(memory.backend(), "memory");
    }

    #[tokio::test]
    async fn a_setting_for_another_backend_is_refused_not_ignored() {
        let mut config = Config::from_url("memory://?ttl=5s");
        config.token = Some("s3cret".into());
        let error = connect_with(&config).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidInput);
        assert!(error
            .to_string()
            .contains("\"token\" does not apply to the memory backend"));
        assert!(!error.to_string().contains("s3cret"));
    }

    #[test]
    fn toml_and_json_fill_every_kind_of_field() {
        let toml = Config::from_toml(
            r#"
            backend = "etcd://127.0.0.1:2379"
            prefix = "apps/"
            ttl = "5s"
            timeout = 2.5
            user = "root"
            password = "hunter2"
            selector = "p2c"
            negative_ttl = "250ms"
            services = ["App.IUserService", "App.IOrderService"]
            [health]
            interval = 3
            failure_threshold = 5
            "#,
        )
        .unwrap();
        assert_eq!(toml.backend, "etcd://127.0.0.1:2379");
        assert_eq!(toml.prefix.as_deref(), Some("apps/"));
        assert_eq!(toml.ttl, Some(Duration::from_secs(5)));
        assert_eq!(toml.timeout, Some(Duration::from_millis(2500)));
        assert_eq!(toml.password.as_ref().unwrap().expose_secret(), "hunter2");
        assert_eq!(toml.negative_ttl, Duration::from_millis(250));
        assert_eq!(toml.health.interval, Duration::from_secs(3));
        assert_eq!(toml.health.failure_threshold, 5);
        assert_eq!(
            toml.health.success_threshold,
            HealthConfig::default().success_threshold
        );
        assert_eq!(toml.resolver_config().unwrap().selector.name(), "p2c");
        assert_eq!(toml.services, ["App.IUserService", "App.IOrderService"]);

        let json = Config::from_json(
            r#"{"backend": "consul://127.0.0.1:8500", "token": "t0k", "wait": "1m"}"#,
        )
        .unwrap();
        assert_eq!(json.token.as_ref().unwrap().expose_secret(), "t0k");
        assert_eq!(json.wait, Some(Duration::from_secs(60)));
        assert_eq!(json.selector, "round_robin");
        assert_eq!(
            Config::from_json("{}").unwrap().backend,
            DEFAULT_BACKEND_URL
        );
    }

    #[cfg(feature = "consul")]
    #[tokio::test]
    async fn consul_urls_need_an_agent_and_take_no_password() {
        let no_agent = connect("consul://?ttl=10s").await.unwrap_err();
        assert_eq!(no_agent.kind(), ErrorKind::InvalidInput);
        let userinfo = connect("consul://root:hunter2@127.0.0.1:8500")
            .await
            .unwrap_err();
        assert!(userinfo.to_string().contains("token"), "{userinfo}");
        assert!(!userinfo.to_string().contains("hunter2"));
    }

    #[cfg(feature = "etcd")]
    #[tokio::test]
    async fn etcd_urls_need_an_endpoint_and_a_user_for_a_password() {
        let no_hosts = connect("etcd://?ttl=5").await.unwrap_err();
        assert_eq!(no_hosts.kind(), ErrorKind::InvalidInput);
        let no_user = connect("etcd://127.0.0.1:2379?password=x")
            .await
            .unwrap_err();
        assert!(no_user.to_string().contains("needs a user"), "{no_user}");
    }

    #[cfg(feature = "file")]
    #[tokio::test]
    async fn file_urls_need_a_path() {
        let empty = connect("file://").await.unwrap_err();
        assert_eq!(empty.kind(), ErrorKind::InvalidInput);
    }

    #[cfg(not(feature = "etcd"))]
    #[tokio::test]
    async fn a_compiled_out_backend_is_unsupported_and_names_its_feature() {
        let error = connect("etcd://127.0.0.1:2379").await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Unsupported);
        assert!(
            error.to_string().contains("cargo feature \"etcd\""),
            "{error}"
        );
    }

    #[test]
    fn an_explicit_backend_url_keeps_its_own_options() {
        let mut config = Config::from_toml("prefix = \"from-file/\"\nttl = 7").unwrap();
        config.set_backend("memory://?prefix=from-flag/").unwrap();
        assert_eq!(config.prefix, None, "the flag's prefix applies");
        assert_eq!(
            config.ttl,
            Some(Duration::from_secs(7)),
            "the file's ttl stays"
        );
        assert_eq!(config.backend, "memory://?prefix=from-flag/");
    }

    #[test]
    fn a_syntax_error_does_not_quote_the_line_that_may_hold_a_secret() {
        let error = Config::from_toml("password = \"hunter2\nttl = 5").unwrap_err();
        let text = error.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("line 1"), "the position stays: {text}");
    }

    #[test]
    fn bad_configuration_is_refused_with_the_reason() {
        let typo = Config::from_toml("bakend = \"memory://\"").unwrap_err();
        assert_eq!(typo.kind(), ErrorKind::InvalidInput);
        assert!(typo.to_string().contains("bakend"), "{typo}");
        let duration = Config::from_toml("ttl = \"soon\"").unwrap_err();
        assert!(duration.to_string().contains("soon"), "{duration}");
        let health = Config::from_json(r#"{"health": {"intervall": 1}}"#).unwrap_err();
        assert!(health.to_string().contains("intervall"), "{health}");
        let selector = Config::from_toml("selector = \"fastest\"").unwrap();
        assert!(selector.resolver_config().is_err());
        let extension = Config::from_file(Path::new("wayfinder.yaml")).unwrap_err();
        assert!(extension.to_string().contains(".toml"), "{extension}");
    }

    #[test]
    fn environment_variables_set_fields_and_strangers_are_ignored() {
        let config = from_vars(&[
            ("WAYFINDER_BACKEND", "consul://127.0.0.1:8500?wait=10s"),
            ("WAYFINDER_TTL", "7"),
            ("WAYFINDER_TOKEN", "12345"),
            ("WAYFINDER_SELECTOR", "least_connections"),
            ("WAYFINDER_HEALTH__ENABLED", "false"),
            ("WAYFINDER_HEALTH__INTERVAL", "750ms"),
            ("WAYFINDER_HEALTH__MAX_CONCURRENCY", "4"),
            ("WAYFINDER_PREFIX", ""),
            ("WAYFINDER_SERVICES", "App.IUserService, App.IOrderService,"),
            ("WAYFINDER_DEBIAN_MIRROR", "http://example.invalid"),
            ("WAYFINDER_CONFIG", "/etc/wayfinder.toml"),
            ("HOME", "/root"),
        ])
        .unwrap();
        assert_eq!(config.backend, "consul://127.0.0.1:8500?wait=10s");
        assert_eq!(config.ttl, Some(Duration::from_secs(7)));
        assert_eq!(config.token.as_ref().unwrap().expose_secret(), "12345");
        assert_eq!(config.selector, "least_connections");
        assert!(!config.health.enabled);
        assert_eq!(config.health.interval, Duration::from_millis(750));
        assert_eq!(config.health.max_concurrency, 4);
        assert_eq!(config.prefix, None, "an empty variable sets nothing");
        assert_eq!(config.services, ["App.IUserService", "App.IOrderService"]);
        assert_eq!(config.resolver_config().unwrap().services, config.services);
        let bad = from_vars(&[("WAYFINDER_HEALTH__FAILURE_THRESHOLD", "many")]).unwrap_err();
        assert!(bad.to_string().contains("failure_threshold"), "{bad}");
        let typo = from_vars(&[("WAYFINDER_HEALTH__INTERVALL", "1")]).unwrap_err();
        assert!(typo.to_string().contains("intervall"), "{typo}");
    }

    #[test]
    fn resilience_settings_come_from_toml_and_the_environment() {
        let toml = Config::from_toml(
            r#"
            selector = "peak_ewma"
            panic_threshold = 0.3
            [outlier]
            consecutive_failures = 3
            base_ejection = "5s"
            [slow_start]
            window = "20s"
            [peak_ewma]
            default_rtt = "5ms"
            decay = "2s"
            "#,
        )
        .unwrap();
        let resolver = toml.resolver_config().unwrap();
        assert_eq!(resolver.panic_threshold, 0.3);
        assert_eq!(resolver.outlier.consecutive_failures, 3);
        assert_eq!(resolver.outlier.base_ejection, Duration::from_secs(5));
        assert_eq!(resolver.slow_start.window, Duration::from_secs(20));
        assert_eq!(resolver.selector.name(), "peak_ewma");
        let expected = PeakEwma::new(PeakEwmaConfig {
            default_rtt: Duration::from_millis(5),
            decay: Duration::from_secs(2),
        });
        assert_eq!(format!("{:?}", resolver.selector), format!("{expected:?}"));
        let env = from_vars(&[
            ("WAYFINDER_SELECTOR", "least_resource"),
            ("WAYFINDER_PANIC_THRESHOLD", "0.25"),
            ("WAYFINDER_OUTLIER__MAX_EJECTION_PERCENT", "20"),
            ("WAYFINDER_SLOW_START__MIN_WEIGHT_PERCENT", "30"),
            ("WAYFINDER_PEAK_EWMA__DECAY", "3s"),
        ])
        .unwrap();
        assert_eq!(
            env.resolver_config().unwrap().selector.name(),
            "least_resource"
        );
        assert_eq!(env.panic_threshold, 0.25);
        assert_eq!(env.outlier.max_ejection_percent, 20);
        assert_eq!(env.slow_start.min_weight_percent, 30);
        assert_eq!(env.peak_ewma.decay, Duration::from_secs(3));
        let typo = from_vars(&[("WAYFINDER_PEAK_EWMA__DECAYS", "1s")]).unwrap_err();
        assert!(typo.to_string().contains("decays"), "{typo}");
    }

    #[test]
    fn debug_output_hides_every_secret() {
        let mut config =
            Config::from_url("etcd://root:pw-in-url@127.0.0.1:2379?password=pw-in-query");
        config.password = Some("pw-field".into());
        config.token = Some("token-field".into());
        let debug = format!("{config:?}");
        for secret in ["pw-in-url", "pw-in-query", "pw-field", "token-field"] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert!(debug.contains("127.0.0.1:2379") && debug.contains(REDACTED));
    }
}
