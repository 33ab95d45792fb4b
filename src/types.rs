//! [`Types`]: a heap's registry of the types stored in it, so that a slot
//! names its type in 16 bits instead of a 64-bit `&'static TypeInfo`.
//!
//! Index 0 is `()`, the type of retired slots. A type gets the next index the
//! first time a value of it is allocated, and keeps it for the heap's life.

use core::any::TypeId;

use crate::object::{Object, TypeInfo};
use crate::table::UNIT_TYPE;

/// The types of one heap.
#[derive(Debug)]
pub(crate) struct Types {
    infos: Vec<&'static TypeInfo>,
    /// `ids[i] == infos[i].type_id`, kept apart so the check on every `get`
    /// is one load from a small array.
    ids: Vec<TypeId>,
    /// The type found last, and its index (allocation loops repeat a type).
    last: (TypeId, u16),
}

impl Types {
    pub(crate) fn new() -> Types {
        let unit: &'static TypeInfo = &<() as Object>::INFO;
        Types {
            infos: vec![unit],
            ids: vec![unit.type_id],
            last: (unit.type_id, UNIT_TYPE),
        }
    }

    /// The index of `info`'s type, registering it if new. `None` when the
    /// heap already holds 65 536 types.
    #[inline]
    pub(crate) fn index_of(&mut self, info: &'static TypeInfo) -> Option<u16> {
        if self.last.0 == info.type_id {
            return Some(self.last.1);
        }
        let index = match self.ids.iter().position(|&id| id == info.type_id) {
            Some(i) => i,
            None => {
                if self.infos.len() > usize::from(u16::MAX) {
                    return None;
                }
                self.infos.push(info);
                self.ids.push(info.type_id);
                self.infos.len() - 1
            }
        };
        let index = index as u16;
        self.last = (info.type_id, index);
        Some(index)
    }

    /// The index of `info`'s type if it is the one [`Types::index_of`]
    /// answered last (the common case of an allocation), else `None`.
    #[inline]
    pub(crate) fn last_index(&self, info: &'static TypeInfo) -> Option<u16> {
        (self.last.0 == info.type_id).then_some(self.last.1)
    }

    /// The type of index `ty` (an index this registry handed out).
    #[inline]
    pub(crate) fn info(&self, ty: u16) -> &'static TypeInfo {
        self.infos[usize::from(ty)]
    }

    /// The type of index `ty`, or `None` (no panic).
    #[inline]
    pub(crate) fn try_info(&self, ty: u16) -> Option<&'static TypeInfo> {
        self.infos.get(usize::from(ty)).copied()
    }

    /// Whether index `ty` is the type `T`. Never panics.
    #[inline]
    pub(crate) fn is<T: ?Sized + Object>(&self, ty: u16) -> bool {
        self.ids.get(usize::from(ty)) == Some(&TypeId::of::<T>())
    }

    /// Bytes of the registry.
    pub(crate) fn metadata_bytes(&self) -> usize {
        self.infos.capacity() * core::mem::size_of::<&TypeInfo>()
            + self.ids.capacity() * core::mem::size_of::<TypeId>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_type_gets_one_index_for_good() {
        let mut types = Types::new();
        let a = types.index_of(&<u64 as Object>::INFO).unwrap();
        let b = types.index_of(&<[u64] as Object>::INFO).unwrap();
        assert_eq!((a, b), (1, 2));
        assert_eq!(types.index_of(&<u64 as Object>::INFO), Some(a));
        assert_eq!(types.index_of(&<() as Object>::INFO), Some(UNIT_TYPE));
        assert!(types.is::<[u64]>(b) && !types.is::<u64>(b));
    }
}
