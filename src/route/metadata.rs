//! [`Metadata`]: a route's free-form metadata, shared between routes that publish the same.

use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, LazyLock};

use serde_json::{Map, Value};

/// A route's metadata (`HttpMethod`, `EnableAuthorization`, ...) as a JSON object.
///
/// Reads go through `Deref` to the map. Routes decoded from a registry share one copy of each
/// distinct metadata (most routes publish one of a few), so a change goes through
/// [`Metadata::insert`] or [`Metadata::make_mut`], which copy it first when it is shared.
#[derive(Clone, PartialEq)]
pub struct Metadata(Arc<Map<String, Value>>);

static EMPTY: LazyLock<Arc<Map<String, Value>>> = LazyLock::new(Arc::default);

impl Metadata {
    /// Metadata with no entries (all empty metadata share one allocation).
    pub fn new() -> Self {
        Metadata(EMPTY.clone())
    }

    /// Sets an entry; returns the value it replaced.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) -> Option<Value> {
        self.make_mut().insert(key.into(), value.into())
    }

    /// The map, to change (copied first when shared).
    pub fn make_mut(&mut self) -> &mut Map<String, Value> {
        Arc::make_mut(&mut self.0)
    }

    /// Metadata already shared.
    pub(crate) fn shared(map: Arc<Map<String, Value>>) -> Self {
        Metadata(map)
    }
}

impl Default for Metadata {
    fn default() -> Self {
        Self::new()
    }
}

impl Deref for Metadata {
    type Target = Map<String, Value>;

    fn deref(&self) -> &Map<String, Value> {
        &self.0
    }
}

impl From<Map<String, Value>> for Metadata {
    fn from(map: Map<String, Value>) -> Self {
        Metadata(Arc::new(map))
    }
}

impl From<Metadata> for Map<String, Value> {
    /// The map (copied only when shared).
    fn from(metadata: Metadata) -> Self {
        Arc::unwrap_or_clone(metadata.0)
    }
}

impl<'a> IntoIterator for &'a Metadata {
    type Item = (&'a String, &'a Value);
    type IntoIter = serde_json::map::Iter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
