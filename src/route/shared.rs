//! Edits of a value that every instance of a service id shares (Surging's layout, one value per
//! service id): one instance's address put in or taken out, every other address kept as it was.
//! Values are written in the form every Surging reader takes ([`encode_route_for_surging`]).

use std::sync::Arc;

use super::codec::{decode_route, encode_route_for_surging};
use super::model::{Address, ServiceDescriptor, ServiceRoute};
use crate::error::Result;

/// What an edit does to a shared value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Edit {
    /// Nothing to write.
    Unchanged,
    /// Write this value.
    Put(Vec<u8>),
    /// The last address went: delete the key.
    Delete,
}

/// Whether the value holds `address` as writing it would (its host and port, and every detail,
/// its load included).
#[cfg_attr(not(any(feature = "etcd", feature = "consul")), allow(dead_code))]
pub(crate) fn holds(current: &[u8], address: &Address) -> bool {
    holds_any(current, |a| same_as_written(a, address))
}

/// Whether the value holds an address `wanted` picks (decoding it only, writing nothing).
#[cfg_attr(not(any(feature = "etcd", feature = "consul")), allow(dead_code))]
pub(crate) fn holds_any(current: &[u8], wanted: impl Fn(&Address) -> bool) -> bool {
    decode_route(current)
        .map(|route| route.addresses.iter().any(|a| wanted(a)))
        .unwrap_or(false)
}

/// The value with `address` in it under `descriptor`: an entry with the same host and port is
/// replaced in its place (as Surging does), the others are kept. `Unchanged` when it is there already, as
/// written, under the same descriptor. A value that does not parse is replaced, with a warning.
#[cfg_attr(not(any(feature = "etcd", feature = "consul")), allow(dead_code))]
pub(crate) fn with_address(
    current: Option<&[u8]>,
    descriptor: &ServiceDescriptor,
    address: &Address,
) -> Result<Edit> {
    let existing = match current.map(decode_route) {
        None => None,
        Some(Ok(route)) => Some(route),
        Some(Err(err)) => {
            tracing::warn!(service_id = %descriptor.id, error = %err, "replacing a shared route value that does not parse");
            None
        }
    };
    let mut addresses: Vec<Arc<Address>> = Vec::new();
    if let Some(route) = &existing {
        if route.descriptor == *descriptor
            && route.addresses.iter().any(|a| same_as_written(a, address))
            && route
                .addresses
                .iter()
                .filter(|a| a.same_endpoint(address))
                .count()
                == 1
        {
            return Ok(Edit::Unchanged);
        }
        // In the place of the first entry for it (a new load keeps the order), others kept.
        let mut placed = false;
        for a in &route.addresses {
            if !a.same_endpoint(address) {
                addresses.push(a.clone());
            } else if !placed {
                addresses.push(Arc::new(address.clone()));
                placed = true;
            }
        }
        if placed {
            let route = ServiceRoute::shared(descriptor.clone(), addresses);
            return Ok(Edit::Put(encode_route_for_surging(&route)?));
        }
    }
    addresses.push(Arc::new(address.clone()));
    let route = ServiceRoute::shared(descriptor.clone(), addresses);
    Ok(Edit::Put(encode_route_for_surging(&route)?))
}

/// Whether `read` is what writing `address` gives back (the compatible form writes `WsPort`
/// and `MqttPort` as 0 when unset).
#[cfg_attr(not(any(feature = "etcd", feature = "consul")), allow(dead_code))]
fn same_as_written(read: &Address, address: &Address) -> bool {
    let unset_zero = |port: Option<u16>| port.filter(|p| *p != 0);
    read.same_endpoint(address)
        && unset_zero(read.ws_port) == unset_zero(address.ws_port)
        && unset_zero(read.mqtt_port) == unset_zero(address.mqtt_port)
        && read.wan_ip == address.wan_ip
        && read.http_port == address.http_port
        && read.processor_time == address.processor_time
        && read.weight == address.weight
        && read.timestamp == address.timestamp
}

/// The value without the addresses `doomed` picks, and how many it took out. A value that does
/// not parse is left alone.
pub(crate) fn without(current: &[u8], doomed: impl Fn(&Address) -> bool) -> Result<(Edit, usize)> {
    let Ok(mut route) = decode_route(current) else {
        return Ok((Edit::Unchanged, 0));
    };
    let before = route.addresses.len();
    route.addresses.retain(|a| !doomed(a));
    let removed = before - route.addresses.len();
    let edit = match (removed, route.addresses.is_empty()) {
        (0, _) => Edit::Unchanged,
        (_, true) => Edit::Delete,
        (_, false) => Edit::Put(encode_route_for_surging(&route)?),
    };
    Ok((edit, removed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor() -> ServiceDescriptor {
        ServiceDescriptor::new("Svc.IUserService.Get", "api/user/get").with_token("t0k")
    }

    fn put(edit: Edit) -> Vec<u8> {
        match edit {
            Edit::Put(bytes) => bytes,
            other => panic!("expected a put, got {other:?}"),
        }
    }

    fn ports(bytes: &[u8]) -> Vec<u16> {
        decode_route(bytes)
            .unwrap()
            .addresses
            .iter()
            .map(|a| a.port)
            .collect()
    }

    #[test]
    fn an_address_joins_the_others_and_replaces_its_own_endpoint() {
        let first = put(with_address(None, &descriptor(), &Address::new("10.0.0.1", 1)).unwrap());
        let second =
            put(with_address(Some(&first), &descriptor(), &Address::new("10.0.0.2", 2)).unwrap());
        assert_eq!(ports(&second), [1, 2]);
        let mut weighted = Address::new("10.0.0.1", 1);
        weighted.weight = Some(5);
        let replaced = put(with_address(Some(&second), &descriptor(), &weighted).unwrap());
        let route = decode_route(&replaced).unwrap();
        assert_eq!(ports(&replaced), [1, 2], "replaced in its place");
        assert_eq!(route.addresses[0].weight, Some(5));
        assert_eq!(
            with_address(Some(&replaced), &descriptor(), &weighted).unwrap(),
            Edit::Unchanged
        );
        assert!(holds(&replaced, &Address::new("10.0.0.2", 2)));
        assert!(!holds(&replaced, &Address::new("10.0.0.3", 2)));
    }

    #[test]
    fn values_are_written_for_every_surging_reader() {
        let bytes = put(with_address(None, &descriptor(), &Address::new("10.0.0.1", 1)).unwrap());
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let entry = &value["AddressDescriptors"][0];
        assert_eq!(
            entry["Type"],
            "Surging.Core.CPlatform.Address.IpAddressModel"
        );
        let address: serde_json::Value =
            serde_json::from_str(entry["Value"].as_str().unwrap()).unwrap();
        assert_eq!(address["Token"], "t0k");
        assert_eq!(address["WsPort"], 0);
        assert_eq!(address["MqttPort"], 0);
        assert_eq!(value["ServiceDescriptor"]["Token"], "t0k");
    }

    #[test]
    fn taking_out_the_last_address_deletes_and_others_stay() {
        let one = put(with_address(None, &descriptor(), &Address::new("10.0.0.1", 1)).unwrap());
        let two =
            put(with_address(Some(&one), &descriptor(), &Address::new("10.0.0.2", 2)).unwrap());
        let (edit, removed) = without(&two, |a| a.port == 1).unwrap();
        assert_eq!(removed, 1);
        assert_eq!(ports(&put(edit)), [2]);
        assert_eq!(without(&one, |a| a.port == 1).unwrap(), (Edit::Delete, 1));
        assert_eq!(
            without(&one, |a| a.port == 9).unwrap(),
            (Edit::Unchanged, 0)
        );
        assert_eq!(
            without(b"{not json", |_| true).unwrap(),
            (Edit::Unchanged, 0)
        );
    }
}
