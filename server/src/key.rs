//! [`Key`]: a key as the index keeps it, with short keys inline.
//!
//! The index holds every key twice (its hash map and a queue), so a key
//! that lived in malloc was shared through an `Rc`. But a malloc'd key is a
//! small block among others: after clients delete keys at random, the blocks
//! left keep most of malloc's pages resident, and `malloc_trim` cannot give
//! those pages back. Keys of up to [`INLINE`] bytes (`key:000000123456` is
//! 16) are therefore kept in the `Key` itself, in the index's own tables,
//! and never touch malloc; longer ones stay shared in an `Rc`.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::rc::Rc;

/// The longest key kept inline.
pub const INLINE: usize = 22;

/// A key's bytes: inline when short, else shared. 24 bytes either way.
#[derive(Clone)]
pub enum Key {
    /// `bytes[..len]`.
    Inline { len: u8, bytes: [u8; INLINE] },
    /// A longer key, shared by the index's copies.
    Shared(Rc<[u8]>),
}

const _: () = assert!(std::mem::size_of::<Key>() == 24);

impl Key {
    /// The key of `bytes`.
    pub fn new(bytes: &[u8]) -> Key {
        if bytes.len() <= INLINE {
            let mut inline = [0; INLINE];
            inline[..bytes.len()].copy_from_slice(bytes);
            Key::Inline {
                len: bytes.len() as u8,
                bytes: inline,
            }
        } else {
            Key::Shared(Rc::from(bytes))
        }
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Key::Shared(rc) => rc,
        }
    }

    /// Bytes the key takes from malloc besides its 24: none inline; for a
    /// shared key, two counts and the bytes, plus malloc's header, in
    /// 16-byte steps.
    pub fn heap_bytes(&self) -> usize {
        match self {
            Key::Inline { .. } => 0,
            Key::Shared(rc) => (16 + rc.len() + 8).next_multiple_of(16).max(32),
        }
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

// Equality and hashing are the bytes', so that a map keyed by `Key` finds
// an entry from a `&[u8]` (`Borrow`'s contract).
impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({:?})", String::from_utf8_lossy(self.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn short_keys_are_inline_and_long_ones_shared() {
        let short = Key::new(b"key:000000123456");
        let edge = Key::new(&[7; INLINE]);
        let long = Key::new(&[7; INLINE + 1]);
        assert!(matches!(short, Key::Inline { len: 16, .. }));
        assert!(matches!(edge, Key::Inline { .. }));
        assert!(matches!(long, Key::Shared(_)));
        assert_eq!(short.as_bytes(), b"key:000000123456");
        assert_eq!(long.as_bytes(), &[7; INLINE + 1]);
        assert_eq!((short.heap_bytes(), long.heap_bytes()), (0, 48));
        assert_eq!(Key::new(b"").as_bytes(), b"");
    }

    #[test]
    fn a_map_of_keys_finds_them_by_their_bytes() {
        let mut map = HashMap::new();
        for (i, k) in [&b"a"[..], b"", &[1; 40], &[2; INLINE]].iter().enumerate() {
            map.insert(Key::new(k), i);
        }
        assert_eq!(map.get(&b"a"[..]), Some(&0));
        assert_eq!(map.get(&b""[..]), Some(&1));
        assert_eq!(map.get(&[1u8; 40][..]), Some(&2));
        assert_eq!(map.get(&[2u8; INLINE][..]), Some(&3));
        assert_eq!(map.get(&b"b"[..]), None);
        // Same bytes, different lengths of padding: different keys.
        assert_ne!(Key::new(b"ab"), Key::new(b"ab\0"));
    }
}
