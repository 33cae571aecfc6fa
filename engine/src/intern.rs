//! Interned queue names, keys and message sources.
//!
//! Every message carries its queue name and the key it came from. Cloning a refcounted
//! `Bytes` for each would cost two atomic operations per message per field, so names are
//! interned once, when a consumer is built, into `&'static [u8]` shared by all messages.
//! The table only grows with *distinct* names ever configured in the process, which a
//! service has a handful of; it is never freed.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use crate::handler::{Source, SourceKind};

static TABLE: OnceLock<Mutex<HashSet<&'static [u8]>>> = OnceLock::new();
static SOURCES: OnceLock<Mutex<HashSet<&'static Source>>> = OnceLock::new();

/// The one `'static` copy of a message source (queue, key, level, position).
pub(crate) fn intern_source(
    kind: SourceKind,
    name: &[u8],
    key: &[u8],
    priority: u8,
    index: u32,
) -> &'static Source {
    let src = Source {
        name: intern(name),
        key: intern(key),
        priority,
        index,
        kind,
    };
    let table = SOURCES.get_or_init(|| Mutex::new(HashSet::new()));
    let mut t = match table.lock() {
        Ok(t) => t,
        // A panic while holding this lock cannot leave the set inconsistent.
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(s) = t.get(&src) {
        return s;
    }
    let s: &'static Source = Box::leak(Box::new(src));
    t.insert(s);
    s
}

/// The one `'static` copy of `name`.
pub(crate) fn intern(name: &[u8]) -> &'static [u8] {
    let table = TABLE.get_or_init(|| Mutex::new(HashSet::new()));
    let mut t = match table.lock() {
        Ok(t) => t,
        // A panic while holding this lock cannot leave the set inconsistent.
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(s) = t.get(name) {
        return s;
    }
    let s: &'static [u8] = Box::leak(name.to_vec().into_boxed_slice());
    t.insert(s);
    s
}

#[cfg(test)]
mod tests {
    use super::intern;

    #[test]
    fn same_name_same_storage() {
        let a = intern(b"jobs");
        let owned = String::from("jobs");
        let b = intern(owned.as_bytes());
        assert!(std::ptr::eq(a, b));
        assert_eq!(a, b"jobs");
        assert!(!std::ptr::eq(a, intern(b"other")));
    }
}
