//! Backend options as a backend reads them: gathered from a URL's query and from a [`Config`]'s
//! fields (a field that is set wins), then handed to the backend the scheme names, which takes
//! the names it knows (its `OPTIONS`) and parses their values with the readers here.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::url::{check_ttl, parse_duration, BackendUrl};
use super::{Config, OPTION_NAMES};
use crate::error::{Error, Result};
use crate::route::{KeyLayout, LayoutStyle};

/// One option's value: text from a URL, or a typed [`Config`] field.
#[derive(Clone)]
enum OptionValue {
    Text(String),
    Duration(Duration),
    Secret(SecretString),
    Path(PathBuf),
}

/// The options given for one backend, by name.
#[derive(Clone)]
pub(crate) struct BackendOptions {
    scheme: String,
    values: BTreeMap<String, OptionValue>,
}

impl BackendOptions {
    /// The URL's query options (each given once), then every option field `config` sets.
    pub(crate) fn gather(url: &BackendUrl, config: &Config) -> Result<Self> {
        let mut values = BTreeMap::new();
        for (key, value) in &url.query {
            if values
                .insert(key.clone(), OptionValue::Text(value.clone()))
                .is_some()
            {
                return Err(Error::invalid_input(format!(
                    "option {key:?} is given twice"
                )));
            }
        }
        let text = |v: &Option<String>| v.clone().map(OptionValue::Text);
        let duration = |v: &Option<Duration>| v.map(OptionValue::Duration);
        let secret = |v: &Option<SecretString>| v.clone().map(OptionValue::Secret);
        let path = |v: &Option<PathBuf>| v.clone().map(OptionValue::Path);
        let fields = [
            ("prefix", text(&config.prefix)),
            ("layout", text(&config.layout)),
            ("ttl", duration(&config.ttl)),
            ("timeout", duration(&config.timeout)),
            ("poll", duration(&config.poll)),
            ("wait", duration(&config.wait)),
            ("user", text(&config.user)),
            ("password", secret(&config.password)),
            ("token", secret(&config.token)),
            ("ca", path(&config.ca)),
            ("cert", path(&config.cert)),
            ("key", path(&config.key)),
        ];
        for (name, value) in fields {
            if let Some(value) = value {
                values.insert(name.to_owned(), value);
            }
        }
        Ok(BackendOptions {
            scheme: url.scheme.clone(),
            values,
        })
    }

    /// Refuses every option outside `allowed` (the backend's own list), so a misplaced or
    /// misspelt setting is an error rather than ignored.
    pub(crate) fn accept_only(&self, allowed: &[&str]) -> Result<()> {
        let scheme = &self.scheme;
        let Some(key) = self.values.keys().find(|k| !allowed.contains(&k.as_str())) else {
            return Ok(());
        };
        if OPTION_NAMES.contains(&key.as_str()) {
            return Err(Error::invalid_input(format!(
                "option {key:?} does not apply to the {scheme} backend; it takes: {}",
                allowed.join(", ")
            )));
        }
        // A key holding `@` is likely part of an unencoded password: not echoed.
        let shown = if key.contains('@') {
            "(not shown)"
        } else {
            key
        };
        Err(Error::invalid_input(format!(
            "unknown option {shown:?} for the {scheme} backend; known options: {} \
             (percent-encode `?`, `&` and `#` in passwords)",
            allowed.join(", ")
        )))
    }

    /// A text option.
    pub(crate) fn text(&self, key: &str) -> Option<String> {
        match self.values.get(key)? {
            OptionValue::Text(text) => Some(text.clone()),
            OptionValue::Secret(secret) => Some(secret.expose_secret().to_owned()),
            OptionValue::Path(path) => Some(path.display().to_string()),
            OptionValue::Duration(_) => None,
        }
    }

    /// A file path option.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub(crate) fn path(&self, key: &str) -> Option<PathBuf> {
        match self.values.get(key)? {
            OptionValue::Path(path) => Some(path.clone()),
            _ => self.text(key).map(PathBuf::from),
        }
    }

    /// A duration option (`10`, `2.5s`, `500ms`, `1m`).
    pub(crate) fn duration(&self, key: &str) -> Result<Option<Duration>> {
        match self.values.get(key) {
            None => Ok(None),
            Some(OptionValue::Duration(duration)) => Ok(Some(*duration)),
            Some(_) => self
                .text(key)
                .map(|text| {
                    parse_duration(&text)
                        .map_err(|e| Error::invalid_input(format!("{key}: {}", e.message())))
                })
                .transpose(),
        }
    }

    /// The `ttl` option, checked against the shortest TTL accepted.
    pub(crate) fn ttl(&self) -> Result<Option<Duration>> {
        self.duration("ttl")?.map(check_ttl).transpose()
    }

    /// The key layout of the `prefix` and `layout` options (each defaulted when absent).
    pub(crate) fn layout(&self) -> Result<KeyLayout> {
        let layout = match self.text("prefix") {
            Some(prefix) => KeyLayout::new(&prefix)?,
            None => KeyLayout::default(),
        };
        Ok(layout.with_style(self.style()?))
    }

    /// The `layout` option alone.
    pub(crate) fn style(&self) -> Result<LayoutStyle> {
        self.text("layout")
            .map(|text| LayoutStyle::parse(&text))
            .transpose()
            .map(Option::unwrap_or_default)
    }
}
