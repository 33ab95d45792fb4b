//! [`Types`]: a heap's registry of the types stored in it, so that a slot
//! names its type in 16 bits instead of a 64-bit `&'static TypeInfo`, and,
//! for a short slice, its length too.
//!
//! Index 0 is `()`, the type of retired slots. A type gets the next index the
//! first time a value of it is allocated, and keeps it for the heap's life.
//!
//! A slice of at most [`SHORT_BYTES`] bytes gets an index of its own for its
//! type *and length* (`[u8]` of 100 bytes is one index, of 101 another): its
//! slot then says everything, and the table keeps no length for it (4 bytes
//! an object saved, a quarter of a small object's bookkeeping). Longer
//! slices, zero-sized elements and, once [`SHORT_ENTRIES`] such indices
//! exist, every other slice keep one index per type and their length in the
//! table (`Table::len`). Every index of one type has that type's `TypeId`,
//! so the type check of a handle is the same one compare either way.

use core::any::TypeId;

use crate::object::{Object, TypeInfo};
use crate::table::UNIT_TYPE;

/// Slices of at most this many bytes get an index per length.
pub(crate) const SHORT_BYTES: usize = 1024;

/// At most this many indices stand for a length (about 120 KiB of registry
/// when all are taken; a heap of one slice type uses at most 1 025).
pub(crate) const SHORT_ENTRIES: usize = 4096;

/// [`Types::fixed_len`] of an index whose length, if any, is in the table.
pub(crate) const IN_TABLE: u32 = u32::MAX;

/// [`Types::stored_len`] of an object whose index says its length: the
/// table need keep none (whatever it keeps for the slot is never read, I2).
pub(crate) const NO_LEN: usize = usize::MAX;

/// The types of one heap.
#[derive(Debug)]
pub(crate) struct Types {
    /// `entries[i]`: what index `i` stands for, all in one place, so that
    /// the type check of a `get` and all that a `free` needs are one load
    /// from one small array.
    entries: Vec<Entry>,
    /// One per type, in the order they came.
    kinds: Vec<Kind>,
    /// The index of each short length of each slice type (0: none yet):
    /// `by_len[kind.lens + len]` for `len < kind.short`.
    by_len: Vec<u16>,
    /// Indices that stand for a length.
    short_entries: usize,
    /// The type found last: allocation loops repeat a type.
    last: Kind,
    /// The `TypeInfo` that found `last` (another address may describe the
    /// same type: a generic constant can be duplicated across codegen
    /// units; one address never describes two types, as the `TypeId` is in it).
    last_info: &'static TypeInfo,
}

/// What one index stands for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    /// `info.type_id`, beside the index's other facts: the type check.
    pub(crate) id: TypeId,
    pub(crate) info: &'static TypeInfo,
    /// The slice length that the index stands for, or [`IN_TABLE`] (a
    /// sized type, or a slice whose length the table keeps).
    pub(crate) len: u32,
    /// The bytes of every object of this index (a sized type's size, a
    /// short slice's), or [`VARIES`].
    pub(crate) size: u32,
}

/// [`Entry::size`] of an index whose objects' sizes differ (a slice whose
/// length the table keeps), or of a type of 4 GiB or more.
pub(crate) const VARIES: u32 = u32::MAX;

impl Entry {
    fn new(info: &'static TypeInfo, len: u32) -> Entry {
        let size = if !info.is_slice {
            Some(info.elem_size)
        } else if len != IN_TABLE {
            info.elem_size.checked_mul(len as usize)
        } else {
            None
        };
        Entry {
            id: info.type_id,
            info,
            len,
            size: size.and_then(|s| u32::try_from(s).ok()).unwrap_or(VARIES),
        }
    }
}

/// A type of the heap and its indices.
#[derive(Clone, Copy, Debug)]
struct Kind {
    id: TypeId,
    /// Its index: of every value of a sized type, of the slices whose
    /// length the table keeps.
    index: u16,
    /// For a slice type of sized elements, how many lengths are short (up
    /// to [`SHORT_BYTES`] bytes), and where their indices start in
    /// `by_len`. 0 otherwise.
    short: usize,
    lens: usize,
}

impl Types {
    pub(crate) fn new() -> Types {
        let unit: &'static TypeInfo = &<() as Object>::INFO;
        let kind = Kind {
            id: unit.type_id,
            index: UNIT_TYPE,
            short: 0,
            lens: 0,
        };
        Types {
            entries: vec![Entry::new(unit, IN_TABLE)],
            kinds: vec![kind],
            by_len: Vec::new(),
            short_entries: 0,
            last: kind,
            last_info: unit,
        }
    }

    /// The index of a value of `info`'s type with pointer metadata `meta`
    /// (a slice's length), registering it if new. `None` when the heap
    /// already holds 65 536 indices.
    #[inline]
    pub(crate) fn index_of(&mut self, info: &'static TypeInfo, meta: usize) -> Option<u16> {
        if let Some((index, _)) = self.last_index(info, meta) {
            return Some(index);
        }
        let kind = match self.kinds.iter().find(|kind| kind.id == info.type_id) {
            Some(&kind) => kind,
            None => {
                let index = self.push(info, IN_TABLE)?;
                let short = if info.is_slice && info.elem_size != 0 {
                    SHORT_BYTES / info.elem_size + 1
                } else {
                    0
                };
                let kind = Kind {
                    id: info.type_id,
                    index,
                    short,
                    lens: self.by_len.len(),
                };
                self.by_len.resize(kind.lens + short, 0);
                self.kinds.push(kind);
                kind
            }
        };
        self.last = kind;
        self.last_info = info;
        if meta < kind.short
            && self.by_len[kind.lens + meta] == 0
            && self.short_entries < SHORT_ENTRIES
        {
            if let Some(index) = self.push(info, meta as u32) {
                self.short_entries += 1;
                self.by_len[kind.lens + meta] = index;
            }
        }
        Some(
            self.last_index(info, meta)
                .map_or(kind.index, |(index, _)| index),
        )
    }

    /// Registers a new index for `info` standing for length `len`.
    fn push(&mut self, info: &'static TypeInfo, len: u32) -> Option<u16> {
        if self.entries.len() > usize::from(u16::MAX) {
            return None;
        }
        self.entries.push(Entry::new(info, len));
        Some((self.entries.len() - 1) as u16)
    }

    /// [`Types::index_of`] if `info` is the type it answered last and the
    /// length needs no new index (the common case of an allocation), else
    /// `None`; with the index, what the table must keep as the slice length
    /// ([`Types::stored_len`]).
    #[inline]
    pub(crate) fn last_index(&self, info: &'static TypeInfo, meta: usize) -> Option<(u16, usize)> {
        let kind = &self.last;
        // (The address first: one compare, where the `TypeId` takes two.)
        if !core::ptr::eq(self.last_info, info) && kind.id != info.type_id {
            return None;
        }
        if meta >= kind.short {
            // A sized type, a long slice, zero-sized elements.
            return Some((kind.index, meta));
        }
        match self.by_len.get(kind.lens + meta) {
            Some(&0) | None if self.short_entries < SHORT_ENTRIES => None,
            Some(&0) | None => Some((kind.index, meta)),
            Some(&index) => Some((index, NO_LEN)),
        }
    }

    /// The type of index `ty` (an index this registry handed out).
    #[inline]
    pub(crate) fn info(&self, ty: u16) -> &'static TypeInfo {
        self.entries[usize::from(ty)].info
    }

    /// The type of index `ty`, or `None` (no panic).
    #[inline]
    pub(crate) fn try_info(&self, ty: u16) -> Option<&'static TypeInfo> {
        self.entries.get(usize::from(ty)).map(|e| e.info)
    }

    /// The slice length index `ty` stands for, or [`IN_TABLE`]. Never panics.
    #[inline]
    pub(crate) fn fixed_len(&self, ty: u16) -> u32 {
        self.entries
            .get(usize::from(ty))
            .map_or(IN_TABLE, |e| e.len)
    }

    /// The slice length of an object of index `ty` whose table entry keeps
    /// `stored` (0 when it keeps none).
    #[inline]
    pub(crate) fn len_or(&self, ty: u16, stored: u32) -> u32 {
        match self.fixed_len(ty) {
            IN_TABLE => stored,
            len => len,
        }
    }

    /// What the table must keep as the slice length of an object of index
    /// `ty` and length `len`: nothing ([`NO_LEN`]) when the index says it.
    #[inline]
    pub(crate) fn stored_len(&self, ty: u16, len: usize) -> usize {
        if self.fixed_len(ty) == IN_TABLE {
            len
        } else {
            NO_LEN
        }
    }

    /// What index `ty` stands for, if it is one this registry handed out.
    #[inline]
    pub(crate) fn entry(&self, ty: u16) -> Option<&Entry> {
        self.entries.get(usize::from(ty))
    }

    /// Whether index `ty` is the type `T`. Never panics.
    #[inline]
    pub(crate) fn is<T: ?Sized + Object>(&self, ty: u16) -> bool {
        self.entries.get(usize::from(ty)).map(|e| e.id) == Some(TypeId::of::<T>())
    }

    /// Bytes of the registry.
    pub(crate) fn metadata_bytes(&self) -> usize {
        use core::mem::size_of;
        self.entries.capacity() * size_of::<Entry>()
            + self.kinds.capacity() * size_of::<Kind>()
            + self.by_len.capacity() * size_of::<u16>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Types {
        fn is_of(&self, ty: u16, info: &TypeInfo) -> bool {
            self.entries[usize::from(ty)].id == info.type_id
        }
    }

    #[test]
    fn each_type_gets_one_index_for_good() {
        let mut types = Types::new();
        let a = types.index_of(&<u64 as Object>::INFO, 0).unwrap();
        let b = types.index_of(&<[u64] as Object>::INFO, 1000).unwrap();
        assert_eq!((a, b), (1, 2));
        assert_eq!(types.index_of(&<u64 as Object>::INFO, 0), Some(a));
        assert_eq!(types.index_of(&<() as Object>::INFO, 0), Some(UNIT_TYPE));
        assert!(types.is::<[u64]>(b) && !types.is::<u64>(b));
        // A long slice: its length is the table's.
        assert_eq!(types.fixed_len(b), IN_TABLE);
        assert_eq!(types.stored_len(b, 1000), 1000);
    }

    #[test]
    fn a_short_slice_gets_an_index_per_length_with_its_types_id() {
        let mut types = Types::new();
        let info = &<[u8] as Object>::INFO;
        let a = types.index_of(info, 100).unwrap();
        let b = types.index_of(info, 101).unwrap();
        let long = types.index_of(info, SHORT_BYTES + 1).unwrap();
        assert!(a != b && b != long && a != long);
        assert_eq!(
            types.index_of(info, 100),
            Some(a),
            "the same length, the same index"
        );
        assert_eq!(types.last_index(info, 100), Some((a, NO_LEN)));
        assert_eq!(
            types.last_index(info, SHORT_BYTES + 1),
            Some((long, SHORT_BYTES + 1))
        );
        assert_eq!(
            types.last_index(info, 102),
            None,
            "a new length needs registering"
        );
        assert_eq!((types.fixed_len(a), types.fixed_len(b)), (100, 101));
        assert_eq!(types.fixed_len(long), IN_TABLE);
        assert_eq!((types.len_or(a, 0), types.len_or(long, 7)), (100, 7));
        assert_eq!(types.stored_len(a, 100), NO_LEN, "the table keeps nothing");
        for ty in [a, b, long] {
            assert!(types.is::<[u8]>(ty) && !types.is::<str>(ty) && !types.is::<[i8]>(ty));
        }
        // Elements of 8 bytes: short up to `SHORT_BYTES / 8` of them.
        let words = &<[u64] as Object>::INFO;
        let w = types.index_of(words, SHORT_BYTES / 8).unwrap();
        assert_eq!(types.fixed_len(w), (SHORT_BYTES / 8) as u32);
        let w_long = types.index_of(words, SHORT_BYTES / 8 + 1).unwrap();
        assert_eq!(types.fixed_len(w_long), IN_TABLE);
        // Zero-sized elements: any length, kept by the table.
        let unit = types.index_of(&<[()] as Object>::INFO, 5).unwrap();
        assert_eq!(types.fixed_len(unit), IN_TABLE);
    }

    #[test]
    fn past_the_cap_of_short_indices_lengths_go_to_the_table() {
        let mut types = Types::new();
        let infos = [
            &<[u8] as Object>::INFO,
            &<[i8] as Object>::INFO,
            &<str as Object>::INFO,
            &<[u16] as Object>::INFO,
            &<[bool] as Object>::INFO,
        ];
        let mut short = 0;
        for info in infos {
            for len in 0..=SHORT_BYTES / info.elem_size {
                let ty = types.index_of(info, len).unwrap();
                assert!(types.is_of(ty, info));
                if types.fixed_len(ty) != IN_TABLE {
                    assert_eq!(types.fixed_len(ty), len as u32);
                    short += 1;
                }
                let stored = types.stored_len(ty, len);
                assert_eq!(types.last_index(info, len), Some((ty, stored)), "{len}");
            }
        }
        assert_eq!(short, SHORT_ENTRIES);
    }
}
