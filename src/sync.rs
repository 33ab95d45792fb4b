//! The synchronisation primitives the crate uses, in one place, so that the
//! same code runs on std/parking_lot normally and on loom's model-checked
//! versions under `cfg(loom)` (as sharded-slab does).

#[cfg(loom)]
pub(crate) use loom::sync::atomic;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic;
