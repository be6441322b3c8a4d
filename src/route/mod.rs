//! Routes: the model, its Surging-compatible wire form, route-path templates, service ids and
//! the registry key layout.

mod codec;
mod intern;
mod key;
mod merge;
mod metadata;
mod model;
mod set;
mod shared;
mod template;

#[cfg(any(feature = "etcd", feature = "consul"))]
pub(crate) use codec::RunDecoder;
pub use codec::{
    decode_descriptors, decode_route, decode_route_value, encode_route, encode_route_for_surging,
    encode_route_value, MAX_VALUE_BYTES,
};
pub use key::{
    instance_id, parse_instance_id, validate_key, validate_service_id, EntryKey, KeyLayout,
    LayoutStyle, DEFAULT_PREFIX,
};
#[cfg(any(feature = "etcd", feature = "consul"))]
pub(crate) use merge::decode_listed;
#[cfg(any(feature = "etcd", feature = "consul"))]
pub(crate) use merge::Group;
pub(crate) use merge::{decode_entry, RouteEntries};
pub use metadata::Metadata;
pub use model::{Address, ServiceDescriptor, ServiceRoute};
pub(crate) use set::RouteSet;
#[cfg(any(feature = "etcd", feature = "consul"))]
pub(crate) use shared::{holds, holds_any, with_address};
pub(crate) use shared::{without, Edit};
pub use template::{parameter_name, service_id, service_short_name, RouteTemplate};
