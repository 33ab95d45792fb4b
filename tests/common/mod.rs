//! The model test's machinery: the operations, a strategy for programs of
//! them, the kinds of values, and the interpreter that checks a heap against
//! the model. Generic over [`Subject`] so that every heap type runs it.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use compact_heap::{
    AllocError, BorrowError, CloneObject, CompactReport, Config, Handle, Heap, HeapStats, Object,
    Ref, RefMut, RemoveError, ResizeError,
};
use proptest::prelude::*;

/// What the model test (and the hostile programs, tests/hostile) need of a heap.
pub trait Subject {
    /// A heap of this type with `config`.
    fn build(config: Config) -> Self
    where
        Self: Sized;
    fn alloc<T: Send + Sync + 'static>(&self, value: T) -> Handle<T>;
    fn try_alloc<T: Send + Sync + 'static>(&self, value: T) -> Result<Handle<T>, (T, AllocError)>;
    fn alloc_slice<T: Copy + Send + Sync + 'static>(&self, src: &[T]) -> Handle<[T]>;
    fn try_alloc_slice<T: Copy + Send + Sync + 'static>(
        &self,
        src: &[T],
    ) -> Result<Handle<[T]>, AllocError>;
    fn alloc_slice_fill<T: Copy + Send + Sync + 'static>(
        &self,
        len: usize,
        value: T,
    ) -> Handle<[T]>;
    fn alloc_slice_clone<T: Clone + Send + Sync + 'static>(&self, src: &[T]) -> Handle<[T]>;
    fn alloc_from_iter<T: Send + Sync + 'static, I: IntoIterator<Item = T>>(
        &self,
        items: I,
    ) -> Handle<[T]>;
    fn alloc_str(&self, src: &str) -> Handle<str>;
    fn try_alloc_str(&self, src: &str) -> Result<Handle<str>, AllocError>;
    fn contains<T: ?Sized + Object>(&self, h: Handle<T>) -> bool;
    fn try_get_mut<T: ?Sized + Object + Sync>(
        &self,
        h: Handle<T>,
    ) -> Result<RefMut<'_, T>, BorrowError>;
    fn get<T: ?Sized + Object + Sync>(&self, h: Handle<T>) -> Option<Ref<'_, T>>;
    fn try_get<T: ?Sized + Object + Sync>(&self, h: Handle<T>) -> Result<Ref<'_, T>, BorrowError>;
    fn get_mut<T: ?Sized + Object + Sync>(&self, h: Handle<T>) -> Option<RefMut<'_, T>>;
    fn free<T: ?Sized + Object + Sync>(&self, h: Handle<T>) -> bool;
    fn remove<T: Send + Sync + 'static>(&self, h: Handle<T>) -> Result<T, RemoveError>;
    fn remove_unsized<T: ?Sized + Object + Sync>(
        &self,
        h: Handle<T>,
    ) -> Result<T::Owned, RemoveError>;
    fn alloc_clone<T: ?Sized + CloneObject + Sync>(&self, src: &T) -> Handle<T>;
    fn alloc_slice_with<T: Send + Sync + 'static>(
        &self,
        len: usize,
        f: impl FnMut(usize) -> T,
    ) -> Handle<[T]>;
    fn resize<T: Copy + Send + Sync + 'static>(
        &self,
        h: Handle<[T]>,
        new_len: usize,
        value: T,
    ) -> Result<(), ResizeError>;
    fn retain<T: ?Sized + Object + Sync>(&self, f: impl FnMut(Handle<T>, &mut T) -> bool);
    fn clear(&self);
    fn handles<T: ?Sized + Object>(&self) -> Vec<Handle<T>>;
    fn size_of<T: ?Sized + Object>(&self, h: Handle<T>) -> Option<usize>;
    fn len_of<T: ?Sized + Object>(&self, h: Handle<T>) -> Option<usize>;
    fn compact(&self) -> CompactReport;
    fn compact_step(&self, budget: usize) -> CompactReport;
    fn stats(&self) -> HeapStats;
    /// Segment size the heap was built with.
    fn segment_size(&self) -> usize {
        4096
    }
}

/// A heap under test.
pub struct TestHeap<H>(pub H);

/// Both heaps have the same methods; one impl serves each.
macro_rules! subject {
    ($heap:ty) => {
        impl Subject for TestHeap<$heap> {
            fn build(config: Config) -> Self {
                TestHeap(<$heap>::with_config(config))
            }
            fn alloc<T: Send + Sync + 'static>(&self, value: T) -> Handle<T> {
                self.0.alloc(value)
            }
            fn try_alloc<T: Send + Sync + 'static>(
                &self,
                value: T,
            ) -> Result<Handle<T>, (T, AllocError)> {
                self.0.try_alloc(value)
            }
            fn alloc_slice<T: Copy + Send + Sync + 'static>(&self, src: &[T]) -> Handle<[T]> {
                self.0.alloc_slice(src)
            }
            fn try_alloc_slice<T: Copy + Send + Sync + 'static>(
                &self,
                src: &[T],
            ) -> Result<Handle<[T]>, AllocError> {
                self.0.try_alloc_slice(src)
            }
            fn alloc_slice_fill<T: Copy + Send + Sync + 'static>(
                &self,
                len: usize,
                value: T,
            ) -> Handle<[T]> {
                self.0.alloc_slice_fill(len, value)
            }
            fn try_alloc_str(&self, src: &str) -> Result<Handle<str>, AllocError> {
                self.0.try_alloc_str(src)
            }
            fn contains<T: ?Sized + Object>(&self, h: Handle<T>) -> bool {
                self.0.contains(h)
            }
            fn try_get_mut<T: ?Sized + Object + Sync>(
                &self,
                h: Handle<T>,
            ) -> Result<RefMut<'_, T>, BorrowError> {
                self.0.try_get_mut(h)
            }
            fn alloc_slice_clone<T: Clone + Send + Sync + 'static>(
                &self,
                src: &[T],
            ) -> Handle<[T]> {
                self.0.alloc_slice_clone(src)
            }
            fn alloc_from_iter<T: Send + Sync + 'static, I: IntoIterator<Item = T>>(
                &self,
                items: I,
            ) -> Handle<[T]> {
                self.0.alloc_from_iter(items)
            }
            fn alloc_str(&self, src: &str) -> Handle<str> {
                self.0.alloc_str(src)
            }
            fn get<T: ?Sized + Object + Sync>(&self, h: Handle<T>) -> Option<Ref<'_, T>> {
                self.0.get(h)
            }
            fn try_get<T: ?Sized + Object + Sync>(
                &self,
                h: Handle<T>,
            ) -> Result<Ref<'_, T>, BorrowError> {
                self.0.try_get(h)
            }
            fn get_mut<T: ?Sized + Object + Sync>(&self, h: Handle<T>) -> Option<RefMut<'_, T>> {
                self.0.get_mut(h)
            }
            fn free<T: ?Sized + Object + Sync>(&self, h: Handle<T>) -> bool {
                self.0.free(h)
            }
            fn remove<T: Send + Sync + 'static>(&self, h: Handle<T>) -> Result<T, RemoveError> {
                self.0.remove(h)
            }
            fn remove_unsized<T: ?Sized + Object + Sync>(
                &self,
                h: Handle<T>,
            ) -> Result<T::Owned, RemoveError> {
                self.0.remove(h)
            }
            fn alloc_clone<T: ?Sized + CloneObject + Sync>(&self, src: &T) -> Handle<T> {
                self.0.alloc_clone(src)
            }
            fn alloc_slice_with<T: Send + Sync + 'static>(
                &self,
                len: usize,
                f: impl FnMut(usize) -> T,
            ) -> Handle<[T]> {
                self.0.alloc_slice_with(len, f)
            }
            fn resize<T: Copy + Send + Sync + 'static>(
                &self,
                h: Handle<[T]>,
                new_len: usize,
                value: T,
            ) -> Result<(), ResizeError> {
                self.0.resize(h, new_len, value)
            }
            fn retain<T: ?Sized + Object + Sync>(&self, f: impl FnMut(Handle<T>, &mut T) -> bool) {
                self.0.retain(f)
            }
            fn clear(&self) {
                self.0.clear()
            }
            fn handles<T: ?Sized + Object>(&self) -> Vec<Handle<T>> {
                self.0.handles::<T>().collect()
            }
            fn size_of<T: ?Sized + Object>(&self, h: Handle<T>) -> Option<usize> {
                self.0.size_of(h)
            }
            fn len_of<T: ?Sized + Object>(&self, h: Handle<T>) -> Option<usize> {
                self.0.len_of(h)
            }
            fn compact(&self) -> CompactReport {
                self.0.compact()
            }
            fn compact_step(&self, budget: usize) -> CompactReport {
                self.0.compact_step(budget)
            }
            fn stats(&self) -> HeapStats {
                self.0.stats()
            }
        }
    };
}

subject!(Heap);
subject!(compact_heap::SyncHeap);

/// Records every drop of a [`Tracked`] value by id.
#[derive(Default, Debug)]
pub struct DropLog(Mutex<Vec<u64>>);

impl DropLog {
    /// Records the drop of `id`.
    pub fn push(&self, id: u64) {
        self.0.lock().unwrap().push(id);
    }

    pub fn dropped(&self) -> Vec<u64> {
        let mut v = self.0.lock().unwrap().clone();
        v.sort_unstable();
        v
    }
}

/// A value with drop glue that logs its drop.
#[derive(Debug)]
pub struct Tracked {
    pub id: u64,
    pub data: [u64; 3],
    pub log: Arc<DropLog>,
}

impl Clone for Tracked {
    fn clone(&self) -> Self {
        panic!("the model never clones a Tracked directly")
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.log.0.lock().unwrap().push(self.id);
    }
}

/// A type with a large alignment.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(align(256))]
pub struct Aligned(pub u64);

/// A page-aligned type.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(align(8192))]
pub struct PageAligned(pub u32);

/// A zero-sized type with drop glue: it logs id 0 to this thread's log.
#[derive(Debug)]
pub struct ZstDrop;

thread_local! {
    static ZST_LOG: std::cell::RefCell<Option<Arc<DropLog>>> = const { std::cell::RefCell::new(None) };
}

/// Sets the log this thread's [`ZstDrop`]s write to (a helper thread that
/// may drop one needs it too).
pub fn set_zst_log(log: Option<Arc<DropLog>>) {
    ZST_LOG.with(|l| *l.borrow_mut() = log);
}

impl Drop for ZstDrop {
    fn drop(&mut self) {
        ZST_LOG.with(|l| {
            l.borrow()
                .as_ref()
                .expect("ZST log set")
                .0
                .lock()
                .unwrap()
                .push(0)
        });
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    U64,
    Bytes,
    Str,
    Tracked,
    TrackedSlice,
    Zst,
    Aligned,
    PageAligned,
}

#[derive(Clone, Debug)]
pub enum Op {
    /// Allocate a value of a kind; the number is a size or seed.
    Alloc(Kind, usize),
    /// Read object i (of those allocated, modulo) and check it.
    Get(usize),
    /// Write a new value (from a seed) through get_mut.
    Write(usize, u64),
    /// Take a guard on object i and keep it (shared or exclusive).
    Hold(usize, bool),
    /// Write through held exclusive guard i.
    WriteHeld(usize, u64),
    /// Drop held guard i.
    Release(usize),
    Free(usize),
    Remove(usize),
    Compact,
    CompactStep(usize),
    /// Resize byte slice i to a length (new bytes are the seed's low byte).
    Resize(usize, usize),
    /// Move an unsized object (bytes, str, tracked slice) out into a Box.
    RemoveUnsized(usize),
    /// Keep the u64 objects whose value is not ≡ seed (mod 3), adding 1 to those kept.
    Retain(u64),
    /// Free everything.
    Clear,
}

pub fn program() -> impl Strategy<Value = Vec<Op>> {
    let max_len = if cfg!(miri) { 40 } else { 160 };
    let big: usize = if cfg!(miri) { 1500 } else { 3000 };
    let kind = prop_oneof![
        3 => Just(Kind::U64),
        4 => Just(Kind::Bytes),
        2 => Just(Kind::Str),
        3 => Just(Kind::Tracked),
        1 => Just(Kind::TrackedSlice),
        1 => Just(Kind::Zst),
        1 => Just(Kind::Aligned),
        1 => Just(Kind::PageAligned),
    ];
    let op = prop_oneof![
        8 => (kind, 0..big).prop_map(|(k, n)| Op::Alloc(k, n)),
        3 => any::<usize>().prop_map(Op::Get),
        3 => (any::<usize>(), any::<u64>()).prop_map(|(i, s)| Op::Write(i, s)),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(i, m)| Op::Hold(i, m)),
        1 => (any::<usize>(), any::<u64>()).prop_map(|(i, s)| Op::WriteHeld(i, s)),
        3 => any::<usize>().prop_map(Op::Release),
        5 => any::<usize>().prop_map(Op::Free),
        1 => any::<usize>().prop_map(Op::Remove),
        1 => Just(Op::Compact),
        2 => (1usize..4096).prop_map(Op::CompactStep),
        2 => (any::<usize>(), 0..big).prop_map(|(i, n)| Op::Resize(i, n)),
        1 => any::<usize>().prop_map(Op::RemoveUnsized),
        1 => any::<u64>().prop_map(Op::Retain),
        1 => (0..8u8).prop_map(|c| if c == 0 { Op::Clear } else { Op::Compact }),
    ];
    prop::collection::vec(op, 1..max_len)
}

/// A typed handle of any kind.
#[derive(Clone, Copy, Debug)]
enum AnyHandle {
    U64(Handle<u64>),
    Bytes(Handle<[u8]>),
    Str(Handle<str>),
    Tracked(Handle<Tracked>),
    TrackedSlice(Handle<[Tracked]>),
    Zst(Handle<ZstDrop>),
    Aligned(Handle<Aligned>),
    PageAligned(Handle<PageAligned>),
}

/// What a live object must read as.
#[derive(Clone, Debug, PartialEq)]
enum Expected {
    U64(u64),
    Bytes(Vec<u8>),
    Str(String),
    Tracked(u64, [u64; 3]),
    TrackedSlice(Vec<(u64, [u64; 3])>),
    Zst,
    Aligned(u64),
    PageAligned(u32),
}

impl Expected {
    fn size(&self) -> usize {
        match self {
            Expected::U64(_) => 8,
            Expected::Bytes(b) => b.len(),
            Expected::Str(s) => s.len(),
            Expected::Tracked(..) => std::mem::size_of::<Tracked>(),
            Expected::TrackedSlice(v) => v.len() * std::mem::size_of::<Tracked>(),
            Expected::Zst => 0,
            Expected::Aligned(_) => 256,
            Expected::PageAligned(_) => 8192,
        }
    }

    fn align(&self) -> usize {
        match self {
            Expected::Aligned(_) => 256,
            Expected::PageAligned(_) => 8192,
            _ => 8,
        }
    }

    /// Drop ids this value logs when dropped.
    fn drop_ids(&self) -> Vec<u64> {
        match self {
            Expected::Tracked(id, _) => vec![*id],
            Expected::Zst => vec![0],
            Expected::TrackedSlice(v) => v.iter().map(|(id, _)| *id).collect(),
            _ => vec![],
        }
    }
}

fn data(seed: u64) -> [u64; 3] {
    [seed, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15), !seed]
}

fn bytes(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed as usize).wrapping_add(i * 31) as u8)
        .collect()
}

struct Obj {
    handle: AnyHandle,
    expected: Expected,
    /// Freed while a guard held it: dead handle, value waits.
    zombie: bool,
}

/// A guard the program holds.
enum Held<'h> {
    U64R(Ref<'h, u64>, usize),
    U64W(RefMut<'h, u64>, usize),
    BytesR(Ref<'h, [u8]>, usize),
    BytesW(RefMut<'h, [u8]>, usize),
    TrackedR(Ref<'h, Tracked>, usize),
    TrackedW(RefMut<'h, Tracked>, usize),
}

impl Held<'_> {
    fn obj(&self) -> usize {
        match self {
            Held::U64R(_, o) | Held::U64W(_, o) | Held::BytesR(_, o) | Held::BytesW(_, o) => *o,
            Held::TrackedR(_, o) | Held::TrackedW(_, o) => *o,
        }
    }

    fn exclusive(&self) -> bool {
        matches!(self, Held::U64W(..) | Held::BytesW(..) | Held::TrackedW(..))
    }

    fn addr(&self) -> usize {
        match self {
            Held::U64R(r, _) => (&**r as *const u64).addr(),
            Held::U64W(r, _) => (&**r as *const u64).addr(),
            Held::BytesR(r, _) => r.as_ptr().addr(),
            Held::BytesW(r, _) => r.as_ptr().addr(),
            Held::TrackedR(r, _) => (&**r as *const Tracked).addr(),
            Held::TrackedW(r, _) => (&**r as *const Tracked).addr(),
        }
    }

    fn read(&self) -> Expected {
        match self {
            Held::U64R(r, _) => Expected::U64(**r),
            Held::U64W(r, _) => Expected::U64(**r),
            Held::BytesR(r, _) => Expected::Bytes(r.to_vec()),
            Held::BytesW(r, _) => Expected::Bytes(r.to_vec()),
            Held::TrackedR(r, _) => Expected::Tracked(r.id, r.data),
            Held::TrackedW(r, _) => Expected::Tracked(r.id, r.data),
        }
    }
}

fn read<S: Subject>(heap: &S, h: AnyHandle) -> Result<Option<Expected>, BorrowError> {
    fn go<S: Subject, T: ?Sized + Object + Sync>(
        heap: &S,
        h: Handle<T>,
        f: impl FnOnce(&T) -> Expected,
    ) -> Result<Option<Expected>, BorrowError> {
        match heap.try_get(h) {
            Ok(r) => Ok(Some(f(&r))),
            Err(BorrowError::Stale) => Ok(None),
            Err(e) => Err(e),
        }
    }
    match h {
        AnyHandle::U64(h) => go(heap, h, |v| Expected::U64(*v)),
        AnyHandle::Bytes(h) => go(heap, h, |v| Expected::Bytes(v.to_vec())),
        AnyHandle::Str(h) => go(heap, h, |v| Expected::Str(v.to_owned())),
        AnyHandle::Tracked(h) => go(heap, h, |v| Expected::Tracked(v.id, v.data)),
        AnyHandle::TrackedSlice(h) => go(heap, h, |v| {
            Expected::TrackedSlice(v.iter().map(|t| (t.id, t.data)).collect())
        }),
        AnyHandle::Zst(h) => go(heap, h, |_| Expected::Zst),
        AnyHandle::Aligned(h) => go(heap, h, |v| {
            assert_eq!((v as *const Aligned).addr() % 256, 0, "misaligned");
            Expected::Aligned(v.0)
        }),
        AnyHandle::PageAligned(h) => go(heap, h, |v| {
            assert_eq!((v as *const PageAligned).addr() % 8192, 0, "misaligned");
            Expected::PageAligned(v.0)
        }),
    }
}

fn free<S: Subject>(heap: &S, h: AnyHandle) -> bool {
    match h {
        AnyHandle::U64(h) => heap.free(h),
        AnyHandle::Bytes(h) => heap.free(h),
        AnyHandle::Str(h) => heap.free(h),
        AnyHandle::Tracked(h) => heap.free(h),
        AnyHandle::TrackedSlice(h) => heap.free(h),
        AnyHandle::Zst(h) => heap.free(h),
        AnyHandle::Aligned(h) => heap.free(h),
        AnyHandle::PageAligned(h) => heap.free(h),
    }
}

/// The model's state.
struct Model {
    objs: Vec<Obj>,
    /// Indices of objects whose handles are live.
    live: Vec<usize>,
    /// Objects whose handles died (freed or removed), zombies included.
    dead: Vec<usize>,
    /// Drop ids that must have been logged by now.
    dropped: Vec<u64>,
    next_id: u64,
    compactions: u64,
    bytes_moved: u64,
}

impl Model {
    fn pick_live(&self, i: usize) -> Option<usize> {
        (!self.live.is_empty()).then(|| self.live[i % self.live.len()])
    }

    fn kill(&mut self, o: usize) {
        self.live.retain(|&x| x != o);
        self.dead.push(o);
    }
}

/// Runs `program` on `heap`, checking it against the model after every step.
/// Returns the drop log and every drop id the program created: once the
/// caller drops the heap, [`all_dropped_once`] checks the log against them.
pub fn run<S: Subject>(heap: &S, program: &[Op]) -> (Arc<DropLog>, Vec<u64>) {
    let log = Arc::new(DropLog::default());
    set_zst_log(Some(log.clone()));
    let mut m = Model {
        objs: vec![],
        live: vec![],
        dead: vec![],
        dropped: vec![],
        next_id: 1,
        compactions: 0,
        bytes_moved: 0,
    };
    {
        let mut held: Vec<Held<'_>> = Vec::new();
        for op in program {
            step(heap, &log, &mut m, &mut held, op);
            check(heap, &log, &m, &held);
        }
        // Let go of every guard: zombies are dropped now.
        while let Some(g) = held.pop() {
            let o = g.obj();
            drop(g);
            finish_if_zombie(&mut m, &held, o);
        }
        check(heap, &log, &m, &held);
        // A full compaction with nothing pinned leaves the segments dense.
        heap.compact();
        m.compactions += 1;
        let st = heap.stats();
        if std::env::var_os("MODEL_DEBUG").is_some() {
            eprintln!("{st:?}");
        }
        assert_eq!(st.pinned_objects, 0);
        assert_eq!(st.spare_bytes, 0, "compact() gives the spare mappings back");
        let seg = heap.segment_size();
        let in_segments: usize = m
            .live
            .iter()
            .map(|&o| &m.objs[o].expected)
            .filter(|e| is_small(e, seg))
            .map(Expected::size)
            .sum();
        // Dense after a full compaction: fewer segments than live bytes need + 2
        // (one for the allocation cursor, one for line/alignment slack).
        assert!(
            st.segments <= in_segments.div_ceil(seg) + 2,
            "{} segments for {} bytes after compact()",
            st.segments,
            in_segments
        );
    }
    assert_eq!(
        log.dropped(),
        sorted(m.dropped.clone()),
        "drops before the heap ends"
    );
    let all: Vec<u64> = m.objs.iter().flat_map(|o| o.expected.drop_ids()).collect();
    (log, all)
}

fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort_unstable();
    v
}

fn is_small(e: &Expected, seg: usize) -> bool {
    e.size() > 0 && e.size() <= seg / 4 && e.align() <= 4096
}

fn is_large(e: &Expected, seg: usize) -> bool {
    e.size() > 0 && !is_small(e, seg)
}

fn finish_if_zombie(m: &mut Model, held: &[Held<'_>], o: usize) {
    if m.objs[o].zombie && !held.iter().any(|g| g.obj() == o) {
        m.objs[o].zombie = false;
        let ids = m.objs[o].expected.drop_ids();
        m.dropped.extend(ids);
    }
}

fn step<'h, S: Subject>(
    heap: &'h S,
    log: &Arc<DropLog>,
    m: &mut Model,
    held: &mut Vec<Held<'h>>,
    op: &Op,
) {
    match *op {
        Op::Alloc(kind, n) => {
            let seed = n as u64;
            let (handle, expected) = match kind {
                Kind::U64 => (AnyHandle::U64(heap.alloc(seed)), Expected::U64(seed)),
                Kind::Bytes => {
                    let b = bytes(seed, n);
                    let h = if n % 2 == 0 {
                        heap.alloc_slice(&b)
                    } else {
                        heap.alloc_clone(&b[..])
                    };
                    (AnyHandle::Bytes(h), Expected::Bytes(b))
                }
                Kind::Str => {
                    let s: String = (0..n % 200)
                        .map(|i| char::from(b'a' + (i % 26) as u8))
                        .collect();
                    let h = if n % 2 == 0 {
                        heap.alloc_str(&s)
                    } else {
                        heap.alloc_clone(s.as_str())
                    };
                    (AnyHandle::Str(h), Expected::Str(s))
                }
                Kind::Tracked => {
                    let id = m.next_id;
                    m.next_id += 1;
                    let t = Tracked {
                        id,
                        data: data(seed),
                        log: log.clone(),
                    };
                    (
                        AnyHandle::Tracked(heap.alloc(t)),
                        Expected::Tracked(id, data(seed)),
                    )
                }
                Kind::TrackedSlice => {
                    let len = n % 5;
                    let items: Vec<(u64, [u64; 3])> = (0..len)
                        .map(|i| {
                            let id = m.next_id;
                            m.next_id += 1;
                            (id, data(seed + i as u64))
                        })
                        .collect();
                    let make = |&(id, d): &(u64, [u64; 3])| Tracked {
                        id,
                        data: d,
                        log: log.clone(),
                    };
                    let h = if n % 2 == 0 {
                        heap.alloc_from_iter(items.iter().map(make))
                    } else {
                        heap.alloc_slice_with(len, |i| make(&items[i]))
                    };
                    (AnyHandle::TrackedSlice(h), Expected::TrackedSlice(items))
                }
                Kind::Zst => (AnyHandle::Zst(heap.alloc(ZstDrop)), Expected::Zst),
                Kind::Aligned => (
                    AnyHandle::Aligned(heap.alloc(Aligned(seed))),
                    Expected::Aligned(seed),
                ),
                Kind::PageAligned => (
                    AnyHandle::PageAligned(heap.alloc(PageAligned(n as u32))),
                    Expected::PageAligned(n as u32),
                ),
            };
            m.objs.push(Obj {
                handle,
                expected,
                zombie: false,
            });
            m.live.push(m.objs.len() - 1);
        }
        Op::Get(i) => {
            if let Some(o) = m.pick_live(i) {
                if let Ok(v) = read(heap, m.objs[o].handle) {
                    assert_eq!(v.as_ref(), Some(&m.objs[o].expected));
                } else {
                    assert!(
                        held.iter().any(|g| g.obj() == o && g.exclusive()),
                        "borrow error without an exclusive guard"
                    );
                }
            }
        }
        Op::Write(i, seed) => {
            let Some(o) = m.pick_live(i) else { return };
            if held.iter().any(|g| g.obj() == o) {
                return; // get_mut would panic; covered by the edge tests
            }
            let new = match (m.objs[o].handle, &m.objs[o].expected) {
                (AnyHandle::U64(h), _) => {
                    *heap.get_mut(h).unwrap() = seed;
                    Expected::U64(seed)
                }
                (AnyHandle::Bytes(h), Expected::Bytes(b)) => {
                    let nb = bytes(seed, b.len());
                    heap.get_mut(h).unwrap().copy_from_slice(&nb);
                    Expected::Bytes(nb)
                }
                (AnyHandle::Tracked(h), Expected::Tracked(id, _)) => {
                    heap.get_mut(h).unwrap().data = data(seed);
                    Expected::Tracked(*id, data(seed))
                }
                (AnyHandle::Aligned(h), _) => {
                    heap.get_mut(h).unwrap().0 = seed;
                    Expected::Aligned(seed)
                }
                _ => return,
            };
            m.objs[o].expected = new;
        }
        Op::Hold(i, exclusive) => {
            let Some(o) = m.pick_live(i) else { return };
            let conflict = held
                .iter()
                .any(|g| g.obj() == o && (exclusive || g.exclusive()));
            let g = match (m.objs[o].handle, exclusive) {
                (AnyHandle::U64(h), false) => heap.try_get(h).ok().map(|r| Held::U64R(r, o)),
                (AnyHandle::U64(h), true) => {
                    try_get_mut(heap, h, conflict).map(|r| Held::U64W(r, o))
                }
                (AnyHandle::Bytes(h), false) => heap.try_get(h).ok().map(|r| Held::BytesR(r, o)),
                (AnyHandle::Bytes(h), true) => {
                    try_get_mut(heap, h, conflict).map(|r| Held::BytesW(r, o))
                }
                (AnyHandle::Tracked(h), false) => {
                    heap.try_get(h).ok().map(|r| Held::TrackedR(r, o))
                }
                (AnyHandle::Tracked(h), true) => {
                    try_get_mut(heap, h, conflict).map(|r| Held::TrackedW(r, o))
                }
                _ => return,
            };
            assert_eq!(g.is_none(), conflict, "borrow conflict detection");
            if let Some(g) = g {
                assert_eq!(g.read(), m.objs[o].expected);
                held.push(g);
            }
        }
        Op::WriteHeld(i, seed) => {
            let excl: Vec<usize> = (0..held.len()).filter(|&k| held[k].exclusive()).collect();
            if excl.is_empty() {
                return;
            }
            let k = excl[i % excl.len()];
            let o = held[k].obj();
            let new = match &mut held[k] {
                Held::U64W(w, _) => {
                    **w = seed;
                    Expected::U64(seed)
                }
                Held::BytesW(w, _) => {
                    let nb = bytes(seed, w.len());
                    w.copy_from_slice(&nb);
                    Expected::Bytes(nb)
                }
                Held::TrackedW(w, _) => {
                    w.data = data(seed);
                    Expected::Tracked(w.id, data(seed))
                }
                _ => unreachable!(),
            };
            m.objs[o].expected = new;
        }
        Op::Release(i) => {
            if held.is_empty() {
                return;
            }
            let g = held.remove(i % held.len());
            let o = g.obj();
            drop(g);
            finish_if_zombie(m, held, o);
        }
        Op::Free(i) => {
            let Some(o) = m.pick_live(i) else {
                // Free a dead handle: must report false.
                if let Some(&o) = m.dead.first() {
                    assert!(!free(heap, m.objs[o].handle));
                }
                return;
            };
            assert!(free(heap, m.objs[o].handle));
            m.kill(o);
            if held.iter().any(|g| g.obj() == o) {
                m.objs[o].zombie = true;
            } else {
                let ids = m.objs[o].expected.drop_ids();
                m.dropped.extend(ids);
            }
        }
        Op::Remove(i) => {
            let Some(o) = m.pick_live(i) else { return };
            let pinned = held.iter().any(|g| g.obj() == o);
            let got = match m.objs[o].handle {
                AnyHandle::U64(h) => heap.remove(h).map(Expected::U64),
                AnyHandle::Tracked(h) => heap.remove(h).map(|t| {
                    let e = Expected::Tracked(t.id, t.data);
                    drop(t); // the moved-out value drops here, once
                    e
                }),
                AnyHandle::Aligned(h) => heap.remove(h).map(|a| Expected::Aligned(a.0)),
                _ => return,
            };
            if pinned {
                assert_eq!(got, Err(RemoveError::Pinned));
            } else {
                assert_eq!(got.as_ref(), Ok(&m.objs[o].expected));
                m.dropped.extend(m.objs[o].expected.drop_ids());
                m.kill(o);
            }
        }
        Op::Resize(i, n) => {
            let Some(o) = m.pick_live(i) else { return };
            let (AnyHandle::Bytes(h), Expected::Bytes(b)) = (m.objs[o].handle, &m.objs[o].expected)
            else {
                return;
            };
            let pinned = held.iter().any(|g| g.obj() == o);
            let fill = n as u8;
            let got = heap.resize(h, n, fill);
            if pinned {
                assert_eq!(got, Err(ResizeError::Pinned));
            } else {
                assert_eq!(got, Ok(()));
                let mut nb = b.clone();
                nb.resize(n, fill);
                m.objs[o].expected = Expected::Bytes(nb);
            }
        }
        Op::RemoveUnsized(i) => {
            let Some(o) = m.pick_live(i) else { return };
            let pinned = held.iter().any(|g| g.obj() == o);
            let got = match m.objs[o].handle {
                AnyHandle::Bytes(h) => heap.remove_unsized(h).map(|b| Expected::Bytes(b.into())),
                AnyHandle::Str(h) => heap.remove_unsized(h).map(|s| Expected::Str(s.into())),
                AnyHandle::TrackedSlice(h) => heap.remove_unsized(h).map(|v| {
                    let e = Expected::TrackedSlice(v.iter().map(|t| (t.id, t.data)).collect());
                    drop(v); // the moved-out values drop here, once
                    e
                }),
                _ => return,
            };
            if pinned {
                assert_eq!(got, Err(RemoveError::Pinned));
            } else {
                assert_eq!(got.as_ref(), Ok(&m.objs[o].expected));
                m.dropped.extend(m.objs[o].expected.drop_ids());
                m.kill(o);
            }
        }
        Op::Retain(seed) => {
            let u64s: Vec<usize> = m
                .live
                .iter()
                .copied()
                .filter(|&o| matches!(m.objs[o].handle, AnyHandle::U64(_)))
                .collect();
            if u64s.iter().any(|&o| held.iter().any(|g| g.obj() == o)) {
                return; // retain would panic on the borrowed one; see tests/collection.rs
            }
            let mut seen = 0;
            heap.retain::<u64>(|_, v| {
                seen += 1;
                let keep = *v % 3 != seed % 3;
                *v = v.wrapping_add(1);
                keep
            });
            assert_eq!(seen, u64s.len(), "retain visits every live u64 once");
            for o in u64s {
                let Expected::U64(v) = m.objs[o].expected else {
                    unreachable!()
                };
                if v % 3 == seed % 3 {
                    m.kill(o);
                } else {
                    m.objs[o].expected = Expected::U64(v.wrapping_add(1));
                }
            }
        }
        Op::Clear => {
            heap.clear();
            for o in m.live.clone() {
                m.kill(o);
                if held.iter().any(|g| g.obj() == o) {
                    m.objs[o].zombie = true;
                } else {
                    let ids = m.objs[o].expected.drop_ids();
                    m.dropped.extend(ids);
                }
            }
        }
        Op::Compact => {
            let r = heap.compact();
            assert!(r.finished);
            m.compactions += 1;
            m.bytes_moved += r.bytes_moved as u64;
        }
        Op::CompactStep(budget) => {
            let r = heap.compact_step(budget);
            assert!(
                r.bytes_moved <= budget,
                "step moved {} > budget {}",
                r.bytes_moved,
                budget
            );
            m.compactions += 1;
            m.bytes_moved += r.bytes_moved as u64;
        }
    }
}

fn try_get_mut<'h, S: Subject, T: ?Sized + Object + Sync>(
    heap: &'h S,
    h: Handle<T>,
    conflict: bool,
) -> Option<RefMut<'h, T>> {
    if conflict {
        // get_mut would panic: check that it does, without holding anything.
        let r =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| heap.get_mut(h).map(drop)));
        assert!(r.is_err(), "get_mut on a borrowed object must panic");
        None
    } else {
        Some(heap.get_mut(h).expect("live"))
    }
}

/// After the heap is dropped: every value was dropped exactly once.
pub fn all_dropped_once(log: &DropLog, ids: Vec<u64>) {
    assert_eq!(
        log.dropped(),
        sorted(ids),
        "every value dropped exactly once"
    );
}

fn addr_of<S: Subject>(heap: &S, h: AnyHandle) -> Option<usize> {
    match h {
        AnyHandle::U64(h) => heap.try_get(h).ok().map(|r| (&*r as *const u64).addr()),
        AnyHandle::Bytes(h) => heap.try_get(h).ok().map(|r| r.as_ptr().addr()),
        AnyHandle::Tracked(h) => heap.try_get(h).ok().map(|r| (&*r as *const Tracked).addr()),
        _ => None,
    }
}

/// `size_of` and `len_of` of any handle.
fn sizes<S: Subject>(heap: &S, h: AnyHandle) -> (Option<usize>, Option<usize>) {
    match h {
        AnyHandle::U64(h) => (heap.size_of(h), heap.len_of(h)),
        AnyHandle::Bytes(h) => (heap.size_of(h), heap.len_of(h)),
        AnyHandle::Str(h) => (heap.size_of(h), heap.len_of(h)),
        AnyHandle::Tracked(h) => (heap.size_of(h), heap.len_of(h)),
        AnyHandle::TrackedSlice(h) => (heap.size_of(h), heap.len_of(h)),
        AnyHandle::Zst(h) => (heap.size_of(h), heap.len_of(h)),
        AnyHandle::Aligned(h) => (heap.size_of(h), heap.len_of(h)),
        AnyHandle::PageAligned(h) => (heap.size_of(h), heap.len_of(h)),
    }
}

fn check<S: Subject>(heap: &S, log: &DropLog, m: &Model, held: &[Held<'_>]) {
    let seg = heap.segment_size();
    for &o in &m.live {
        match read(heap, m.objs[o].handle) {
            Ok(v) => assert_eq!(
                v.as_ref(),
                Some(&m.objs[o].expected),
                "live object {o} reads wrong"
            ),
            Err(BorrowError::BorrowedMut) => {
                assert!(
                    held.iter().any(|g| g.obj() == o && g.exclusive()),
                    "object {o}: BorrowedMut without a RefMut"
                )
            }
            Err(e) => panic!("object {o}: unexpected {e:?}"),
        }
    }
    for &o in &m.live {
        let e = &m.objs[o].expected;
        let (size, len) = sizes(heap, m.objs[o].handle);
        assert_eq!(size, Some(e.size()), "size_of object {o}");
        let want_len = match e {
            Expected::Bytes(b) => b.len(),
            Expected::Str(s) => s.len(),
            Expected::TrackedSlice(v) => v.len(),
            _ => 1,
        };
        assert_eq!(len, Some(want_len), "len_of object {o}");
    }
    for &o in m.dead.iter().rev().take(16) {
        assert_eq!(
            sizes(heap, m.objs[o].handle),
            (None, None),
            "stale object {o} has no size"
        );
    }
    let mut u64s: Vec<u64> = heap.handles::<u64>().iter().map(|h| h.to_bits()).collect();
    let mut want: Vec<u64> = m
        .live
        .iter()
        .filter_map(|&o| match m.objs[o].handle {
            AnyHandle::U64(h) => Some(h.to_bits()),
            _ => None,
        })
        .collect();
    u64s.sort_unstable();
    want.sort_unstable();
    assert_eq!(u64s, want, "handles::<u64>() lists exactly the live u64s");
    for g in held {
        let o = g.obj();
        assert_eq!(
            g.read(),
            m.objs[o].expected,
            "held guard of object {o} reads wrong"
        );
        if !g.exclusive() && !m.objs[o].zombie {
            assert_eq!(
                addr_of(heap, m.objs[o].handle),
                Some(g.addr()),
                "pinned object {o} moved"
            );
        }
    }
    for &o in m.dead.iter().rev().take(64) {
        assert_eq!(
            read(heap, m.objs[o].handle),
            Ok(None),
            "stale handle of object {o} must read None"
        );
    }
    let st = heap.stats();
    let live_bytes: usize = m.live.iter().map(|&o| m.objs[o].expected.size()).sum();
    let pinned: HashSet<usize> = held.iter().map(Held::obj).collect();
    let mapped: Vec<&Expected> = m
        .live
        .iter()
        .chain(m.dead.iter().filter(|&&o| m.objs[o].zombie))
        .map(|&o| &m.objs[o].expected)
        .filter(|e| is_large(e, seg))
        .collect();
    let large_bytes: usize = mapped
        .iter()
        .map(|e| (e.size() + e.align().saturating_sub(4096)).next_multiple_of(4096))
        .sum();
    assert_eq!(st.live_objects, m.live.len(), "stats.live_objects");
    assert_eq!(st.live_bytes, live_bytes, "stats.live_bytes");
    assert_eq!(st.pinned_objects, pinned.len(), "stats.pinned_objects");
    assert_eq!(st.large_objects, mapped.len(), "stats.large_objects");
    assert_eq!(st.large_bytes, large_bytes, "stats.large_bytes");
    assert_eq!(st.segment_bytes, st.segments * seg, "stats.segment_bytes");
    assert_eq!(
        st.held_bytes,
        st.segment_bytes + st.large_bytes + st.spare_bytes,
        "stats.held_bytes"
    );
    assert!(
        st.spare_bytes <= 2 * 12288 + seg,
        "at most two spare large mappings and one pooled segment"
    );
    assert_eq!(st.compactions, m.compactions, "stats.compactions");
    assert_eq!(
        st.bytes_moved,
        m.bytes_moved + st.paced_bytes_moved,
        "stats.bytes_moved: the program's compactions and the paced steps"
    );
    if st.live_objects > 0 {
        assert!(st.metadata_bytes > 0);
    }
    assert_eq!(
        log.dropped(),
        sorted(m.dropped.clone()),
        "values dropped so far"
    );
    let _ = HashMap::<u8, u8>::new;
}
