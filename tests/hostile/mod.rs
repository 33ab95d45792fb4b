//! Hostile programs: whole operation sequences that try to break a heap, run
//! against a model and checked after every step. Shared by the proptest
//! (tests/hostile.rs) and the cargo-fuzz target (fuzz/fuzz_targets/hostile.rs).
//!
//! A [`Program`] is a heap setup (segment size, maybe a memory limit) and a
//! list of [`Op`]s, both `Arbitrary`, so a fuzzer's bytes or proptest's
//! random bytes (through `arbitrary::Unstructured`) make one. The ops:
//! - allocate values of many shapes: `u8`, `u64`, a drop-tracked struct, a ZST
//!   with drop glue, `#[repr(align(256))]`, `#[repr(align(8192))]`, a
//!   `#[repr(align(65536))]` array of 320 KiB, byte slices from empty to three
//!   segments (and of lengths that give them the same mapping length as an
//!   over-aligned object's), `str`, `alloc_slice_fill`; fallible (`try_*`) or
//!   panicking, with or without a memory limit;
//! - `alloc_from_iter` with an iterator that may panic at item k and whose
//!   `size_hint` may lie; `alloc_slice_clone` with a `Clone` that may panic
//!   at element k;
//! - fragment the heap (allocate a run, free all but every k-th);
//! - read (`get`, every byte), write (`get_mut`), hold shared and exclusive
//!   guards across everything else (writing through them), `Ref::map` /
//!   `RefMut::map` to a part, with a closure that may panic, panic while
//!   holding a guard;
//! - free, remove, compact, `compact_step(budget)`, an allocation too large;
//! - values whose `Drop` panics, or re-enters the heap: allocates and frees,
//!   frees another object (which may re-enter in turn), compacts, steps. They
//!   reach the heap through a thread-local set for the program's run;
//! - a panic hook (installed once, quiet for expected panics) that re-enters
//!   the heap (`stats`, an allocation and its free) whenever an expected
//!   panic fires during an op, whether the program's or the heap's own.
//!
//! Re-entry into a [`SyncHeap`] runs on a helper thread that the caller waits
//! for with a deadline: if the heap holds its lock while user code or a panic
//! hook runs, that shows up as a reported deadlock instead of a hang.
//!
//! Checked after every step (and after every caught panic):
//! - every live handle reads its expected contents (sampled for big objects;
//!   `Get` reads every byte), through a fresh guard or the held one;
//! - a shared-pinned object is where it was when its guard was taken;
//! - stale handles read `None` (`Stale`), `free` of one returns false;
//! - `stats()`: live objects and bytes, pinned objects and large objects
//!   equal the model's; large bytes lie between the objects' page-rounded
//!   sizes and their fresh mappings' lengths (a spare may be shorter); held =
//!   segments + large + spare, and held never exceeds the memory limit;
//! - every value is dropped exactly once: when freed, when its last guard
//!   goes, when moved out and dropped, when an allocation fails (`try_alloc`
//!   gives it back intact; the others drop it), or when the heap drops;
//! - an allocation that fails leaves the heap's contents unchanged, and one
//!   fails under the memory limit only if the model cannot show it must fit
//!   (the segments a compacted heap needs, with slack and a segment per
//!   pinned object, plus the large mappings, within the limit);
//! - every panic that escapes an op is an expected one (deliberate, or the
//!   heap's documented `compact_heap:` panics), and a panicking `Drop` that
//!   ran made its op panic.
#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::panic::{self, catch_unwind, panic_any, resume_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::{mpsc, Arc, Once};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use compact_heap::{
    AllocError, BorrowError, Config, Handle, Heap, Object, Ref, RefMut, RemoveError, SyncHeap,
};

use crate::common::{
    set_zst_log, Aligned, DropLog, PageAligned, Subject, TestHeap, Tracked, ZstDrop,
};

// ---------------------------------------------------------------- programs

/// A heap setup and the operations to run on it.
#[derive(Arbitrary, Clone, Debug)]
pub struct Program {
    pub setup: Setup,
    pub ops: Vec<Op>,
}

impl Program {
    /// The program these bytes spell: a setup, then ops until the bytes run
    /// out (not `arbitrary_take_rest`, whose continuation bytes make random
    /// input spell only a couple of ops).
    pub fn from_bytes(bytes: &[u8]) -> Program {
        let mut u = Unstructured::new(bytes);
        let setup = Setup::arbitrary(&mut u).unwrap_or(Setup {
            segment: SegmentSize::K4,
            limit_segments: None,
        });
        let mut ops = Vec::new();
        while !u.is_empty() && ops.len() < MAX_OPS {
            match Op::arbitrary(&mut u) {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        Program { setup, ops }
    }
}

#[derive(Arbitrary, Clone, Copy, Debug)]
pub struct Setup {
    pub segment: SegmentSize,
    /// A memory limit of `4 + n % 29` segments.
    pub limit_segments: Option<u8>,
}

#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum SegmentSize {
    K4,
    K16,
    K64,
    M1,
}

impl Setup {
    pub fn segment_bytes(&self) -> usize {
        let s = match self.segment {
            SegmentSize::K4 => 4 << 10,
            SegmentSize::K16 => 16 << 10,
            SegmentSize::K64 => 64 << 10,
            SegmentSize::M1 => 1 << 20,
        };
        if cfg!(miri) {
            s.min(16 << 10)
        } else {
            s
        }
    }

    pub fn limit(&self) -> Option<usize> {
        if avoid("limit") {
            return None;
        }
        self.limit_segments
            .map(|n| (4 + n as usize % 29) * self.segment_bytes())
    }

    pub fn config(&self) -> Config {
        let c = Config::default().segment_size(self.segment_bytes());
        match self.limit() {
            Some(l) => c.memory_limit(l),
            None => c,
        }
    }
}

#[derive(Arbitrary, Clone, Debug)]
pub enum Op {
    /// Allocate a value; `fallible` uses `try_*` where the heap has it.
    Alloc {
        kind: Kind,
        fallible: bool,
    },
    /// A byte slice, made one of four ways.
    AllocBytes {
        size: Size,
        seed: u8,
        how: How,
    },
    /// An over-aligned large object: a [`Huge`] or a [`PageAligned`].
    AllocLarge {
        huge: bool,
        seed: u64,
        fallible: bool,
    },
    /// Free object i, then at once allocate a byte slice that fits where it
    /// was: the same mapping length if it was large, else the same size.
    Reuse {
        i: u16,
        shorter: u16,
        how: How,
    },
    /// `alloc_from_iter` of `len % 65` drop-tracked items; the iterator
    /// panics before item `panic_at`, its size hint may lie, and the item at
    /// `drop_panic_at` panics when dropped.
    AllocIter {
        len: u8,
        panic_at: Option<u8>,
        lie: Lie,
        drop_panic_at: Option<u8>,
    },
    /// `alloc_slice_clone` of `len % 17` items whose clone panics at `panic_at`.
    AllocClone {
        len: u8,
        panic_at: Option<u8>,
    },
    /// Allocate a run of byte slices (until the limit, if any), free all
    /// but every k-th, then maybe allocate a byte slice into the holes.
    Fragment {
        count: u8,
        size: u16,
        keep_every: u8,
        then: Option<(Size, How)>,
    },
    /// An allocation whose size overflows: must panic and change nothing.
    TooLarge,
    Get(u16),
    Write(u16, u64),
    /// Take a guard and keep it; `inner` maps it to a part of the object;
    /// on a conflict, `conflict_panics` uses `get`/`get_mut` (which panic).
    Hold {
        i: u16,
        exclusive: bool,
        inner: bool,
        conflict_panics: bool,
    },
    WriteHeld(u16, u64),
    Release(u16),
    /// `Ref::map`/`RefMut::map` with a closure that panics (or not, and the
    /// mapped guard is checked and dropped).
    Map {
        i: u16,
        exclusive: bool,
        panic: bool,
    },
    /// Panic while a guard is alive (it unpins during unwinding).
    PanicHolding {
        i: u16,
        exclusive: bool,
    },
    Free(u16),
    Remove(u16),
    Compact,
    CompactStep(u16),
}

#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum Kind {
    U8(u8),
    U64(u64),
    Tracked(u16),
    Zst,
    Aligned(u64),
    PageAligned(u32),
    Huge(u64),
    Bytes(Size, u8),
    Str(u8),
    Fill(Size, u8),
    Hostile(DropAct, u64),
}

/// A length, relative to the segment size where that matters.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum Size {
    /// 0..=32 bytes.
    Tiny(u8),
    /// Up to a quarter segment.
    Small(u16),
    /// Within 8 bytes of a quarter segment (where large objects start).
    Quarter(u8),
    /// From a quarter segment to three segments and a quarter.
    Multi(u16),
    /// A length whose large mapping is as long as a [`Huge`]'s (or shorter).
    NearHuge(u16),
    /// A length whose large mapping is as long as a [`PageAligned`]'s (or shorter).
    NearPage(u16),
}

/// What a [`Hostile`] value does when dropped.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum DropAct {
    Nothing,
    Panic,
    /// Allocate and free a value.
    Alloc,
    /// Free the object at this index (of those allocated so far).
    Free(u16),
    Compact,
    Step(u16),
}

/// How a byte slice is made.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum How {
    Slice,
    TrySlice,
    Fill,
    Iter,
}

#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum Lie {
    Honest,
    /// A lower bound far above the real count.
    TooHigh,
    /// `(0, Some(0))` while yielding items.
    TooLow,
}

/// Triage: `HOSTILE_AVOID=map_panic,hook,limit,overaligned` steers programs
/// around features (panicking map closures; the hook's re-entry; memory
/// limits; over-aligned large objects), to look for other failures while a
/// known one is unfixed.
fn avoid(what: &str) -> bool {
    std::env::var("HOSTILE_AVOID").is_ok_and(|v| v.split(',').any(|x| x == what))
}

const MAX_OPS: usize = if cfg!(miri) { 16 } else { 120 };
/// Stop allocating past this many live bytes (keeps a run's memory bounded).
const MAX_LIVE: usize = if cfg!(miri) { 1 << 20 } else { 48 << 20 };

// ---------------------------------------------------------------- values

/// Over-aligned and larger than a quarter segment: a large object whose
/// mapping's usable bytes start `offset` in.
#[repr(align(65536))]
pub struct Huge(pub [u8; HUGE_BYTES]);
pub const HUGE_BYTES: usize = 300 * 1024;
const HUGE_ALIGN: usize = 65536;

/// A drop-tracked value with a behaviour on drop; clones may panic.
pub struct Hostile {
    pub id: u64,
    pub data: u64,
    act: Act,
    log: Arc<DropLog>,
}

/// The resolved [`DropAct`].
#[derive(Clone, Copy, Debug)]
enum Act {
    Nothing,
    Panic,
    Reenter(Reentry),
}

/// The payload of every deliberate panic.
#[derive(Debug)]
pub struct Deliberate(pub &'static str);

impl Drop for Hostile {
    fn drop(&mut self) {
        self.log.push(self.id);
        match self.act {
            Act::Nothing => {}
            Act::Panic => {
                if !thread::panicking() {
                    panic_any(Deliberate("a Drop panics"));
                }
            }
            Act::Reenter(r) => reenter(r),
        }
    }
}

thread_local! {
    /// `alloc_slice_clone`: clones left before one panics, and the next clone's id.
    static CLONE_BUDGET: Cell<Option<usize>> = const { Cell::new(None) };
    static CLONE_ID: Cell<u64> = const { Cell::new(0) };
}

impl Clone for Hostile {
    fn clone(&self) -> Hostile {
        if let Some(left) = CLONE_BUDGET.get() {
            if left == 0 {
                panic_any(Deliberate("a Clone panics"));
            }
            CLONE_BUDGET.set(Some(left - 1));
        }
        let id = CLONE_ID.get();
        CLONE_ID.set(id + 1);
        Hostile {
            id,
            data: self.data,
            act: Act::Nothing,
            log: self.log.clone(),
        }
    }
}

/// An iterator of [`Hostile`] items that may panic and may lie about its length.
struct HostileIter {
    items: std::vec::IntoIter<Hostile>,
    yielded: usize,
    panic_at: Option<usize>,
    lie: Lie,
}

impl Iterator for HostileIter {
    type Item = Hostile;
    fn next(&mut self) -> Option<Hostile> {
        if self.panic_at == Some(self.yielded) {
            panic_any(Deliberate("an iterator panics"));
        }
        self.yielded += 1;
        self.items.next()
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.items.len();
        match self.lie {
            Lie::Honest => (n, Some(n)),
            Lie::TooHigh => (n + 1000, None),
            Lie::TooLow => (0, Some(0)),
        }
    }
}

// ------------------------------------------------------------ observation

/// Reading (and writing) a stored value the way the model does.
pub trait Poke {
    /// Its contents as words (a type tag first); big byte strings sampled
    /// unless `full`.
    fn observe(&self, full: bool) -> Vec<u64>;
    /// Overwrites the contents from `seed`, as [`Val::scribble`] does.
    fn scribble(&mut self, _seed: u64) {}
}

fn words(tag: u64, w: &[u64]) -> Vec<u64> {
    let mut v = vec![tag];
    v.extend_from_slice(w);
    v
}

fn bytes_obs(tag: u64, b: &[u8], full: bool) -> Vec<u64> {
    sampled(tag, b.len(), full, |i| b[i], || digest(b))
}

/// A digest of `b` by std's hasher: one call, not a loop the fuzzer instruments.
fn digest(b: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

/// The observation of `n` bytes, byte `i` being `at(i)`: the digest of all
/// of them (from `all`) if `full`, else the first and last 8 and 32 spread
/// between (all of them when there are at most 64).
fn sampled(
    tag: u64,
    n: usize,
    full: bool,
    at: impl Fn(usize) -> u8,
    all: impl FnOnce() -> u64,
) -> Vec<u64> {
    let mut v = vec![tag, n as u64];
    if full {
        v.push(all());
    } else if n <= 64 {
        v.extend((0..n).map(|i| at(i) as u64));
    } else {
        v.extend((0..8).chain(n - 8..n).map(|i| at(i) as u64));
        v.extend((0..32).map(|k| at(k * (n - 1) / 31) as u64));
    }
    v
}

/// Byte `i` of the pattern from `seed`: it repeats every 256 bytes.
fn pattern(seed: u64, i: usize) -> u8 {
    (seed as usize).wrapping_add(i.wrapping_mul(31)) as u8
}

/// `n` bytes of the pattern from `seed`.
fn patterned(seed: u64, n: usize) -> Vec<u8> {
    let period: Vec<u8> = (0..256).map(|i| pattern(seed, i)).collect();
    let mut v = period.repeat(n / 256 + 1);
    v.truncate(n);
    v
}

fn data3(seed: u64) -> [u64; 3] {
    [seed, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15), !seed]
}

fn check_align<T: ?Sized>(v: &T, align: usize) {
    assert_eq!(
        (v as *const T).cast::<u8>().addr() % align,
        0,
        "misaligned object"
    );
}

impl Poke for u8 {
    fn observe(&self, _: bool) -> Vec<u64> {
        words(1, &[*self as u64])
    }
    fn scribble(&mut self, seed: u64) {
        *self = seed as u8;
    }
}
impl Poke for u64 {
    fn observe(&self, _: bool) -> Vec<u64> {
        words(2, &[*self])
    }
    fn scribble(&mut self, seed: u64) {
        *self = seed;
    }
}
impl Poke for Tracked {
    fn observe(&self, _: bool) -> Vec<u64> {
        words(3, &[self.id, self.data[0], self.data[1], self.data[2]])
    }
    fn scribble(&mut self, seed: u64) {
        self.data = data3(seed);
    }
}
impl Poke for [u64; 3] {
    fn observe(&self, _: bool) -> Vec<u64> {
        words(4, self)
    }
    fn scribble(&mut self, seed: u64) {
        *self = data3(seed);
    }
}
impl Poke for ZstDrop {
    fn observe(&self, _: bool) -> Vec<u64> {
        words(5, &[])
    }
}
impl Poke for Aligned {
    fn observe(&self, _: bool) -> Vec<u64> {
        check_align(self, 256);
        words(6, &[self.0])
    }
    fn scribble(&mut self, seed: u64) {
        self.0 = seed;
    }
}
impl Poke for PageAligned {
    fn observe(&self, _: bool) -> Vec<u64> {
        check_align(self, 8192);
        words(7, &[self.0 as u64])
    }
    fn scribble(&mut self, seed: u64) {
        self.0 = seed as u32;
    }
}
impl Poke for Huge {
    fn observe(&self, full: bool) -> Vec<u64> {
        check_align(self, HUGE_ALIGN);
        bytes_obs(8, &self.0, full)
    }
    fn scribble(&mut self, seed: u64) {
        self.0[..8].copy_from_slice(&seed.to_le_bytes());
    }
}
impl Poke for [u8] {
    fn observe(&self, full: bool) -> Vec<u64> {
        bytes_obs(9, self, full)
    }
    fn scribble(&mut self, seed: u64) {
        let period = patterned(seed, 256);
        for chunk in self.chunks_mut(256) {
            chunk.copy_from_slice(&period[..chunk.len()]);
        }
    }
}
impl Poke for str {
    fn observe(&self, full: bool) -> Vec<u64> {
        bytes_obs(10, self.as_bytes(), full)
    }
}
impl Poke for Hostile {
    fn observe(&self, _: bool) -> Vec<u64> {
        words(11, &[self.id, self.data])
    }
    fn scribble(&mut self, seed: u64) {
        self.data = seed;
    }
}
impl Poke for [Hostile] {
    fn observe(&self, _: bool) -> Vec<u64> {
        let mut v = vec![12];
        v.extend(self.iter().flat_map(|h| [h.id, h.data]));
        v
    }
    fn scribble(&mut self, seed: u64) {
        for (i, h) in self.iter_mut().enumerate() {
            h.data = seed.wrapping_add(i as u64);
        }
    }
}

fn huge(seed: u64) -> Huge {
    let mut h = Huge([seed as u8 ^ 0x5A; HUGE_BYTES]);
    h.0[..8].copy_from_slice(&seed.to_le_bytes());
    h
}

/// What an object must read as.
#[derive(Clone, Debug, PartialEq)]
enum Val {
    U8(u8),
    U64(u64),
    Tracked(u64, [u64; 3]),
    Zst,
    Aligned(u64),
    PageAligned(u32),
    /// The seed and the fill byte of a [`Huge`].
    Huge(u64, u8),
    Bytes(Vec<u8>),
    Str(String),
    Hostile(u64, u64),
    HostileSlice(Vec<(u64, u64)>),
}

/// Which part of an object a guard shows.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Part {
    Whole,
    /// The `data` field of a `Tracked` or `Hostile`, the middle half of a byte slice.
    Inner,
}

fn middle(n: usize) -> core::ops::Range<usize> {
    n / 4..n / 4 + n / 2
}

impl Val {
    fn observe(&self, part: Part, full: bool) -> Vec<u64> {
        match (self, part) {
            (Val::U8(x), _) => x.observe(full),
            (Val::U64(x), _) => x.observe(full),
            (Val::Tracked(id, d), Part::Whole) => words(3, &[*id, d[0], d[1], d[2]]),
            (Val::Tracked(_, d), Part::Inner) => d.observe(full),
            (Val::Zst, _) => words(5, &[]),
            (Val::Aligned(x), _) => words(6, &[*x]),
            (Val::PageAligned(x), _) => words(7, &[*x as u64]),
            (Val::Huge(seed, fill), _) => {
                let head = seed.to_le_bytes();
                let all = || {
                    let mut b = vec![*fill; HUGE_BYTES];
                    b[..8].copy_from_slice(&head);
                    digest(&b)
                };
                sampled(
                    8,
                    HUGE_BYTES,
                    full,
                    |i| head.get(i).copied().unwrap_or(*fill),
                    all,
                )
            }
            (Val::Bytes(b), Part::Whole) => bytes_obs(9, b, full),
            (Val::Bytes(b), Part::Inner) => bytes_obs(9, &b[middle(b.len())], full),
            (Val::Str(s), _) => bytes_obs(10, s.as_bytes(), full),
            (Val::Hostile(id, d), Part::Whole) => words(11, &[*id, *d]),
            (Val::Hostile(_, d), Part::Inner) => d.observe(full),
            (Val::HostileSlice(v), _) => {
                let mut w = vec![12];
                w.extend(v.iter().flat_map(|&(id, d)| [id, d]));
                w
            }
        }
    }

    fn scribble(&mut self, part: Part, seed: u64) {
        match (self, part) {
            (Val::U8(x), _) => *x = seed as u8,
            (Val::U64(x), _) => *x = seed,
            (Val::Tracked(_, d), _) => *d = data3(seed),
            (Val::Aligned(x), _) => *x = seed,
            (Val::PageAligned(x), _) => *x = seed as u32,
            (Val::Huge(s, _), _) => *s = seed,
            (Val::Bytes(b), Part::Whole) => b.as_mut_slice().scribble(seed),
            (Val::Bytes(b), Part::Inner) => {
                let r = middle(b.len());
                b[r].scribble(seed)
            }
            (Val::Hostile(_, d), _) => *d = seed,
            (Val::HostileSlice(v), _) => {
                for (i, (_, d)) in v.iter_mut().enumerate() {
                    *d = seed.wrapping_add(i as u64);
                }
            }
            (Val::Zst | Val::Str(_), _) => {}
        }
    }

    fn size(&self) -> usize {
        match self {
            Val::U8(_) => 1,
            Val::U64(_) => 8,
            Val::Tracked(..) => size_of::<Tracked>(),
            Val::Zst => 0,
            Val::Aligned(_) => size_of::<Aligned>(),
            Val::PageAligned(_) => size_of::<PageAligned>(),
            Val::Huge(..) => size_of::<Huge>(),
            Val::Bytes(b) => b.len(),
            Val::Str(s) => s.len(),
            Val::Hostile(..) => size_of::<Hostile>(),
            Val::HostileSlice(v) => v.len() * size_of::<Hostile>(),
        }
    }

    fn align(&self) -> usize {
        match self {
            Val::Aligned(_) => 256,
            Val::PageAligned(_) => 8192,
            Val::Huge(..) => HUGE_ALIGN,
            Val::U8(_) | Val::Bytes(_) | Val::Str(_) => 1,
            _ => 8,
        }
    }
}

/// A handle of any kind the programs allocate.
#[derive(Clone, Copy, Debug)]
pub enum AnyHandle {
    U8(Handle<u8>),
    U64(Handle<u64>),
    Tracked(Handle<Tracked>),
    Zst(Handle<ZstDrop>),
    Aligned(Handle<Aligned>),
    PageAligned(Handle<PageAligned>),
    Huge(Handle<Huge>),
    Bytes(Handle<[u8]>),
    Str(Handle<str>),
    Hostile(Handle<Hostile>),
    HostileSlice(Handle<[Hostile]>),
}

/// Runs `$body` with `$h` bound to the typed handle, whatever its kind.
macro_rules! with_handle {
    ($any:expr, $h:ident => $body:expr) => {
        match $any {
            AnyHandle::U8($h) => $body,
            AnyHandle::U64($h) => $body,
            AnyHandle::Tracked($h) => $body,
            AnyHandle::Zst($h) => $body,
            AnyHandle::Aligned($h) => $body,
            AnyHandle::PageAligned($h) => $body,
            AnyHandle::Huge($h) => $body,
            AnyHandle::Bytes($h) => $body,
            AnyHandle::Str($h) => $body,
            AnyHandle::Hostile($h) => $body,
            AnyHandle::HostileSlice($h) => $body,
        }
    };
}

fn free_any<S: Subject>(heap: &S, h: AnyHandle) -> bool {
    with_handle!(h, h => heap.free(h))
}

/// A fresh shared guard's view: contents and address, or why there is none.
fn look<S: Subject>(heap: &S, h: AnyHandle, full: bool) -> Result<(Vec<u64>, usize), BorrowError> {
    fn go<S: Subject, T: ?Sized + Object + Sync + Poke>(
        heap: &S,
        h: Handle<T>,
        full: bool,
    ) -> Result<(Vec<u64>, usize), BorrowError> {
        let r = heap.try_get(h)?;
        Ok((r.observe(full), (&*r as *const T).cast::<u8>().addr()))
    }
    with_handle!(h, h => go(heap, h, full))
}

// ------------------------------------------------------------- re-entry

/// What user code (a `Drop`, the panic hook) does to the heap under test.
#[derive(Clone, Copy, Debug)]
pub enum Reentry {
    Stats,
    AllocFree,
    Free(AnyHandle),
    Compact,
    Step(usize),
}

impl Reentry {
    fn run<S: Subject>(self, heap: &S) {
        match self {
            Reentry::Stats => {
                let st = heap.stats();
                assert_eq!(
                    st.held_bytes,
                    st.segment_bytes + st.large_bytes + st.spare_bytes
                );
            }
            Reentry::AllocFree => {
                if let Ok(h) = heap.try_alloc(0x5EED_u64) {
                    assert_eq!(heap.get(h).map(|r| *r), Some(0x5EED));
                    assert!(heap.free(h));
                }
            }
            Reentry::Free(h) => {
                free_any(heap, h);
            }
            Reentry::Compact => {
                heap.compact();
            }
            Reentry::Step(budget) => {
                heap.compact_step(budget);
            }
        }
    }
}

/// A heap that hostile programs run on.
pub trait Target: Subject + Sized + 'static {
    /// Runs `act` on the heap, from user code on this thread.
    fn reenter(ctx: &Ctx<Self>, act: Reentry);
}

/// What re-entering code needs: the heap and the drop log.
pub struct Ctx<S> {
    pub heap: Arc<S>,
    pub log: Arc<DropLog>,
}

impl<S> Clone for Ctx<S> {
    fn clone(&self) -> Self {
        Ctx {
            heap: self.heap.clone(),
            log: self.log.clone(),
        }
    }
}

impl Target for TestHeap<Heap> {
    fn reenter(ctx: &Ctx<Self>, act: Reentry) {
        act.run(&*ctx.heap);
    }
}

/// How long a re-entry into a `SyncHeap` may wait for the lock.
const DEADLINE: Duration = Duration::from_secs(2);

impl Target for TestHeap<SyncHeap> {
    fn reenter(ctx: &Ctx<Self>, act: Reentry) {
        // On a helper thread, so that a lock this thread still holds shows up
        // as a missed deadline, not a hang. One stuck helper is enough.
        if STUCK.with(|s| !s.borrow().is_empty()) {
            return;
        }
        let ctx = ctx.clone();
        let (tx, rx) = mpsc::channel();
        let helper = thread::spawn(move || {
            set_zst_log(Some(ctx.log.clone()));
            set_reentry(&ctx);
            let _scope = ReentryScope;
            act.run(&*ctx.heap);
            let _ = tx.send(());
        });
        match rx.recv_timeout(DEADLINE) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                STUCK.with(|s| s.borrow_mut().push((helper, act)));
            }
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                if let Err(payload) = helper.join() {
                    // A Drop it ran panicked: pass that on, as on one thread.
                    if !thread::panicking() {
                        resume_unwind(payload);
                    }
                }
            }
        }
    }
}

type Reenter = Rc<dyn Fn(Reentry)>;

thread_local! {
    /// How user code on this thread reaches the heap under test.
    static REENTER: RefCell<Option<Reenter>> = const { RefCell::new(None) };
    /// Set while an op runs: expected panics then re-enter the heap.
    static ARMED: Cell<bool> = const { Cell::new(false) };
    /// Helper threads that missed the deadline.
    static STUCK: RefCell<Vec<(JoinHandle<()>, Reentry)>> = const { RefCell::new(Vec::new()) };
}

fn set_reentry<S: Target>(ctx: &Ctx<S>) {
    let ctx = ctx.clone();
    let f: Reenter = Rc::new(move |act| S::reenter(&ctx, act));
    REENTER.with(|r| *r.borrow_mut() = Some(f));
}

/// Clears this thread's re-entry when it goes, however the scope is left:
/// a thread-local must not be the one to drop the heap.
struct ReentryScope;

impl Drop for ReentryScope {
    fn drop(&mut self) {
        clear_reentry();
    }
}

fn clear_reentry() {
    let f = REENTER.with(|r| r.borrow_mut().take());
    drop(f);
}

fn reenter(act: Reentry) {
    let f = REENTER.with(|r| r.borrow().clone());
    if let Some(f) = f {
        f(act);
    }
}

/// Whether a panic payload is one the programs expect: deliberate, or the
/// heap's own documented panics.
fn expected(payload: &(dyn std::any::Any + Send)) -> bool {
    payload.is::<Deliberate>()
        || payload
            .downcast_ref::<String>()
            .is_some_and(|s| s.starts_with("compact_heap:"))
        || payload
            .downcast_ref::<&str>()
            .is_some_and(|s| s.starts_with("compact_heap:"))
}

fn is_oom(payload: &(dyn std::any::Any + Send)) -> bool {
    payload
        .downcast_ref::<String>()
        .is_some_and(|s| s.starts_with("compact_heap: out of memory"))
}

/// Installs (once per process) the panic hook: quiet for expected panics,
/// and re-entering the heap when one fires during an op.
pub fn install_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if expected(info.payload()) && (ARMED.get() || info.payload().is::<Deliberate>()) {
                if ARMED.get() && !avoid("hook") {
                    reenter(Reentry::Stats);
                    reenter(Reentry::AllocFree);
                }
                return;
            }
            previous(info);
        }));
    });
}

/// Fails if a re-entry into the heap missed its deadline (after letting it finish).
fn check_stuck() {
    let stuck = STUCK.with(|s| std::mem::take(&mut *s.borrow_mut()));
    if let Some((_, act)) = stuck.first() {
        let act = *act;
        for (t, _) in stuck {
            let _ = t.join();
        }
        panic!(
            "re-entering the heap ({act:?}) from user code or the panic hook waited more than \
             {DEADLINE:?}: the heap held its lock while running user code or panicking"
        );
    }
}

// ----------------------------------------------------------------- model

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    Live,
    /// Freed while pinned: the value waits for its last guard.
    Zombie,
    Dead,
}

struct Obj {
    handle: AnyHandle,
    val: Val,
    /// Drop ids its value logs.
    ids: Vec<u64>,
    /// Its value (or an element) panics when dropped.
    bomb: bool,
    /// Its drop frees this object.
    victim: Option<usize>,
    state: State,
    pins: usize,
    exclusive: bool,
}

struct Model {
    objs: Vec<Obj>,
    next_id: u64,
    dropped: Vec<u64>,
    seg: usize,
    limit: Option<usize>,
    /// Set when a value that panics on drop was dropped during this op.
    bomb_dropped: bool,
    /// Re-entry from drops is on (off once the heap is about to drop).
    reentry: bool,
    /// Ids of values that never were objects (the sources of clones).
    transient: Vec<u64>,
}

fn is_large(size: usize, align: usize, seg: usize) -> bool {
    size > 0 && (size > seg / 4 || align > 4096)
}

fn mapping_len(size: usize, align: usize) -> usize {
    (size + align.saturating_sub(4096)).next_multiple_of(4096)
}

impl Model {
    fn live(&self) -> Vec<usize> {
        (0..self.objs.len())
            .filter(|&o| self.objs[o].state == State::Live)
            .collect()
    }

    fn pick(&self, i: u16) -> Option<usize> {
        let live = self.live();
        (!live.is_empty()).then(|| live[i as usize % live.len()])
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn live_bytes(&self) -> usize {
        self.live().iter().map(|&o| self.objs[o].val.size()).sum()
    }

    /// The value of `o` has just been dropped (its `Drop` ran).
    fn value_dropped(&mut self, o: usize) {
        let ids = self.objs[o].ids.clone();
        self.dropped.extend(ids);
        self.bomb_dropped |= self.objs[o].bomb;
        if let (Some(v), true) = (self.objs[o].victim, self.reentry) {
            self.free(v);
        }
    }

    /// `free` of `o`'s handle (by the program or by a drop).
    fn free(&mut self, o: usize) {
        if self.objs[o].state != State::Live {
            return;
        }
        if self.objs[o].pins > 0 {
            self.objs[o].state = State::Zombie;
        } else {
            self.objs[o].state = State::Dead;
            self.value_dropped(o);
        }
    }

    /// A guard of `o` went.
    fn unpin(&mut self, o: usize) {
        self.objs[o].pins -= 1;
        self.objs[o].exclusive = false;
        if self.objs[o].pins == 0 && self.objs[o].state == State::Zombie {
            self.objs[o].state = State::Dead;
            self.value_dropped(o);
        }
    }

    fn add(
        &mut self,
        handle: AnyHandle,
        val: Val,
        ids: Vec<u64>,
        bomb: bool,
        victim: Option<usize>,
    ) {
        self.objs.push(Obj {
            handle,
            val,
            ids,
            bomb,
            victim,
            state: State::Live,
            pins: 0,
            exclusive: false,
        });
    }

    /// Whether an allocation of `size` bytes aligned to `align` must succeed:
    /// always without a limit; under one, when what a compacted heap needs
    /// fits in the limit, counted with slack: the movable small objects (with
    /// alignment and line slack) at three quarters full, a whole segment for
    /// each pinned small object (live or waiting for its guard), three more
    /// for the cursor and the new object, all times [`FIT_SLACK`], plus the
    /// large mappings (pinned and waiting ones too) and the new object's.
    fn must_fit(&self, size: usize, align: usize) -> bool {
        let Some(limit) = self.limit else { return true };
        let seg = self.seg;
        let (mut movable, mut pinned, mut large) = (0, 0, 0);
        let shapes = self
            .objs
            .iter()
            .filter(|o| o.state != State::Dead)
            .map(|o| {
                (
                    o.val.size(),
                    o.val.align(),
                    o.pins > 0 || o.state == State::Zombie,
                )
            })
            .chain([(size, align, false)]);
        for (size, align, stuck) in shapes {
            if size == 0 {
            } else if is_large(size, align, seg) {
                large += mapping_len(size, align);
            } else if stuck {
                pinned += 1;
            } else {
                movable += (size + align - 1).next_multiple_of(128);
            }
        }
        let segments = movable.div_ceil(seg * 3 / 4) + pinned + 3;
        FIT_SLACK * segments * seg + large <= limit
    }
}

/// How many times the segments a perfectly compacted heap would need the
/// limit must allow before an allocation must succeed.
const FIT_SLACK: usize = 1;

fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort_unstable();
    v
}

// ---------------------------------------------------------------- guards

/// A guard the program keeps, of any type.
trait HeldGuard {
    fn observe(&self, full: bool) -> Vec<u64>;
    /// Writes through it; false for a shared guard.
    fn scribble(&mut self, seed: u64) -> bool;
}

impl<T: ?Sized + Poke> HeldGuard for Ref<'_, T> {
    fn observe(&self, full: bool) -> Vec<u64> {
        (**self).observe(full)
    }
    fn scribble(&mut self, _: u64) -> bool {
        false
    }
}

impl<T: ?Sized + Poke> HeldGuard for RefMut<'_, T> {
    fn observe(&self, full: bool) -> Vec<u64> {
        (**self).observe(full)
    }
    fn scribble(&mut self, seed: u64) -> bool {
        (**self).scribble(seed);
        true
    }
}

struct Held<'h> {
    guard: Box<dyn HeldGuard + 'h>,
    obj: usize,
    exclusive: bool,
    part: Part,
    /// The object's address when the guard was taken.
    addr: usize,
}

/// What taking a guard gave.
enum Took<'h> {
    Guard(Box<dyn HeldGuard + 'h>, usize),
    /// The map closure panicked (deliberately): no guard.
    MapPanicked,
}

/// Takes a guard of `h`, mapped to a part by `inner` when `part` is `Inner`;
/// `panic` makes the map closure panic.
#[allow(clippy::type_complexity)]
fn take<'h, S, T, U>(
    heap: &'h S,
    h: Handle<T>,
    exclusive: bool,
    part: Part,
    panic: bool,
    inner: (fn(&T) -> &U, fn(&mut T) -> &mut U),
) -> Result<Took<'h>, BorrowError>
where
    S: Subject,
    T: ?Sized + Object + Sync + Poke,
    U: ?Sized + Poke + 'h,
{
    let boom = move || {
        if panic {
            panic_any(Deliberate("a map closure panics"));
        }
    };
    if exclusive {
        let w = heap.try_get_mut(h)?;
        let addr = (&*w as *const T).cast::<u8>().addr();
        if part == Part::Whole && !panic {
            return Ok(Took::Guard(Box::new(w), addr));
        }
        let mapped = catch_unwind(AssertUnwindSafe(|| {
            if part == Part::Whole {
                Box::new(RefMut::map(w, |t| {
                    boom();
                    t
                })) as Box<dyn HeldGuard + 'h>
            } else {
                Box::new(RefMut::map(w, |t| {
                    boom();
                    (inner.1)(t)
                }))
            }
        }));
        Ok(match mapped {
            Ok(g) => Took::Guard(g, addr),
            Err(p) if p.is::<Deliberate>() => Took::MapPanicked,
            Err(p) => resume_unwind(p),
        })
    } else {
        let r = heap.try_get(h)?;
        let addr = (&*r as *const T).cast::<u8>().addr();
        if part == Part::Whole && !panic {
            return Ok(Took::Guard(Box::new(r), addr));
        }
        let mapped = catch_unwind(AssertUnwindSafe(|| {
            if part == Part::Whole {
                Box::new(Ref::map(r, |t| {
                    boom();
                    t
                })) as Box<dyn HeldGuard + 'h>
            } else {
                Box::new(Ref::map(r, |t| {
                    boom();
                    (inner.0)(t)
                }))
            }
        }));
        Ok(match mapped {
            Ok(g) => Took::Guard(g, addr),
            Err(p) if p.is::<Deliberate>() => Took::MapPanicked,
            Err(p) => resume_unwind(p),
        })
    }
}

/// [`take`] for any kind: kinds with a part map to it, the others use `Whole`.
fn take_any<'h, S: Subject>(
    heap: &'h S,
    h: AnyHandle,
    exclusive: bool,
    part: Part,
    panic: bool,
) -> (Part, Result<Took<'h>, BorrowError>) {
    macro_rules! whole {
        ($h:expr) => {
            (
                Part::Whole,
                take(heap, $h, exclusive, Part::Whole, panic, (|t| t, |t| t)),
            )
        };
    }
    match h {
        AnyHandle::U64(h) => (part, take(heap, h, exclusive, part, panic, (|t| t, |t| t))),
        AnyHandle::Tracked(h) => (
            part,
            take(
                heap,
                h,
                exclusive,
                part,
                panic,
                (|t| &t.data, |t| &mut t.data),
            ),
        ),
        AnyHandle::Hostile(h) => (
            part,
            take(
                heap,
                h,
                exclusive,
                part,
                panic,
                (|t| &t.data, |t| &mut t.data),
            ),
        ),
        AnyHandle::Bytes(h) => (
            part,
            take(
                heap,
                h,
                exclusive,
                part,
                panic,
                (
                    |t| {
                        let r = middle(t.len());
                        &t[r]
                    },
                    |t| {
                        let r = middle(t.len());
                        &mut t[r]
                    },
                ),
            ),
        ),
        AnyHandle::U8(h) => whole!(h),
        AnyHandle::Zst(h) => whole!(h),
        AnyHandle::Aligned(h) => whole!(h),
        AnyHandle::PageAligned(h) => whole!(h),
        AnyHandle::Huge(h) => whole!(h),
        AnyHandle::Str(h) => whole!(h),
        AnyHandle::HostileSlice(h) => whole!(h),
    }
}

// ------------------------------------------------------------ interpreter

/// Runs `program` on a fresh heap of type `S`, checking it against the
/// model after every step, then drops the heap and checks that every value
/// was dropped exactly once.
pub fn run<S: Target>(program: &Program) {
    install_hook();
    let setup = program.setup;
    let log = Arc::new(DropLog::default());
    let ctx = Ctx {
        heap: Arc::new(S::build(setup.config())),
        log: log.clone(),
    };
    set_zst_log(Some(log.clone()));
    set_reentry(&ctx);
    let scope = ReentryScope;
    let mut m = Model {
        objs: Vec::new(),
        next_id: 0,
        dropped: Vec::new(),
        seg: setup.segment_bytes(),
        limit: setup.limit(),
        bomb_dropped: false,
        reentry: true,
        transient: Vec::new(),
    };
    {
        let heap = &*ctx.heap;
        let mut held: Vec<Held<'_>> = Vec::new();
        for op in program.ops.iter().take(MAX_OPS) {
            if std::env::var_os("HOSTILE_DEBUG").is_some() {
                eprintln!("{op:?}");
            }
            m.bomb_dropped = false;
            ARMED.set(true);
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                step(heap, &log, &mut m, &mut held, op);
            }));
            ARMED.set(false);
            check_stuck();
            if let Err(payload) = outcome {
                if !expected(&*payload) {
                    resume_unwind(payload);
                }
                // An expected panic that escaped a step's own handling: only a
                // panicking Drop the step ran may do that.
                assert!(
                    m.bomb_dropped,
                    "{op:?} panicked ({:?}) with no panicking Drop",
                    payload.downcast_ref::<Deliberate>()
                );
            }
            check(heap, &log, &m, &held);
        }
        // Let go of every guard: zombies drop now.
        while let Some(g) = held.pop() {
            m.bomb_dropped = false;
            let o = g.obj;
            ARMED.set(true);
            let r = catch_unwind(AssertUnwindSafe(|| drop(g)));
            ARMED.set(false);
            check_stuck();
            m.unpin(o);
            settle(r, &m, "the last release");
            check(heap, &log, &m, &held);
        }
    }
    drop(scope);
    m.reentry = false;
    assert_eq!(
        log.dropped(),
        sorted(m.dropped.clone()),
        "drops before the heap ends"
    );
    // The heap's end: every value left drops now, once (a panicking Drop
    // does not stop the others).
    let Ctx { heap, log: _ } = ctx;
    let heap = Arc::try_unwrap(heap).unwrap_or_else(|_| panic!("no other reference to the heap"));
    let bombs = m.live().iter().any(|&o| m.objs[o].bomb);
    ARMED.set(true);
    let r = catch_unwind(AssertUnwindSafe(move || drop(heap)));
    ARMED.set(false);
    if let Err(p) = &r {
        assert!(expected(&**p), "dropping the heap panicked unexpectedly");
    }
    assert_eq!(
        r.is_err(),
        bombs,
        "the heap's drop panics iff a value's Drop panics"
    );
    let all: Vec<u64> = m
        .objs
        .iter()
        .flat_map(|o| o.ids.clone())
        .chain(m.transient.iter().copied())
        .collect();
    assert_eq!(
        log.dropped(),
        sorted(all),
        "every value dropped exactly once"
    );
    set_zst_log(None);
}

/// After a step that may have panicked: the panic must be expected, and a
/// panicking Drop that ran must have made it panic.
fn settle(r: std::thread::Result<()>, m: &Model, what: &str) {
    match r {
        Ok(()) => assert!(
            !m.bomb_dropped,
            "{what}: a panicking Drop ran but nothing panicked"
        ),
        Err(p) if expected(&*p) => {}
        Err(p) => resume_unwind(p),
    }
}

/// Drops `v` (a value the program got back), which may panic.
fn drop_value<T>(v: T) -> std::thread::Result<()> {
    catch_unwind(AssertUnwindSafe(move || drop(v)))
}

fn resolve(size: Size, seg: usize) -> usize {
    let n = match size {
        Size::Tiny(n) => n as usize % 33,
        Size::Small(n) => n as usize % (seg / 4 + 1),
        Size::Quarter(n) => seg / 4 - 8 + n as usize % 17,
        Size::Multi(n) => seg / 4 + (n as usize * 3 * seg) / 65536,
        Size::NearHuge(d) => mapping_len(size_of::<Huge>(), HUGE_ALIGN) - d as usize % 8192,
        Size::NearPage(d) => mapping_len(8192, 8192) - d as usize % 8192,
    };
    if cfg!(miri) {
        n.min(16 << 10)
    } else {
        n
    }
}

/// Allocates `value` (fallibly or not) and records it; checks failure.
#[allow(clippy::too_many_arguments)]
fn put<S: Subject, T: Send + Sync + Poke + 'static>(
    heap: &S,
    m: &mut Model,
    fallible: bool,
    value: T,
    wrap: fn(Handle<T>) -> AnyHandle,
    val: Val,
    ids: Vec<u64>,
    bomb: bool,
    victim: Option<usize>,
) {
    let (size, align) = (val.size(), val.align());
    let before = m.live_bytes();
    if fallible {
        match heap.try_alloc(value) {
            Ok(h) => m.add(wrap(h), val, ids, bomb, victim),
            Err((v, e)) => {
                assert_eq!(e, AllocError::OutOfMemory);
                assert_eq!(
                    v.observe(true),
                    val.observe(Part::Whole, true),
                    "try_alloc gives the value back intact"
                );
                alloc_failed(m, size, align, before);
                let o = m.objs.len();
                m.add(wrap(Handle::from_bits(u64::MAX)), val, ids, bomb, victim);
                m.objs[o].state = State::Dead;
                m.value_dropped(o);
                let r = drop_value(v);
                if let Err(p) = r {
                    resume_unwind(p);
                }
            }
        }
    } else {
        let o = m.objs.len();
        m.add(wrap(Handle::from_bits(u64::MAX)), val, ids, bomb, victim);
        match catch_unwind(AssertUnwindSafe(|| heap.alloc(value))) {
            Ok(h) => m.objs[o].handle = wrap(h),
            Err(p) => {
                assert!(
                    is_oom(&*p),
                    "alloc panicked: {:?}",
                    p.downcast_ref::<String>()
                );
                m.objs[o].state = State::Dead; // it never was live
                alloc_failed(m, size, align, before);
                // The value was dropped by `alloc`, during its panic.
                m.value_dropped(o);
                m.bomb_dropped = false; // it could not panic while unwinding
            }
        }
    }
}

/// An allocation failed: only allowed under a limit the model cannot rule out.
fn alloc_failed(m: &Model, size: usize, align: usize, live_before: usize) {
    assert_eq!(m.live_bytes(), live_before);
    assert!(
        !m.must_fit(size, align),
        "an allocation of {size} bytes (align {align}) failed under the limit {:?} with {} live \
         bytes in {}-byte segments, {} objects pinned: it must fit after compaction",
        m.limit,
        live_before,
        m.seg,
        m.objs.iter().filter(|o| o.pins > 0).count()
    );
}

fn step<'h, S: Subject>(
    heap: &'h S,
    log: &Arc<DropLog>,
    m: &mut Model,
    held: &mut Vec<Held<'h>>,
    op: &Op,
) {
    let seg = m.seg;
    match *op {
        Op::Alloc { kind, fallible } => {
            // Under Miri a Huge costs minutes; PageAligned objects get mappings
            // with an offset there too (Miri's mappings are page-aligned).
            if m.live_bytes() > MAX_LIVE
                || (matches!(kind, Kind::PageAligned(_) | Kind::Huge(_)) && avoid("overaligned"))
                || (matches!(kind, Kind::Huge(_)) && cfg!(miri))
            {
                return;
            }
            match kind {
                Kind::U8(x) => put(
                    heap,
                    m,
                    fallible,
                    x,
                    AnyHandle::U8,
                    Val::U8(x),
                    vec![],
                    false,
                    None,
                ),
                Kind::U64(x) => put(
                    heap,
                    m,
                    fallible,
                    x,
                    AnyHandle::U64,
                    Val::U64(x),
                    vec![],
                    false,
                    None,
                ),
                Kind::Tracked(seed) => {
                    let id = m.id();
                    let t = Tracked {
                        id,
                        data: data3(seed as u64),
                        log: log.clone(),
                    };
                    put(
                        heap,
                        m,
                        fallible,
                        t,
                        AnyHandle::Tracked,
                        Val::Tracked(id, data3(seed as u64)),
                        vec![id],
                        false,
                        None,
                    )
                }
                Kind::Zst => put(
                    heap,
                    m,
                    fallible,
                    ZstDrop,
                    AnyHandle::Zst,
                    Val::Zst,
                    vec![0],
                    false,
                    None,
                ),
                Kind::Aligned(x) => put(
                    heap,
                    m,
                    fallible,
                    Aligned(x),
                    AnyHandle::Aligned,
                    Val::Aligned(x),
                    vec![],
                    false,
                    None,
                ),
                Kind::PageAligned(x) => put(
                    heap,
                    m,
                    fallible,
                    PageAligned(x),
                    AnyHandle::PageAligned,
                    Val::PageAligned(x),
                    vec![],
                    false,
                    None,
                ),
                Kind::Huge(seed) => {
                    let v = huge(seed);
                    put(
                        heap,
                        m,
                        fallible,
                        v,
                        AnyHandle::Huge,
                        Val::Huge(seed, seed as u8 ^ 0x5A),
                        vec![],
                        false,
                        None,
                    )
                }
                Kind::Hostile(act, data) => {
                    let id = m.id();
                    let (act, victim) = match act {
                        DropAct::Nothing => (Act::Nothing, None),
                        DropAct::Panic => (Act::Panic, None),
                        DropAct::Alloc => (Act::Reenter(Reentry::AllocFree), None),
                        DropAct::Compact => (Act::Reenter(Reentry::Compact), None),
                        DropAct::Step(b) => {
                            (Act::Reenter(Reentry::Step(b as usize * 16 + 1)), None)
                        }
                        DropAct::Free(i) if !m.objs.is_empty() => {
                            let v = i as usize % m.objs.len();
                            (Act::Reenter(Reentry::Free(m.objs[v].handle)), Some(v))
                        }
                        DropAct::Free(_) => (Act::Nothing, None),
                    };
                    let bomb = matches!(act, Act::Panic);
                    let h = Hostile {
                        id,
                        data,
                        act,
                        log: log.clone(),
                    };
                    put(
                        heap,
                        m,
                        fallible,
                        h,
                        AnyHandle::Hostile,
                        Val::Hostile(id, data),
                        vec![id],
                        bomb,
                        victim,
                    )
                }
                Kind::Bytes(size, seed) => {
                    let how = if fallible { How::TrySlice } else { How::Slice };
                    alloc_bytes(heap, m, resolve(size, seg), seed, how);
                }
                Kind::Str(len) => {
                    let s: String = (0..len as usize)
                        .map(|i| char::from(b'a' + (i % 26) as u8))
                        .collect();
                    let before = m.live_bytes();
                    let r = if fallible {
                        heap.try_alloc_str(&s).map_err(|_| ())
                    } else {
                        catch_unwind(AssertUnwindSafe(|| heap.alloc_str(&s)))
                            .map_err(|p| assert!(is_oom(&*p)))
                    };
                    match r {
                        Ok(h) => m.add(AnyHandle::Str(h), Val::Str(s), vec![], false, None),
                        Err(()) => alloc_failed(m, s.len(), 1, before),
                    }
                }
                Kind::Fill(size, b) => alloc_bytes(heap, m, resolve(size, seg), b, How::Fill),
            }
        }
        Op::AllocBytes { size, seed, how } => {
            if m.live_bytes() <= MAX_LIVE {
                alloc_bytes(heap, m, resolve(size, seg), seed, how);
            }
        }
        Op::AllocLarge {
            huge: big,
            seed,
            fallible,
        } => {
            if avoid("overaligned") || (big && cfg!(miri)) {
            } else if big {
                let v = huge(seed);
                let val = Val::Huge(seed, seed as u8 ^ 0x5A);
                put(
                    heap,
                    m,
                    fallible,
                    v,
                    AnyHandle::Huge,
                    val,
                    vec![],
                    false,
                    None,
                );
            } else {
                let (v, val) = (PageAligned(seed as u32), Val::PageAligned(seed as u32));
                put(
                    heap,
                    m,
                    fallible,
                    v,
                    AnyHandle::PageAligned,
                    val,
                    vec![],
                    false,
                    None,
                );
            }
        }
        Op::Reuse { i, shorter, how } => {
            let Some(o) = m.pick(i) else { return };
            let (size, align) = (m.objs[o].val.size(), m.objs[o].val.align());
            let n = if is_large(size, align, seg) {
                let len = mapping_len(size, align);
                len - shorter as usize % len.min(8192)
            } else {
                size
            };
            if m.objs[o].pins > 0 || (cfg!(miri) && n > 16 << 10) {
                return;
            }
            let h = m.objs[o].handle;
            m.free(o);
            let r = catch_unwind(AssertUnwindSafe(|| assert!(free_any(heap, h))));
            settle(r, m, "Reuse");
            alloc_bytes(heap, m, n, shorter as u8, how);
        }
        Op::AllocIter {
            len,
            panic_at,
            lie,
            drop_panic_at,
        } => {
            let n = len as usize % 65;
            let first = m.next_id + 1;
            let items: Vec<Hostile> = (0..n)
                .map(|i| Hostile {
                    id: m.id(),
                    data: i as u64 * 3,
                    act: if drop_panic_at.map(|k| k as usize % n.max(1)) == Some(i) {
                        Act::Panic
                    } else {
                        Act::Nothing
                    },
                    log: log.clone(),
                })
                .collect();
            let vals: Vec<(u64, u64)> = items.iter().map(|h| (h.id, h.data)).collect();
            let panic_at = panic_at.map(|k| k as usize % (n + 1));
            let iter = HostileIter {
                items: items.into_iter(),
                yielded: 0,
                panic_at,
                lie,
            };
            let before = m.live_bytes();
            let ids: Vec<u64> = (first..first + n as u64).collect();
            let bomb = n > 0 && drop_panic_at.is_some();
            let o = m.objs.len();
            m.add(
                AnyHandle::Zst(Handle::from_bits(u64::MAX)),
                Val::HostileSlice(vals),
                ids,
                bomb,
                None,
            );
            match catch_unwind(AssertUnwindSafe(|| heap.alloc_from_iter(iter))) {
                Ok(h) => {
                    assert!(panic_at.is_none(), "the iterator was to panic");
                    m.objs[o].handle = AnyHandle::HostileSlice(h);
                }
                Err(p) => {
                    m.objs[o].state = State::Dead; // it never was live
                    if p.is::<Deliberate>() {
                        assert!(panic_at.is_some(), "a Drop panicked while collecting?");
                    } else {
                        assert!(
                            is_oom(&*p),
                            "alloc_from_iter panicked: {:?}",
                            p.downcast_ref::<String>()
                        );
                        alloc_failed(m, n * size_of::<Hostile>(), 8, before);
                    }
                    // Every item was dropped (collected ones during the unwind,
                    // the rest with the iterator): none can panic then.
                    m.value_dropped(o);
                    m.bomb_dropped = false;
                }
            }
        }
        Op::AllocClone { len, panic_at } => {
            let n = len as usize % 17;
            let src: Vec<Hostile> = (0..n)
                .map(|i| Hostile {
                    id: m.id(),
                    data: 100 + i as u64,
                    act: Act::Nothing,
                    log: log.clone(),
                })
                .collect();
            let src_ids: Vec<u64> = src.iter().map(|h| h.id).collect();
            let panic_at = panic_at.filter(|_| n > 0).map(|k| k as usize % n);
            let first = m.next_id + 1;
            CLONE_ID.set(first);
            CLONE_BUDGET.set(panic_at);
            let before = m.live_bytes();
            let r = catch_unwind(AssertUnwindSafe(|| heap.alloc_slice_clone(&src)));
            CLONE_BUDGET.set(None);
            let made = (CLONE_ID.get() - first) as usize;
            m.next_id += made as u64;
            let vals: Vec<(u64, u64)> = (0..made)
                .map(|i| (first + i as u64, 100 + i as u64))
                .collect();
            let ids: Vec<u64> = vals.iter().map(|v| v.0).collect();
            let o = m.objs.len();
            m.add(
                AnyHandle::Zst(Handle::from_bits(u64::MAX)),
                Val::HostileSlice(vals),
                ids,
                false,
                None,
            );
            match r {
                Ok(h) => {
                    assert!(panic_at.is_none(), "the clone was to panic");
                    assert_eq!(made, n);
                    m.objs[o].handle = AnyHandle::HostileSlice(h);
                }
                Err(p) => {
                    m.objs[o].state = State::Dead; // it never was live
                    if p.is::<Deliberate>() {
                        assert_eq!(Some(made), panic_at, "clones made before the panic");
                    } else {
                        assert!(
                            is_oom(&*p),
                            "alloc_slice_clone panicked: {:?}",
                            p.downcast_ref::<String>()
                        );
                        alloc_failed(m, n * size_of::<Hostile>(), 8, before);
                    }
                    m.value_dropped(o);
                }
            }
            drop(src);
            m.dropped.extend(&src_ids);
            m.transient.extend(src_ids);
        }
        Op::Fragment {
            count,
            size,
            keep_every,
            then,
        } => {
            let count = count as usize + 1;
            let count = if cfg!(miri) { count.min(32) } else { count };
            let size = 16 + size as usize % (seg / 4 - 15);
            let keep = 2 + keep_every as usize % 8;
            let mut run = Vec::new();
            for k in 0..count {
                if m.live_bytes() > MAX_LIVE {
                    break;
                }
                let b = patterned(k as u64, size);
                match heap.try_alloc_slice(&b) {
                    Ok(h) => {
                        run.push(m.objs.len());
                        m.add(AnyHandle::Bytes(h), Val::Bytes(b), vec![], false, None);
                    }
                    Err(_) => {
                        alloc_failed(m, size, 1, m.live_bytes());
                        break;
                    }
                }
            }
            for (k, &o) in run.iter().enumerate() {
                if k % keep != 0 {
                    assert!(free_any(heap, m.objs[o].handle));
                    m.free(o);
                }
            }
            if let Some((size, how)) = then {
                alloc_bytes(heap, m, resolve(size, seg), keep as u8, how);
            }
        }
        Op::TooLarge => {
            let r = catch_unwind(AssertUnwindSafe(|| {
                heap.alloc_slice_fill(usize::MAX / 4, 0u64)
            }));
            let p = r.expect_err("an allocation of usize::MAX / 4 u64s must fail");
            assert!(
                p.downcast_ref::<String>()
                    .is_some_and(|s| s.contains("too large")),
                "TooLarge panics with its reason"
            );
        }
        Op::Get(i) => {
            let Some(o) = m.pick(i) else { return };
            match look(heap, m.objs[o].handle, true) {
                Ok((got, _)) => assert_eq!(
                    got,
                    m.objs[o].val.observe(Part::Whole, true),
                    "object {o} reads wrong"
                ),
                Err(BorrowError::BorrowedMut) => assert!(m.objs[o].exclusive),
                Err(e) => panic!("object {o}: {e:?}"),
            }
        }
        Op::Write(i, seed) => {
            let Some(o) = m.pick(i) else { return };
            if m.objs[o].pins > 0 {
                return;
            }
            fn go<S: Subject, T: ?Sized + Object + Sync + Poke>(heap: &S, h: Handle<T>, seed: u64) {
                heap.get_mut(h).expect("live").scribble(seed);
            }
            with_handle!(m.objs[o].handle, h => go(heap, h, seed));
            m.objs[o].val.scribble(Part::Whole, seed);
        }
        Op::Hold {
            i,
            exclusive,
            inner,
            conflict_panics,
        } => {
            let Some(o) = m.pick(i) else { return };
            let conflict = m.objs[o].exclusive || (exclusive && m.objs[o].pins > 0);
            let h = m.objs[o].handle;
            if conflict && conflict_panics {
                let r = catch_unwind(AssertUnwindSafe(
                    || with_handle!(h, h => if exclusive { heap.get_mut(h).map(drop).is_some() } else { heap.get(h).map(drop).is_some() }),
                ));
                let p = r.expect_err("a conflicting get/get_mut must panic");
                assert!(
                    p.downcast_ref::<String>()
                        .is_some_and(|s| s.contains("already")),
                    "borrow conflict message"
                );
                return;
            }
            let part = if inner { Part::Inner } else { Part::Whole };
            let (part, took) = take_any(heap, h, exclusive, part, false);
            match took {
                Err(e) => {
                    assert!(conflict, "object {o}: {e:?} without a conflicting guard");
                    let want = if m.objs[o].exclusive {
                        BorrowError::BorrowedMut
                    } else {
                        BorrowError::Borrowed
                    };
                    assert_eq!(e, want);
                }
                Ok(Took::MapPanicked) => unreachable!("no panic asked for"),
                Ok(Took::Guard(guard, addr)) => {
                    assert!(!conflict, "object {o}: a guard despite a conflicting one");
                    assert_eq!(guard.observe(false), m.objs[o].val.observe(part, false));
                    m.objs[o].pins += 1;
                    m.objs[o].exclusive = exclusive;
                    held.push(Held {
                        guard,
                        obj: o,
                        exclusive,
                        part,
                        addr,
                    });
                }
            }
        }
        Op::WriteHeld(i, seed) => {
            let excl: Vec<usize> = (0..held.len()).filter(|&k| held[k].exclusive).collect();
            if excl.is_empty() {
                return;
            }
            let k = excl[i as usize % excl.len()];
            assert!(held[k].guard.scribble(seed));
            let (o, part) = (held[k].obj, held[k].part);
            m.objs[o].val.scribble(part, seed);
        }
        Op::Release(i) => {
            if held.is_empty() {
                return;
            }
            let g = held.remove(i as usize % held.len());
            let o = g.obj;
            let r = catch_unwind(AssertUnwindSafe(move || drop(g)));
            m.unpin(o);
            settle(r, m, "Release");
        }
        Op::Map {
            i,
            exclusive,
            panic,
        } => {
            let Some(o) = m.pick(i) else { return };
            if m.objs[o].exclusive || (exclusive && m.objs[o].pins > 0) {
                return;
            }
            let panic = panic && !avoid("map_panic");
            let (part, took) = take_any(heap, m.objs[o].handle, exclusive, Part::Inner, panic);
            match took.expect("no conflict") {
                Took::MapPanicked => assert!(panic),
                Took::Guard(g, _) => {
                    assert!(!panic, "the map closure was to panic");
                    assert_eq!(g.observe(true), m.objs[o].val.observe(part, true));
                }
            }
        }
        Op::PanicHolding { i, exclusive } => {
            let Some(o) = m.pick(i) else { return };
            if m.objs[o].exclusive || (exclusive && m.objs[o].pins > 0) {
                return;
            }
            let h = m.objs[o].handle;
            let r = catch_unwind(AssertUnwindSafe(|| {
                let (_, took) = take_any(heap, h, exclusive, Part::Whole, false);
                let _guard = took.expect("no conflict");
                panic_any(Deliberate("a panic while a guard is alive"));
            }));
            assert!(r.err().is_some_and(|p| p.is::<Deliberate>()));
        }
        Op::Free(i) => {
            let Some(o) = m.pick(i) else {
                if let Some(o) = m.objs.iter().position(|o| o.state == State::Dead) {
                    assert!(!free_any(heap, m.objs[o].handle), "free of a stale handle");
                }
                return;
            };
            let h = m.objs[o].handle;
            m.free(o);
            let r = catch_unwind(AssertUnwindSafe(|| {
                assert!(free_any(heap, h), "free of a live handle")
            }));
            settle(r, m, "Free");
        }
        Op::Remove(i) => {
            let Some(o) = m.pick(i) else { return };
            let pinned = m.objs[o].pins > 0;
            fn go<S: Subject, T: Send + Sync + Poke + 'static>(heap: &S, h: Handle<T>) -> Removed {
                Some(heap.remove(h).map(|v| (v.observe(true), drop_value(v))))
            }
            let got = match m.objs[o].handle {
                AnyHandle::U8(h) => go(heap, h),
                AnyHandle::U64(h) => go(heap, h),
                AnyHandle::Tracked(h) => go(heap, h),
                AnyHandle::Zst(h) => go(heap, h),
                AnyHandle::Aligned(h) => go(heap, h),
                AnyHandle::PageAligned(h) => go(heap, h),
                AnyHandle::Huge(h) => go(heap, h),
                AnyHandle::Hostile(h) => go(heap, h),
                AnyHandle::Bytes(_) | AnyHandle::Str(_) | AnyHandle::HostileSlice(_) => None,
            };
            let Some(got) = got else { return };
            if pinned {
                assert_eq!(got.err(), Some(RemoveError::Pinned));
            } else {
                let (seen, dropped) = got.expect("remove of a live, unpinned object");
                assert_eq!(
                    seen,
                    m.objs[o].val.observe(Part::Whole, true),
                    "removed value"
                );
                m.free(o);
                settle(dropped, m, "dropping a removed value");
            }
        }
        Op::Compact => {
            let r = heap.compact();
            assert!(r.finished);
        }
        Op::CompactStep(b) => {
            let budget = b as usize * 8 + 1;
            let r = heap.compact_step(budget);
            assert!(
                r.bytes_moved <= budget,
                "step moved {} > budget {budget}",
                r.bytes_moved
            );
        }
    }
}

/// What `Remove` saw: nothing for unsized kinds, else the value's contents
/// and how dropping it went, or why it stayed.
type Removed = Option<Result<(Vec<u64>, std::thread::Result<()>), RemoveError>>;

/// A byte slice of `n` bytes made `how`; a failure must be allowed.
fn alloc_bytes<S: Subject>(heap: &S, m: &mut Model, n: usize, seed: u8, how: How) {
    let before = m.live_bytes();
    let b: Vec<u8> = match how {
        How::Fill => vec![seed; n],
        _ => patterned(seed as u64, n),
    };
    let r = match how {
        How::TrySlice => heap
            .try_alloc_slice(&b)
            .map_err(|e| assert_eq!(e, AllocError::OutOfMemory)),
        How::Slice => catch_unwind(AssertUnwindSafe(|| heap.alloc_slice(&b)))
            .map_err(|p| assert!(is_oom(&*p), "alloc_slice: {:?}", p.downcast_ref::<String>())),
        How::Fill => {
            catch_unwind(AssertUnwindSafe(|| heap.alloc_slice_fill(n, seed))).map_err(|p| {
                assert!(
                    is_oom(&*p),
                    "alloc_slice_fill: {:?}",
                    p.downcast_ref::<String>()
                )
            })
        }
        How::Iter => catch_unwind(AssertUnwindSafe(|| heap.alloc_from_iter(b.iter().copied())))
            .map_err(|p| {
                assert!(
                    is_oom(&*p),
                    "alloc_from_iter: {:?}",
                    p.downcast_ref::<String>()
                )
            }),
    };
    match r {
        Ok(h) => m.add(AnyHandle::Bytes(h), Val::Bytes(b), vec![], false, None),
        Err(()) => alloc_failed(m, n, 1, before),
    }
}

/// The checks after every step.
fn check<S: Subject>(heap: &S, log: &DropLog, m: &Model, held: &[Held<'_>]) {
    for o in m.live() {
        match look(heap, m.objs[o].handle, false) {
            Ok((got, addr)) => {
                assert_eq!(
                    got,
                    m.objs[o].val.observe(Part::Whole, false),
                    "live object {o} reads wrong"
                );
                for g in held.iter().filter(|g| g.obj == o) {
                    assert_eq!(addr, g.addr, "pinned object {o} moved");
                }
            }
            Err(BorrowError::BorrowedMut) => assert!(
                m.objs[o].exclusive,
                "object {o}: BorrowedMut without a RefMut"
            ),
            Err(e) => panic!("live object {o}: {e:?}"),
        }
    }
    for g in held {
        assert_eq!(
            g.guard.observe(false),
            m.objs[g.obj].val.observe(g.part, false),
            "held guard of object {} reads wrong",
            g.obj
        );
    }
    let dead = (0..m.objs.len()).filter(|&o| m.objs[o].state != State::Live);
    for o in dead.rev().take(32) {
        let h = m.objs[o].handle;
        assert!(
            matches!(look(heap, h, false), Err(BorrowError::Stale)),
            "stale handle of object {o} must read None"
        );
        assert!(!with_handle!(h, h => heap.contains(h)));
    }
    let st = heap.stats();
    let mapped: Vec<usize> = (0..m.objs.len())
        .filter(|&o| m.objs[o].state != State::Dead)
        .filter(|&o| is_large(m.objs[o].val.size(), m.objs[o].val.align(), m.seg))
        .collect();
    // A large object gets a fresh mapping or a spare that fits it and is no
    // longer than a fresh one: between its page-rounded size and that.
    let (least, most) = mapped.iter().fold((0, 0), |(lo, hi), &o| {
        let (size, align) = (m.objs[o].val.size(), m.objs[o].val.align());
        (
            lo + size.next_multiple_of(4096),
            hi + mapping_len(size, align),
        )
    });
    let pinned = m.objs.iter().filter(|o| o.pins > 0).count();
    assert_eq!(st.live_objects, m.live().len(), "stats.live_objects");
    assert_eq!(st.live_bytes, m.live_bytes(), "stats.live_bytes");
    assert_eq!(st.pinned_objects, pinned, "stats.pinned_objects");
    assert_eq!(st.large_objects, mapped.len(), "stats.large_objects");
    assert!(
        (least..=most).contains(&st.large_bytes),
        "stats.large_bytes {} not in {least}..={most}",
        st.large_bytes
    );
    assert_eq!(
        st.held_bytes,
        st.segment_bytes + st.large_bytes + st.spare_bytes,
        "stats.held_bytes"
    );
    if let Some(limit) = m.limit {
        assert!(
            st.held_bytes <= limit,
            "held {} bytes over the limit {limit}",
            st.held_bytes
        );
    }
    assert_eq!(
        log.dropped(),
        sorted(m.dropped.clone()),
        "values dropped so far"
    );
}

/// Proptest's programs: each op read from its own random bytes, so that
/// shrinking removes and simplifies whole ops. Short under Miri.
pub fn programs() -> impl proptest::strategy::Strategy<Value = Program> {
    use proptest::prelude::*;
    (
        any::<[u8; 4]>(),
        proptest::collection::vec(any::<[u8; 24]>(), 1..MAX_OPS),
    )
        .prop_map(|(setup, ops)| Program {
            setup: Setup::arbitrary(&mut Unstructured::new(&setup)).expect("enough bytes"),
            ops: ops
                .iter()
                .map(|b| Op::arbitrary(&mut Unstructured::new(b)).expect("enough bytes"))
                .collect(),
        })
}

/// Runs `program` on both heaps, each on a thread with room for the 320 KiB
/// values on its stack.
pub fn run_both(program: &Program) {
    for sync in [false, true] {
        let p = program.clone();
        let r = thread::Builder::new()
            .stack_size(32 << 20)
            .spawn(move || {
                if sync {
                    run::<TestHeap<SyncHeap>>(&p)
                } else {
                    run::<TestHeap<Heap>>(&p)
                }
            })
            .expect("spawn")
            .join();
        if let Err(p) = r {
            resume_unwind(p);
        }
    }
}
