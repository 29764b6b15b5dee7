//! Maps that every request looks up.
//!
//! The standard library's SipHash resists collision attacks on maps whose
//! keys come from clients. These maps hold keys from the configuration:
//! tenant paths and names, tenant addresses. A request only looks keys
//! up, so it cannot make such a map degrade. A faster hash with a
//! per-process random seed serves them.

use std::collections::HashMap;

/// A `HashMap` for keys that the configuration decides.
pub type LookupMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
