//! The Surging-compatible wire form of a [`ServiceRoute`].
//!
//! Writes the current form (PascalCase, compact, the address as its own JSON string under `Value`):
//! `{"AddressDescriptors":[{"Value":"{\"Ip\":..,\"Port\":..}"}],"ServiceDescriptor":{"Id":..,..}}`.
//! Reads that form and the older one (a `Type` beside `Value`, `Token` / `DisableAuth` inside the
//! address), with or without a leading UTF-8 BOM. Unknown fields are ignored.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::metadata::Metadata;
use super::model::{Address, ServiceDescriptor, ServiceRoute};
use crate::error::{Error, Result};

/// Largest value accepted or written for one registry entry (Consul's KV limit).
pub const MAX_VALUE_BYTES: usize = 512 * 1024;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

#[derive(Deserialize)]
struct WireRoute<'a> {
    #[serde(
        rename = "AddressDescriptors",
        alias = "addressDescriptors",
        default,
        borrow
    )]
    addresses: Option<Vec<WireAddressDescriptor<'a>>>,
    /// Kept as raw JSON text and parsed after: a run of values that repeat one descriptor
    /// parses it once (see [`RunDecoder`]).
    #[serde(rename = "ServiceDescriptor", alias = "serviceDescriptor", borrow)]
    descriptor: &'a RawValue,
}

#[derive(Deserialize)]
struct WireAddressDescriptor<'a> {
    #[serde(rename = "Type", alias = "type", default)]
    _type: Option<&'a RawValue>,
    /// The address as a JSON string (Surging's form); an inline object is accepted too. Kept as
    /// raw JSON text here and parsed once, straight into the address.
    #[serde(rename = "Value", alias = "value", default, borrow)]
    value: Option<&'a RawValue>,
}

#[derive(Serialize, Deserialize)]
struct WireDescriptor {
    #[serde(rename = "Id", alias = "id", default)]
    id: Option<String>,
    #[serde(
        rename = "Token",
        alias = "token",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    token: Option<String>,
    #[serde(rename = "RoutePath", alias = "routePath", default)]
    route_path: Option<String>,
    #[serde(rename = "Metadatas", alias = "metadatas", default)]
    metadata: Option<Map<String, Value>>,
}

#[derive(Serialize, Deserialize)]
struct WireAddress {
    #[serde(rename = "Ip", alias = "ip", default)]
    ip: Option<String>,
    #[serde(rename = "Port", alias = "port", default)]
    port: Option<i64>,
    #[serde(
        rename = "WanIp",
        alias = "wanIp",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    wan_ip: Option<String>,
    #[serde(
        rename = "WsPort",
        alias = "wsPort",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    ws_port: Option<i64>,
    #[serde(
        rename = "MqttPort",
        alias = "mqttPort",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    mqtt_port: Option<i64>,
    #[serde(
        rename = "HttpPort",
        alias = "httpPort",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    http_port: Option<i64>,
    #[serde(
        rename = "ProcessorTime",
        alias = "processorTime",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    processor_time: Option<f64>,
    #[serde(
        rename = "Wt",
        alias = "wt",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    weight: Option<serde_json::Number>,
    #[serde(
        rename = "Tp",
        alias = "tp",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    timestamp: Option<i64>,
    /// The service token, inside the address as the older form kept it (written in the
    /// `surging` layout so that older Surging readers find it).
    #[serde(
        rename = "Token",
        alias = "token",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    token: Option<String>,
}

/// Decodes one registry value (bytes, optionally BOM-prefixed) into a route.
///
/// The descriptor must be valid (non-empty id); addresses that fail the strict checks are skipped
/// with a warning so one bad address does not hide the others.
pub fn decode_route(bytes: &[u8]) -> Result<ServiceRoute> {
    from_wire(parse_wire(bytes)?)
}

/// Parses a registry value (optionally BOM-prefixed) in its wire form.
fn parse_wire(bytes: &[u8]) -> Result<WireRoute<'_>> {
    let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    check_size(bytes.len())?;
    serde_json::from_slice(bytes)
        .map_err(|e| Error::malformed(format!("route JSON does not parse: {e}")).with_source(e))
}

/// Decodes a route from an already-parsed JSON value (used by the file backend).
pub fn decode_route_value(value: Value) -> Result<ServiceRoute> {
    let text = value.to_string();
    let wire: WireRoute = serde_json::from_str(&text)
        .map_err(|e| Error::malformed(format!("route JSON has a bad shape: {e}")).with_source(e))?;
    from_wire(wire)
}

/// Encodes a route in the current Surging form, refusing values over [`MAX_VALUE_BYTES`].
pub fn encode_route(route: &ServiceRoute) -> Result<Vec<u8>> {
    encode_route_in(route, Form::Current)
}

/// Encodes a route as Surging's readers of every age take it (the `surging` layout's shared
/// values): `Type` beside each `Value`, the route's token also inside each address, `WsPort` and
/// `MqttPort` always written. Refuses values over [`MAX_VALUE_BYTES`].
pub fn encode_route_for_surging(route: &ServiceRoute) -> Result<Vec<u8>> {
    encode_route_in(route, Form::Compatible)
}

/// Which of Surging's forms a value is written in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    /// Today's: the address alone under `Value`.
    Current,
    /// Readable by Surging before mid-2018 too.
    Compatible,
}

/// The `Type` Surging names beside each address value.
const ADDRESS_TYPE: &str = "Surging.Core.CPlatform.Address.IpAddressModel";

fn encode_route_in(route: &ServiceRoute, form: Form) -> Result<Vec<u8>> {
    let bytes = serde_json::to_vec(&to_wire(route, form)?).map_err(|e| {
        Error::invalid_input(format!("route {} cannot be encoded: {e}", route.id()))
    })?;
    check_size(bytes.len())?;
    Ok(bytes)
}

/// Encodes a route as a JSON value in the current Surging form (no size limit: for whole-file
/// backends, where [`MAX_VALUE_BYTES`] does not apply).
pub fn encode_route_value(route: &ServiceRoute) -> Result<Value> {
    let value = serde_json::to_value(to_wire(route, Form::Current)?).map_err(|e| {
        Error::invalid_input(format!("route {} cannot be encoded: {e}", route.id()))
    })?;
    Ok(value)
}

/// Decodes a JSON array of descriptors (the CLI's `--routes` file uses this shape).
pub fn decode_descriptors(bytes: &[u8]) -> Result<Vec<ServiceDescriptor>> {
    let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    let wire: Vec<WireDescriptor> = serde_json::from_slice(bytes).map_err(|e| {
        Error::invalid_input(format!(
            "expected a JSON array of ServiceDescriptor objects: {e}"
        ))
    })?;
    wire.into_iter().map(descriptor_from_wire).collect()
}

fn check_size(len: usize) -> Result<()> {
    if len > MAX_VALUE_BYTES {
        return Err(Error::invalid_input(format!(
            "value of {len} bytes is over the {MAX_VALUE_BYTES}-byte limit"
        )));
    }
    Ok(())
}

fn descriptor_from_wire(wire: WireDescriptor) -> Result<ServiceDescriptor> {
    let id = wire.id.unwrap_or_default();
    if id.trim().is_empty() {
        return Err(Error::malformed("service descriptor has no Id"));
    }
    Ok(ServiceDescriptor {
        id,
        route_path: wire.route_path.unwrap_or_default(),
        token: wire.token,
        metadata: wire
            .metadata
            .map(|map| Metadata::shared(super::intern::metadata(map)))
            .unwrap_or_default(),
    })
}

fn from_wire(wire: WireRoute) -> Result<ServiceRoute> {
    let mut descriptor = parse_descriptor(wire.descriptor)?;
    let (addresses, token) = addresses_from_wire(wire.addresses, &descriptor.id);
    if descriptor.token.is_none() {
        descriptor.token = token;
    }
    Ok(ServiceRoute::shared(descriptor, addresses))
}

fn parse_descriptor(raw: &RawValue) -> Result<ServiceDescriptor> {
    let wire: WireDescriptor = serde_json::from_str(raw.get()).map_err(|e| {
        Error::malformed(format!("service descriptor does not parse: {e}")).with_source(e)
    })?;
    descriptor_from_wire(wire)
}

/// The valid addresses (a malformed one is skipped with a warning naming `id`) and the first
/// token an address carried (the older form kept the service token there).
fn addresses_from_wire(
    entries: Option<Vec<WireAddressDescriptor<'_>>>,
    id: &str,
) -> (Vec<Arc<Address>>, Option<String>) {
    let entries = entries.unwrap_or_default();
    // Exactly the room needed: most values hold one address, and a grown vector has four.
    let mut addresses = Vec::with_capacity(entries.len());
    let mut first_token = None;
    for entry in entries {
        match address_from_value(entry.value) {
            Ok((address, token)) => {
                if first_token.is_none() {
                    first_token = token;
                }
                addresses.push(super::intern::address(address));
            }
            Err(err) => {
                tracing::warn!(service_id = %id, error = %err, "skipping malformed address");
            }
        }
    }
    (addresses, first_token)
}

/// A route decoded as one of a run of registry values (a listing, in key order).
#[derive(Debug)]
#[cfg_attr(not(any(feature = "etcd", feature = "consul")), allow(dead_code))]
pub(crate) struct Decoded {
    /// Its descriptor, or `None` when the value's descriptor text is the previous value's (as
    /// it is for every instance of a service id after the first).
    pub(crate) descriptor: Option<ServiceDescriptor>,
    pub(crate) addresses: Vec<Arc<Address>>,
}

/// Decodes a run of registry values, parsing a descriptor only when its text differs from the
/// previous value's: in wayfinder's layout a route's instances all write the same one, so a
/// listing parses each route's descriptor once instead of once per instance.
#[derive(Default)]
#[cfg_attr(not(any(feature = "etcd", feature = "consul")), allow(dead_code))]
pub(crate) struct RunDecoder {
    /// The last value's descriptor text and service id; empty when it cannot be repeated.
    previous: String,
    previous_id: String,
}

#[cfg_attr(not(any(feature = "etcd", feature = "consul")), allow(dead_code))]
impl RunDecoder {
    /// Decodes one value (bytes, optionally BOM-prefixed).
    pub(crate) fn decode(&mut self, bytes: &[u8]) -> Result<Decoded> {
        let wire = parse_wire(bytes)?;
        let raw = wire.descriptor.get();
        let mut descriptor = if !self.previous.is_empty() && self.previous == raw {
            None
        } else {
            Some(parse_descriptor(wire.descriptor)?)
        };
        let id = descriptor.as_ref().map_or(&self.previous_id, |d| &d.id);
        let (addresses, token) = addresses_from_wire(wire.addresses, id);
        match (&mut descriptor, token) {
            // Repeated, as the previous value wrote it.
            (None, None) => {}
            (Some(descriptor), None) => {
                self.previous.clear();
                self.previous.push_str(raw);
                self.previous_id.clone_from(&descriptor.id);
            }
            // A token carried by an address (the older form) makes the descriptor the value's
            // own, and the next value parses its own.
            (own, Some(token)) => {
                let mut parsed = match own.take() {
                    Some(parsed) => parsed,
                    None => parse_descriptor(wire.descriptor)?,
                };
                if parsed.token.is_none() {
                    parsed.token = Some(token);
                }
                *own = Some(parsed);
                self.previous.clear();
                self.previous_id.clear();
            }
        }
        Ok(Decoded {
            descriptor,
            addresses,
        })
    }

    /// Forgets the last value (one the caller skipped): the next parses its own descriptor.
    pub(crate) fn forget(&mut self) {
        self.previous.clear();
        self.previous_id.clear();
    }

    /// The service id of the last value decoded, whatever its descriptor was.
    pub(crate) fn id_of<'a>(&'a self, decoded: &'a Decoded) -> &'a str {
        decoded
            .descriptor
            .as_ref()
            .map_or(&self.previous_id, |descriptor| &descriptor.id)
    }
}

fn address_from_value(value: Option<&RawValue>) -> Result<(Address, Option<String>)> {
    let raw = value
        .map(RawValue::get)
        .filter(|text| *text != "null")
        .ok_or_else(|| Error::malformed("address descriptor has no Value"))?;
    let parsed = if raw.starts_with('"') {
        serde_json::from_str::<std::borrow::Cow<'_, str>>(raw)
            .and_then(|text| serde_json::from_str::<WireAddress>(&text))
    } else {
        serde_json::from_str::<WireAddress>(raw)
    };
    let wire =
        parsed.map_err(|e| Error::malformed(format!("address value does not parse: {e}")))?;
    let ip = wire
        .ip
        .filter(|ip| !ip.trim().is_empty())
        .ok_or_else(|| Error::malformed("address has no Ip"))?;
    let port = match wire.port {
        Some(port @ 1..=65535) => port as u16,
        other => {
            return Err(Error::malformed(format!(
                "address {ip} has port {other:?} (must be 1-65535)"
            )))
        }
    };
    let address = Address {
        ip,
        port,
        wan_ip: wire.wan_ip,
        ws_port: optional_port("WsPort", wire.ws_port)?,
        mqtt_port: optional_port("MqttPort", wire.mqtt_port)?,
        http_port: optional_port("HttpPort", wire.http_port)?,
        processor_time: wire.processor_time,
        weight: wire
            .weight
            .and_then(|w| w.as_f64())
            .filter(|w| w.is_finite() && *w >= 0.0 && *w <= f64::from(u32::MAX))
            .map(|w| w.round() as u32),
        timestamp: wire.timestamp,
    };
    Ok((address, wire.token))
}

fn optional_port(name: &str, port: Option<i64>) -> Result<Option<u16>> {
    match port {
        None => Ok(None),
        Some(p @ 0..=65535) => Ok(Some(p as u16)),
        Some(p) => Err(Error::malformed(format!("{name} {p} is out of range"))),
    }
}

/// The current form, for writing: each address as its own JSON string under `Value`.
#[derive(Serialize)]
struct WireRouteOut {
    #[serde(rename = "AddressDescriptors")]
    addresses: Vec<WireAddressOut>,
    #[serde(rename = "ServiceDescriptor")]
    descriptor: WireDescriptor,
}

#[derive(Serialize)]
struct WireAddressOut {
    #[serde(rename = "Type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(rename = "Value")]
    value: String,
}

fn to_wire(route: &ServiceRoute, form: Form) -> Result<WireRouteOut> {
    let compatible = form == Form::Compatible;
    let d = &route.descriptor;
    if d.id.trim().is_empty() {
        return Err(Error::invalid_input("service descriptor has an empty id"));
    }
    let mut addresses = Vec::with_capacity(route.addresses.len());
    for address in &route.addresses {
        address.validate()?;
        let wire = WireAddress {
            ip: Some(address.ip.clone()),
            port: Some(i64::from(address.port)),
            wan_ip: address.wan_ip.clone(),
            // A Surging host always writes these two, 0 when unset.
            ws_port: address.ws_port.or(compatible.then_some(0)).map(i64::from),
            mqtt_port: address.mqtt_port.or(compatible.then_some(0)).map(i64::from),
            http_port: address.http_port.map(i64::from),
            processor_time: address.processor_time,
            weight: address.weight.map(serde_json::Number::from),
            timestamp: address.timestamp,
            token: d.token.clone().filter(|_| compatible),
        };
        let value = serde_json::to_string(&wire).map_err(|e| {
            Error::invalid_input(format!("address {address} cannot be encoded: {e}"))
        })?;
        addresses.push(WireAddressOut {
            kind: compatible.then_some(ADDRESS_TYPE),
            value,
        });
    }
    Ok(WireRouteOut {
        addresses,
        descriptor: WireDescriptor {
            id: Some(d.id.clone()),
            token: d.token.clone(),
            route_path: Some(d.route_path.clone()),
            metadata: Some((*d.metadata).clone()),
        },
    })
}
