//! [`Engine`]: how a heap reaches its [`RawHeap`], and the one rule that
//! keeps every `unsafe` block above it sound: **no panic and no user code
//! while the engine is held** (invariant I6 in docs/DESIGN.md).
//!
//! User code is any code the crate does not control: a value's `Drop`, an
//! iterator, a `Clone`, a guard-`map` closure — and a *panic hook*, which
//! runs at the point of a panic, before anything unwinds. So the engine's
//! methods return `Result`s and never panic on bad input; the operations in
//! [`access`](crate::access) raise the panics the API documents only after
//! they have let go of the engine.
//!
//! The [`Engine`] implementations enforce the rule, in one place each:
//! - a thread that is already in the engine and asks for it again (only a
//!   panic hook can do that) is refused with [`Unavailable::Reentered`]
//!   instead of getting a second `&mut RawHeap` (`Heap`) or deadlocking on
//!   its own lock (`SyncHeap`);
//! - a panic that unwinds out of the engine anyway (a bug in this crate)
//!   *poisons* the heap: its invariants may be broken, so every later call
//!   is refused with [`Unavailable::Poisoned`], and the values still in it
//!   are leaked when it drops, never dropped twice.

use core::cell::Cell;
use core::fmt;

use crate::raw::RawHeap;

/// Access to a heap's engine.
pub(crate) trait Engine {
    /// Whether other threads may pin and unpin while we hold shared access.
    const SYNC: bool;

    /// Where one thread alone pins (`Heap`): a flag that every pin raises
    /// before it is taken, and that [`Heap::stats`] lowers when a walk of
    /// the slots finds none pinned; while it is down, none is. `None` where
    /// many threads pin (`SyncHeap`: its stats always walk).
    ///
    /// [`Heap::stats`]: crate::Heap::stats
    fn pinned_since_walk(&self) -> Option<&Cell<bool>>;

    /// Runs `f` with the engine to itself, or says why it cannot.
    /// `f` must not panic and must run no user code.
    fn try_exclusive<R>(&self, f: impl FnOnce(&mut RawHeap) -> R) -> Result<R, Unavailable>;

    /// Runs `f` with shared access (pins and unpins only), or says why it
    /// cannot. `f` must not panic and must run no user code.
    fn try_shared<R>(&self, f: impl FnOnce(&RawHeap) -> R) -> Result<R, Unavailable>;

    /// Runs `f` with shared access, for the hottest path (`get`): it may
    /// skip the bookkeeping that refuses re-entry, so `f` must not be able to
    /// panic at all, even on broken invariants (no indexing that can fail, no
    /// assertion, no overflow), and must run no user code.
    fn try_pin<R>(&self, f: impl FnOnce(&RawHeap) -> R) -> Result<R, Unavailable>;

    /// [`Engine::try_exclusive`], panicking (with no engine held) if refused.
    #[inline]
    fn exclusive<R>(&self, f: impl FnOnce(&mut RawHeap) -> R) -> R {
        self.try_exclusive(f).unwrap_or_else(|why| why.fail())
    }

    /// [`Engine::try_shared`], panicking (with no engine held) if refused.
    #[inline]
    fn shared<R>(&self, f: impl FnOnce(&RawHeap) -> R) -> R {
        self.try_shared(f).unwrap_or_else(|why| why.fail())
    }
}

/// Why a heap's engine could not be entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unavailable {
    /// An earlier panic unwound out of the engine; the heap is unusable.
    Poisoned,
    /// This thread is inside the engine already (a panic hook called the heap).
    Reentered,
}

impl Unavailable {
    /// Panics with a message that says what happened.
    #[cold]
    #[inline(never)]
    pub(crate) fn fail(self) -> ! {
        panic!("compact_heap: {self}")
    }
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unavailable::Poisoned => {
                "heap poisoned: a panic escaped its engine earlier, so it refuses all use"
            }
            Unavailable::Reentered => {
                "heap re-entered while busy (from a panic hook?); the call is refused"
            }
        })
    }
}

/// Runs `on_unwind` if dropped while it is still armed, that is, if the code
/// between [`Sentinel::arm`] and [`Sentinel::disarm`] unwound.
pub(crate) struct Sentinel<F: FnMut()> {
    on_unwind: F,
}

impl<F: FnMut()> Sentinel<F> {
    #[inline]
    pub(crate) fn arm(on_unwind: F) -> Self {
        Sentinel { on_unwind }
    }

    /// The guarded code returned normally.
    #[inline]
    pub(crate) fn disarm(self) {
        core::mem::forget(self);
    }
}

impl<F: FnMut()> Drop for Sentinel<F> {
    #[cold]
    fn drop(&mut self) {
        (self.on_unwind)();
    }
}
