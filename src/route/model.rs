//! The route model: [`Address`], [`ServiceDescriptor`] and [`ServiceRoute`].

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use super::metadata::Metadata;

use crate::error::{Error, Result};

/// One network address that serves routes (Surging's `IpAddressModel`).
#[derive(Debug, Clone, PartialEq)]
pub struct Address {
    /// Host: an IPv4 or IPv6 literal, or a host name.
    pub ip: String,
    /// TCP port of the RPC endpoint, 1-65535.
    pub port: u16,
    /// Address reachable from outside the local network, when it differs.
    pub wan_ip: Option<String>,
    /// WebSocket port, when served.
    pub ws_port: Option<u16>,
    /// MQTT port, when served.
    pub mqtt_port: Option<u16>,
    /// HTTP port, when served.
    pub http_port: Option<u16>,
    /// Load reported by the instance (`ProcessorTime`; see [`crate::Instance::with_load`]): read by
    /// the `least_resource` selector, lower is less busy.
    pub processor_time: Option<f64>,
    /// Weight for weighted selection (`Wt`); absent means 1.
    pub weight: Option<u32>,
    /// Timestamp (`Tp`) set by the publisher: **seconds** since the Unix epoch, as Surging writes
    /// it (Surging sets it only beside a weight).
    pub timestamp: Option<i64>,
}

impl Address {
    /// An address with just a host and a port.
    pub fn new(ip: impl Into<String>, port: u16) -> Self {
        Address {
            ip: ip.into(),
            port,
            wan_ip: None,
            ws_port: None,
            mqtt_port: None,
            http_port: None,
            processor_time: None,
            weight: None,
            timestamp: None,
        }
    }

    /// Parses `host:port`, `[v6]:port` or `v6-literal:port` (the last colon separates the port).
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || Error::invalid_input(format!("address {text:?} is not HOST:PORT"));
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, port) = rest.split_once("]:").ok_or_else(bad)?;
            (host, port)
        } else {
            text.rsplit_once(':').ok_or_else(bad)?
        };
        let port: u16 = port.parse().map_err(|_| bad())?;
        let address = Address::new(host, port);
        address.validate()?;
        Ok(address)
    }

    /// Checks the strict rules: non-empty host, port 1-65535.
    pub fn validate(&self) -> Result<()> {
        if self.ip.trim().is_empty() {
            return Err(Error::invalid_input("address has an empty host"));
        }
        if self.port == 0 {
            return Err(Error::invalid_input(format!(
                "address {} has port 0 (must be 1-65535)",
                self.ip
            )));
        }
        Ok(())
    }

    /// Whether two addresses name the same endpoint (host and port).
    pub fn same_endpoint(&self, other: &Address) -> bool {
        self.port == other.port && self.ip.eq_ignore_ascii_case(&other.ip)
    }
}

impl fmt::Display for Address {
    /// `host:port`, with IPv6 literals in brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ip.contains(':') {
            write!(f, "[{}]:{}", self.ip, self.port)
        } else {
            write!(f, "{}:{}", self.ip, self.port)
        }
    }
}

/// What a route is: its service id, route path, token and metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceDescriptor {
    /// Service id, e.g. `Surging.IModuleServices.Common.IUserService.GetUserName_id`.
    pub id: String,
    /// Route path, e.g. `api/user/getusername`.
    pub route_path: String,
    /// Access token published with the route, if any.
    pub token: Option<String>,
    /// Free-form metadata (`HttpMethod`, `EnableAuthorization`, ...), kept as JSON.
    pub metadata: Metadata,
}

impl ServiceDescriptor {
    /// A descriptor with an id and a route path, no token and no metadata.
    pub fn new(id: impl Into<String>, route_path: impl Into<String>) -> Self {
        ServiceDescriptor {
            id: id.into(),
            route_path: route_path.into(),
            token: None,
            metadata: Metadata::new(),
        }
    }

    /// Sets a metadata entry (builder style).
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.metadata.insert(key, value);
        self
    }

    /// Sets the token (builder style).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }
}

/// A route: a descriptor plus every address that serves it.
///
/// Addresses are shared: routes decoded from a registry hold one copy of each distinct address
/// (an instance serving 300 routes is stored once), which the resolver's endpoints share too.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRoute {
    /// What is served.
    pub descriptor: ServiceDescriptor,
    /// Where it is served.
    pub addresses: Vec<Arc<Address>>,
}

impl ServiceRoute {
    /// A route from a descriptor and its addresses.
    pub fn new(descriptor: ServiceDescriptor, addresses: Vec<Address>) -> Self {
        Self::shared(descriptor, addresses.into_iter().map(Arc::new).collect())
    }

    /// A route from a descriptor and addresses already shared.
    pub fn shared(descriptor: ServiceDescriptor, addresses: Vec<Arc<Address>>) -> Self {
        ServiceRoute {
            descriptor,
            addresses,
        }
    }

    /// The service id (shorthand for `descriptor.id`).
    pub fn id(&self) -> &str {
        &self.descriptor.id
    }

    /// The route path (shorthand for `descriptor.route_path`).
    pub fn route_path(&self) -> &str {
        &self.descriptor.route_path
    }
}
