//! The concurrent heap, [`SyncHeap`], its background [`Compactor`], and the
//! synchronisation primitives the crate uses.
//!
//! The primitives are switched in this one place: std's atomics and
//! parking_lot's locks normally, loom's model-checked versions under
//! `cfg(loom)` (as sharded-slab does), so the same code is checked.
//!
//! The background [`Compactor`] is a thread, so it exists only on targets
//! with threads: not on WebAssembly without the `atomics` target feature
//! (`wasm32-unknown-unknown`, `wasm32-wasip1`), where `std::thread::spawn`
//! cannot work. [`SyncHeap`] itself builds everywhere.

#[cfg(all(
    not(loom),
    any(not(target_family = "wasm"), target_feature = "atomics")
))]
mod compactor;
mod heap;

#[cfg(all(
    not(loom),
    any(not(target_family = "wasm"), target_feature = "atomics")
))]
pub use compactor::{Compactor, CompactorHandle, Policy};

pub use heap::SyncHeap;

#[cfg(loom)]
pub(crate) use loom::sync::atomic;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic;

#[cfg(not(loom))]
pub(crate) use parking_lot::RwLock;

#[cfg(not(loom))]
std::thread_local! {
    /// The address of the [`SyncHeap`] whose lock this thread holds (0:
    /// none), so that a panic hook that calls that heap again is refused
    /// instead of deadlocking. See [`Engine`](crate::engine::Engine).
    pub(crate) static ENGINE_HOLDER: core::cell::Cell<usize> = const { core::cell::Cell::new(0) };
}

#[cfg(loom)]
loom::thread_local! {
    // loom runs its threads on one OS thread: its own thread-locals.
    pub(crate) static ENGINE_HOLDER: core::cell::Cell<usize> = core::cell::Cell::new(0);
}

#[cfg(loom)]
pub(crate) use loom_rwlock::RwLock;

/// loom's `RwLock` with parking_lot's shape (no poisoning).
#[cfg(loom)]
mod loom_rwlock {
    pub(crate) use loom::sync::{RwLockReadGuard, RwLockWriteGuard};

    #[derive(Debug)]
    pub(crate) struct RwLock<T>(loom::sync::RwLock<T>);

    impl<T> RwLock<T> {
        pub(crate) fn new(value: T) -> Self {
            RwLock(loom::sync::RwLock::new(value))
        }

        pub(crate) fn read(&self) -> RwLockReadGuard<'_, T> {
            self.0
                .read()
                .expect("no poisoning: the engine runs no user code")
        }

        pub(crate) fn write(&self) -> RwLockWriteGuard<'_, T> {
            self.0
                .write()
                .expect("no poisoning: the engine runs no user code")
        }
    }
}

/// Plain (non-atomic) access to a borrow word, for [`Heap`](crate::Heap)
/// alone: one thread uses it (`Heap` is `!Sync`, its guards `!Send`), so
/// nothing races, and plain accesses let the compiler fold a pin with its
/// unpin in a loop, which atomic ones forbid. Under loom, relaxed atomics.
pub(crate) mod plain {
    use super::atomic::AtomicU16;
    #[cfg(loom)]
    use super::atomic::Ordering;

    /// Reads `word` on the one thread that uses it.
    #[inline(always)]
    pub(crate) fn load(word: &AtomicU16) -> u16 {
        #[cfg(not(loom))]
        // SAFETY: only the thread that owns the `Heap` touches its words, so
        // this read races with no write (see the module docs).
        return unsafe { *word.as_ptr() };
        #[cfg(loom)]
        return word.load(Ordering::Relaxed);
    }

    /// Writes `word` on the one thread that uses it.
    #[inline(always)]
    pub(crate) fn store(word: &AtomicU16, value: u16) {
        #[cfg(not(loom))]
        // SAFETY: as for `load`: no other thread reads or writes this word.
        unsafe {
            *word.as_ptr() = value
        };
        #[cfg(loom)]
        word.store(value, Ordering::Relaxed);
    }
}
