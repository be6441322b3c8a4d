//! The shared file's contents and the edits writers make to it.
//!
//! ```json
//! {"Routes":{"<service-id>":{"AddressDescriptors":[..],"ServiceDescriptor":{..}}},
//!  "Instances":{"<instance-id>":{"Expires":1763740000000,"Lease":"<random>"}}}
//! ```
//! `Routes` holds each route in Surging's form, keyed by service id. An address whose instance has a
//! record in `Instances` lives until that record expires; an address without one (written by Surging
//! or by hand) is static. Surging's own file, a bare JSON array of routes with a BOM, is read too and
//! converted on the first write.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::manager::Instance;
use crate::registration::Rewrite;
use crate::route::{
    decode_route_value, encode_route_for_surging, encode_route_value, instance_id, Address,
    ServiceRoute,
};

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// One instance's liveness record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InstanceRecord {
    /// Heartbeat deadline, ms since the Unix epoch.
    #[serde(rename = "Expires")]
    pub expires: u64,
    /// Random token of the registration holding the record.
    #[serde(rename = "Lease")]
    pub lease: String,
    /// Set when a deregistration removed the instance's addresses while the record lives: its
    /// heartbeat must not write them back.
    #[serde(
        rename = "Removed",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub removed: bool,
}

/// The whole file, with each route kept as raw JSON so a malformed one is preserved, not lost.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct Document {
    #[serde(rename = "Routes", default)]
    routes: BTreeMap<String, Value>,
    #[serde(rename = "Instances", default)]
    instances: BTreeMap<String, Value>,
}

impl Document {
    /// How many routes the document holds, live or not.
    pub(crate) fn route_count(&self) -> usize {
        self.routes.len()
    }

    /// Parses the file's bytes: our object form, or Surging's bare array; a BOM is skipped.
    ///
    /// An empty (or all-blank) file is an error: it is what a torn write looks like.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self> {
        let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(Error::malformed("routes file is empty"));
        }
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            Error::malformed(format!("routes file does not parse: {e}")).with_source(e)
        })?;
        match value {
            Value::Array(items) => Ok(Self::from_surging_array(items)),
            Value::Object(_) => serde_json::from_value(value).map_err(|e| {
                Error::malformed(format!("routes file has a bad shape: {e}")).with_source(e)
            }),
            _ => Err(Error::malformed(
                "routes file is neither a JSON object nor an array of routes",
            )),
        }
    }

    fn from_surging_array(items: Vec<Value>) -> Self {
        let mut doc = Document::default();
        for item in items {
            let id = item
                .pointer("/ServiceDescriptor/Id")
                .and_then(Value::as_str)
                .map(str::to_owned);
            match id {
                Some(id) if !id.is_empty() => {
                    doc.routes.insert(id, item);
                }
                _ => tracing::warn!(
                    "skipping a route without ServiceDescriptor.Id in the routes file"
                ),
            }
        }
        doc
    }

    /// The file's bytes (pretty JSON, no BOM).
    pub(crate) fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::invalid_input(format!("routes file cannot be encoded: {e}")))?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Surging's own file: a BOM and a JSON array of the routes, each as every Surging reader
    /// takes it; the liveness records are left out (see [`Document::records_to_bytes`]). A route
    /// that does not decode is written as it was.
    pub(crate) fn to_surging_bytes(&self) -> Result<Vec<u8>> {
        let routes: Vec<Value> = self
            .routes
            .values()
            .map(|value| {
                decode_route_value(value.clone())
                    .and_then(|route| encode_route_for_surging(&route))
                    .and_then(|bytes| {
                        serde_json::from_slice(&bytes).map_err(|e| {
                            Error::invalid_input(format!("route cannot be encoded: {e}"))
                        })
                    })
                    .unwrap_or_else(|_| value.clone())
            })
            .collect();
        let mut bytes = UTF8_BOM.to_vec();
        serde_json::to_writer_pretty(&mut bytes, &routes)
            .map_err(|e| Error::invalid_input(format!("routes file cannot be encoded: {e}")))?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// The liveness records alone, `{"Instances": {..}}`, for the file beside Surging's.
    pub(crate) fn records_to_bytes(&self) -> Result<Vec<u8>> {
        let records = Document {
            routes: BTreeMap::new(),
            instances: self.instances.clone(),
        };
        records.to_bytes()
    }

    /// Takes the liveness records kept beside Surging's file; unreadable ones are dropped with a
    /// warning (their instances register again).
    pub(crate) fn adopt_records(&mut self, bytes: &[u8]) {
        match Document::parse(bytes) {
            Ok(records) => self.instances = records.instances,
            Err(err) => {
                tracing::warn!(error = %err, "dropping unreadable liveness records");
            }
        }
    }

    fn record(&self, instance_id: &str) -> Option<InstanceRecord> {
        let value = self.instances.get(instance_id)?;
        serde_json::from_value(value.clone()).ok()
    }

    /// The live routes at `now_ms`: expired instances' addresses left out, empty routes dropped.
    /// Malformed routes are skipped with a warning. Also returns the next expiry still ahead.
    pub(crate) fn live_routes(&self, now_ms: u64) -> (BTreeMap<String, ServiceRoute>, Option<u64>) {
        let mut next_expiry: Option<u64> = None;
        let mut live = BTreeMap::new();
        for (id, value) in &self.routes {
            let mut route = match self.decode(id, value) {
                Some(route) => route,
                None => continue,
            };
            route.addresses.retain(|address| {
                let Some(record) = instance_id(address).ok().and_then(|i| self.record(&i)) else {
                    return true;
                };
                if record.expires > now_ms {
                    next_expiry =
                        Some(next_expiry.map_or(record.expires, |n| n.min(record.expires)));
                    true
                } else {
                    false
                }
            });
            if !route.addresses.is_empty() {
                live.insert(id.clone(), route);
            }
        }
        (live, next_expiry)
    }

    fn decode(&self, id: &str, value: &Value) -> Option<ServiceRoute> {
        match decode_route_value(value.clone()) {
            Ok(route) if route.id() == id => Some(route),
            Ok(route) => {
                tracing::warn!(key = %id, found = %route.id(), "skipping route filed under another service id");
                None
            }
            Err(err) => {
                tracing::warn!(service_id = %id, error = %err, "skipping malformed route in routes file");
                None
            }
        }
    }

    /// Writes the instance's routes (its address in each) and its liveness record. Routes it no
    /// longer serves lose its address.
    pub(crate) fn put_instance(
        &mut self,
        instance: &Instance,
        record: InstanceRecord,
    ) -> Result<()> {
        let id = instance.id()?;
        self.remove_instance_addresses(std::slice::from_ref(&id), |service_id| {
            !instance.routes.iter().any(|d| d.id == service_id)
        });
        for descriptor in &instance.routes {
            let mut route = self
                .routes
                .get(&descriptor.id)
                .and_then(|value| self.decode(&descriptor.id, value))
                .unwrap_or_else(|| ServiceRoute::new(descriptor.clone(), Vec::new()));
            route.descriptor = descriptor.clone();
            route
                .addresses
                .retain(|a| !a.same_endpoint(&instance.address));
            route.addresses.push(instance.address.clone().into());
            self.routes
                .insert(descriptor.id.clone(), encode_route_value(&route)?);
        }
        self.set_record(&id, record);
        Ok(())
    }

    fn set_record(&mut self, instance_id: &str, record: InstanceRecord) {
        if let Ok(value) = serde_json::to_value(record) {
            self.instances.insert(instance_id.to_owned(), value);
        }
    }

    /// Extends the record's deadline if `lease` still holds it; `false` if it is gone.
    pub(crate) fn touch(&mut self, instance_id: &str, lease: &str, expires: u64) -> bool {
        match self.record(instance_id) {
            Some(record) if record.lease == lease => {
                self.set_record(instance_id, InstanceRecord { expires, ..record });
                true
            }
            _ => false,
        }
    }

    /// Removes the instance's addresses everywhere and its record, if `lease` still holds it.
    /// A newer registration of the same address (another lease) is left alone.
    pub(crate) fn remove_instance(&mut self, instance_id: &str, lease: &str) {
        if self.record(instance_id).is_some_and(|r| r.lease != lease) {
            return;
        }
        self.remove_instance_addresses(&[instance_id.to_owned()], |_| true);
        self.instances.remove(instance_id);
    }

    /// Removes these addresses from every route; their records stay, marked removed so that
    /// their heartbeats do not write them back. Returns how many were removed.
    pub(crate) fn remove_addresses(&mut self, addresses: &[Address]) -> Result<usize> {
        let ids = addresses
            .iter()
            .map(instance_id)
            .collect::<Result<Vec<_>>>()?;
        for id in &ids {
            if let Some(record) = self.record(id) {
                self.set_record(
                    id,
                    InstanceRecord {
                        removed: true,
                        ..record
                    },
                );
            }
        }
        Ok(self.remove_instance_addresses(&ids, |_| true))
    }

    /// The instance's routes to write back while `lease` holds its live record and no
    /// deregistration removed it: those that lack its address (edited out by hand, say), or
    /// with [`Rewrite::All`] those that lack it exactly as it is now.
    pub(crate) fn stale_routes<'a>(
        &self,
        instance: &'a Instance,
        lease: &str,
        which: Rewrite,
    ) -> Result<Vec<&'a crate::route::ServiceDescriptor>> {
        let id = instance.id()?;
        match self.record(&id) {
            Some(record) if record.lease == lease && !record.removed => {}
            _ => return Ok(Vec::new()),
        }
        Ok(instance
            .routes
            .iter()
            .filter(|descriptor| {
                let route = self
                    .routes
                    .get(&descriptor.id)
                    .and_then(|value| self.decode(&descriptor.id, value));
                !route.is_some_and(|r| {
                    r.addresses.iter().any(|a| match which {
                        Rewrite::Missing => a.same_endpoint(&instance.address),
                        Rewrite::All => **a == instance.address,
                    })
                })
            })
            .collect())
    }

    /// Writes the instance's address back into the routes that lack it (see
    /// [`Document::stale_routes`]); returns how many it wrote.
    pub(crate) fn heal(
        &mut self,
        instance: &Instance,
        lease: &str,
        which: Rewrite,
    ) -> Result<usize> {
        let missing: Vec<crate::route::ServiceDescriptor> = self
            .stale_routes(instance, lease, which)?
            .into_iter()
            .cloned()
            .collect();
        for descriptor in &missing {
            let mut route = self
                .routes
                .get(&descriptor.id)
                .and_then(|value| self.decode(&descriptor.id, value))
                .unwrap_or_else(|| ServiceRoute::new(descriptor.clone(), Vec::new()));
            // In its place if it is there (a new load), so the order of addresses holds.
            let address: Arc<Address> = instance.address.clone().into();
            match route
                .addresses
                .iter_mut()
                .find(|a| a.same_endpoint(&instance.address))
            {
                Some(slot) => *slot = address,
                None => route.addresses.push(address),
            }
            self.routes
                .insert(descriptor.id.clone(), encode_route_value(&route)?);
        }
        Ok(missing.len())
    }

    /// Drops every expired record and its addresses.
    pub(crate) fn prune(&mut self, now_ms: u64) {
        let expired: Vec<String> = self
            .instances
            .keys()
            .filter(|id| self.record(id).is_some_and(|r| r.expires <= now_ms))
            .cloned()
            .collect();
        if expired.is_empty() {
            return;
        }
        tracing::info!(instances = ?expired, "pruning expired instances from routes file");
        self.remove_instance_addresses(&expired, |_| true);
        for id in expired {
            self.instances.remove(&id);
        }
    }

    /// Empties the file: every route and every record.
    pub(crate) fn clear(&mut self) {
        self.routes.clear();
        self.instances.clear();
    }

    /// Removes the addresses of `instance_ids` from the routes `in_route` selects.
    fn remove_instance_addresses(
        &mut self,
        instance_ids: &[String],
        in_route: impl Fn(&str) -> bool,
    ) -> usize {
        let mut removed = 0;
        let ids: Vec<String> = self
            .routes
            .keys()
            .filter(|id| in_route(id))
            .cloned()
            .collect();
        for id in ids {
            let Some(mut route) = self.routes.get(&id).and_then(|v| self.decode(&id, v)) else {
                continue;
            };
            let before = route.addresses.len();
            route
                .addresses
                .retain(|a| instance_id(a).map_or(true, |i| !instance_ids.contains(&i)));
            if route.addresses.len() == before {
                continue;
            }
            removed += before - route.addresses.len();
            if route.addresses.is_empty() {
                self.routes.remove(&id);
            } else if let Ok(value) = encode_route_value(&route) {
                self.routes.insert(id, value);
            }
        }
        removed
    }
}
