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
