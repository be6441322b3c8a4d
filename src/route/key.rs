//! Registry key layout and key encoding.
//!
//! Each instance's copy of a route lives at `<prefix><service-id>/<instance-id>`. Every key matches
//! `^[a-zA-Z0-9,_./\-?&=]+$` (Consul's key rule) and has no `//`, no `..` and no leading `/`.
//! Instance ids encode an address's host and port into that alphabet and decode back:
//!
//! | address            | instance id       |
//! |--------------------|-------------------|
//! | `192.168.1.10:98`  | `192.168.1.10_98` |
//! | `api-1.local:8080` | `api-1.local_8080`|
//! | `[::1]:98`         | `,,1_98`          |
//! | `[fe80::1%eth0]:7` | `fe80,,1=eth0_7`  |
//!
//! IPv6 colons become `,` and a zone's `%` becomes `=`; host names never contain either, so the
//! two forms cannot be confused. The port follows the last `_`.

use std::net::Ipv6Addr;

use super::model::Address;
use crate::error::{Error, Result};

/// The default key prefix, as Surging uses it.
pub const DEFAULT_PREFIX: &str = "services/serviceRoutes/";

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, ',' | '_' | '.' | '/' | '-' | '?' | '&' | '=')
}

/// Checks a whole key against the key rules.
pub fn validate_key(key: &str) -> Result<()> {
    let problem = if key.is_empty() {
        Some("is empty")
    } else if let Some(c) = key.chars().find(|c| !is_key_char(*c)) {
        return Err(Error::invalid_input(format!(
            "key {key:?} has the character {c:?} (allowed: a-z A-Z 0-9 , _ . / - ? & =)"
        )));
    } else if key.starts_with('/') {
        Some("starts with '/'")
    } else if key.contains("//") {
        Some("contains '//'")
    } else if key.contains("..") {
        Some("contains '..'")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(Error::invalid_input(format!("key {key:?} {problem}"))),
        None => Ok(()),
    }
}

/// Checks that a service id can be one key segment: non-empty, key alphabet, no `/`.
pub fn validate_service_id(id: &str) -> Result<()> {
    if id.contains('/') {
        return Err(Error::invalid_input(format!(
            "service id {id:?} contains '/'"
        )));
    }
    validate_key(id).map_err(|e| Error::invalid_input(format!("service id: {}", e.message())))
}

/// The instance id of an address: its host and port in the key alphabet.
pub fn instance_id(address: &Address) -> Result<String> {
    address.validate()?;
    let host = address.ip.trim_start_matches('[').trim_end_matches(']');
    let encoded_host = if host.contains(':') {
        encode_ipv6(host)?
    } else {
        validate_host_name(host)?;
        host.to_owned()
    };
    Ok(format!("{encoded_host}_{}", address.port))
}

/// Decodes an instance id back into an address (host and port only).
pub fn parse_instance_id(id: &str) -> Result<Address> {
    let bad = |why: &str| Error::invalid_input(format!("instance id {id:?} {why}"));
    let (host, port) = id.rsplit_once('_').ok_or_else(|| bad("has no '_PORT'"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| bad("has a bad port"))?;
    let host = if host.contains(',') {
        let text = host.replace(',', ":").replace('=', "%");
        let (addr, zone) = match text.split_once('%') {
            Some((addr, zone)) => (addr, Some(zone)),
            None => (text.as_str(), None),
        };
        addr.parse::<Ipv6Addr>()
            .map_err(|_| bad("is not a valid IPv6 encoding"))?;
        let host = match zone {
            Some(zone) => format!("{addr}%{zone}"),
            None => addr.to_owned(),
        };
        // Only what `instance_id` itself would produce decodes.
        encode_ipv6(&host).map_err(|_| bad("has an IPv6 zone that cannot be encoded"))?;
        host
    } else {
        validate_host_name(host)?;
        host.to_owned()
    };
    Ok(Address::new(host, port))
}

fn encode_ipv6(host: &str) -> Result<String> {
    let (addr, zone) = match host.split_once('%') {
        Some((addr, zone)) => (addr, Some(zone)),
        None => (host, None),
    };
    let addr: Ipv6Addr = addr
        .parse()
        .map_err(|_| Error::invalid_input(format!("host {host:?} is not a valid IPv6 address")))?;
    let mut out = addr.to_string().replace(':', ",");
    if let Some(zone) = zone {
        if zone.is_empty()
            || zone.contains("..")
            || !zone
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        {
            return Err(Error::invalid_input(format!(
                "IPv6 zone {zone:?} cannot be encoded in a key"
            )));
        }
        out.push('=');
        out.push_str(zone);
    }
    Ok(out)
}

fn validate_host_name(host: &str) -> Result<()> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && !host.starts_with('.')
        && !host.contains("..")
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_input(format!(
            "host {host:?} cannot be encoded in a key (expected IPv4, IPv6 or a host name)"
        )))
    }
}

/// How instances write their routes under the prefix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LayoutStyle {
    /// wayfinder's own layout: a key per route per instance, `<prefix><service-id>/<instance-id>`,
    /// bound to the instance's liveness. Concurrent writers never touch each other's keys.
    #[default]
    Instances,
    /// Surging's layout: one value per service id at `<prefix><service-id>` holding every
    /// instance's address, edited by compare-and-swap; liveness lives in keys beside the prefix.
    Surging,
}

impl LayoutStyle {
    /// The style an option names: `instances` or `surging`.
    pub fn parse(text: &str) -> Result<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "instances" => Ok(LayoutStyle::Instances),
            "surging" => Ok(LayoutStyle::Surging),
            other => Err(Error::invalid_input(format!(
                "unknown layout {other:?}; known layouts: instances, surging"
            ))),
        }
    }
}

/// Where routes live in a key-value registry: the prefix, the key of each entry, and the keys
/// beside the prefix that hold liveness and deregistration records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLayout {
    prefix: String,
    style: LayoutStyle,
}

/// What a key under the prefix names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryKey {
    /// The service id.
    pub service_id: String,
    /// The instance id, or `None` for a whole-route value written by Surging itself.
    pub instance_id: Option<String>,
}

impl KeyLayout {
    /// A layout under `prefix`; a missing trailing `/` is added.
    pub fn new(prefix: &str) -> Result<Self> {
        let mut prefix = prefix.to_owned();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        validate_key(&prefix)
            .map_err(|e| Error::invalid_input(format!("prefix: {}", e.message())))?;
        Ok(KeyLayout {
            prefix,
            style: LayoutStyle::Instances,
        })
    }

    /// This layout written in `style` (builder style).
    pub fn with_style(mut self, style: LayoutStyle) -> Self {
        self.style = style;
        self
    }

    /// How instances write their routes.
    pub fn style(&self) -> LayoutStyle {
        self.style
    }

    /// The prefix, ending in `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key prefix under which all instances of one service id live.
    pub fn service_prefix(&self, service_id: &str) -> Result<String> {
        validate_service_id(service_id)?;
        Ok(format!("{}{service_id}/", self.prefix))
    }

    /// The key of one instance's copy of one route.
    pub fn instance_key(&self, service_id: &str, instance_id: &str) -> Result<String> {
        let key = format!("{}{instance_id}", self.service_prefix(service_id)?);
        validate_key(&key)?;
        Ok(key)
    }

    /// The key that marks an instance as deregistered while its liveness lives, so that its
    /// registration does not write back the entries a deregistration removed. It lives beside
    /// the prefix (`services/serviceRoutes-removed/<instance-id>`), never under it, since readers
    /// of the prefix (Surging among them) take every value there for a route.
    pub fn tombstone_key(&self, instance_id: &str) -> Result<String> {
        self.beside("removed", instance_id)
    }

    /// The key of one service id's shared value in the `surging` style: `<prefix><service-id>`.
    pub fn route_key(&self, service_id: &str) -> Result<String> {
        validate_service_id(service_id)?;
        Ok(format!("{}{service_id}", self.prefix))
    }

    /// In the `surging` style, the key bound to a running instance's liveness
    /// (`services/serviceRoutes-live/<instance-id>`), beside the prefix since Surging takes
    /// every value under it for a route.
    pub fn live_key(&self, instance_id: &str) -> Result<String> {
        self.beside("live", instance_id)
    }

    /// In the `surging` style, the key that records that wayfinder wrote an instance's address
    /// into shared values (`services/serviceRoutes-owned/<instance-id>`): once its live key is
    /// gone, a reaper takes that address out. Addresses without one are never reaped.
    pub fn owned_key(&self, instance_id: &str) -> Result<String> {
        self.beside("owned", instance_id)
    }

    /// The prefix of the keys beside the prefix of one `kind` (`live`, `owned`, `removed`).
    pub(crate) fn beside_prefix(&self, kind: &str) -> String {
        format!("{}-{kind}/", self.prefix.trim_end_matches('/'))
    }

    fn beside(&self, kind: &str, instance_id: &str) -> Result<String> {
        let key = format!("{}{instance_id}", self.beside_prefix(kind));
        validate_key(&key)?;
        Ok(key)
    }

    /// Splits a key under the prefix into service id and instance id; `None` for foreign keys.
    pub fn parse(&self, key: &str) -> Option<EntryKey> {
        let rest = key.strip_prefix(&self.prefix)?;
        let (service_id, instance_id) = match rest.split_once('/') {
            Some((service, instance)) if !instance.is_empty() && !instance.contains('/') => {
                (service, Some(instance.to_owned()))
            }
            Some(_) => return None,
            None => (rest, None),
        };
        if service_id.is_empty() {
            return None;
        }
        Some(EntryKey {
            service_id: service_id.to_owned(),
            instance_id,
        })
    }
}

impl Default for KeyLayout {
    fn default() -> Self {
        KeyLayout {
            prefix: DEFAULT_PREFIX.to_owned(),
            style: LayoutStyle::Instances,
        }
    }
}
