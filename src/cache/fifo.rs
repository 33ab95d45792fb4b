//! [`Fifo`]: the cache's queues, a ring buffer in [`MapAlloc`] memory.
//!
//! `std`'s `VecDeque` takes no allocator on stable Rust, and the queues are
//! among the index's biggest blocks (see [`MapAlloc`](crate::mapping::MapAlloc)
//! for why those bypass malloc). Only what S3-FIFO needs: push at the back,
//! pop at the front, retain, and exact capacity control.

use core::mem::MaybeUninit;

use allocator_api2::vec::Vec;

use crate::mapping::MapAlloc;

/// A first-in first-out queue.
pub(crate) struct Fifo<T> {
    /// Invariant: the items are `buf[(head + i) % buf.len()]` for `i < len`,
    /// initialised and owned by the queue; every other element is
    /// uninitialised. `len <= buf.len()`, and `head < buf.len()` unless the
    /// buffer is empty.
    buf: Vec<MaybeUninit<T>, MapAlloc>,
    head: usize,
    len: usize,
}

impl<T> Fifo<T> {
    /// An empty queue (no allocation).
    pub(crate) fn new() -> Self {
        Fifo {
            buf: Vec::new_in(MapAlloc),
            head: 0,
            len: 0,
        }
    }

    /// Number of items.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no items.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Items it holds without reallocating.
    #[inline]
    pub(crate) fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// The index of the `i`-th slot after `head` (`i <= buf.len()`).
    #[inline]
    fn wrap(&self, i: usize) -> usize {
        let at = self.head + i;
        if at >= self.buf.len() {
            at - self.buf.len()
        } else {
            at
        }
    }

    /// Adds `item` at the back (doubling the buffer when full).
    pub(crate) fn push_back(&mut self, item: T) {
        if self.len == self.buf.len() {
            self.resize((2 * self.len).max(8));
        }
        let at = self.wrap(self.len);
        self.buf[at].write(item);
        self.len += 1;
    }

    /// Takes the front item.
    pub(crate) fn pop_front(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        // SAFETY: `len > 0`, so `buf[head]` is the first item, initialised
        // (invariant); advancing `head` gives up ownership of it.
        let item = unsafe { self.buf[self.head].assume_init_read() };
        self.head = self.wrap(1);
        self.len -= 1;
        Some(item)
    }

    /// Keeps only the items for which `keep` is true, in order.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        // Each item goes round once: looked at in place, then popped, and
        // pushed again if kept (into the slot just freed, so the buffer never
        // grows). A panic in `keep` leaves every item in the queue (the ones
        // already looked at moved to the back).
        for _ in 0..self.len {
            // SAFETY: `len > 0` (the loop counts down what is left of it), so
            // `buf[head]` is the first item, initialised (invariant).
            let kept = keep(unsafe { self.buf[self.head].assume_init_ref() });
            let item = self.pop_front().expect("counted");
            if kept {
                self.push_back(item);
            }
        }
    }

    /// Shrinks the buffer to `min` items, or to the items there are if more.
    pub(crate) fn shrink_to(&mut self, min: usize) {
        let cap = min.max(self.len);
        if cap < self.buf.len() {
            self.resize(cap);
        }
    }

    /// Drops every item.
    pub(crate) fn clear(&mut self) {
        while self.pop_front().is_some() {}
    }

    /// Moves the items to a new buffer of `cap >= len` slots.
    fn resize(&mut self, cap: usize) {
        debug_assert!(cap >= self.len);
        let mut buf = Vec::with_capacity_in(cap, MapAlloc);
        buf.resize_with(cap, MaybeUninit::uninit);
        for (i, slot) in buf.iter_mut().take(self.len).enumerate() {
            let at = self.wrap(i);
            // SAFETY: `i < len`, so `buf[at]` is an initialised item; the old
            // buffer is replaced below without dropping its elements
            // (`MaybeUninit` has no drop glue), so each item moves exactly once.
            slot.write(unsafe { self.buf[at].assume_init_read() });
        }
        self.buf = buf;
        self.head = 0;
    }
}

impl<T> Drop for Fifo<T> {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::rc::Rc;

    #[test]
    fn it_behaves_like_a_vec_deque() {
        // A random program of pushes, pops, retains and shrinks against
        // `VecDeque`; `Rc` items catch a double drop or a leak.
        let token = Rc::new(());
        let mut fifo = Fifo::new();
        let mut model = VecDeque::new();
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for step in 0..if cfg!(miri) { 400 } else { 50_000 } {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 16 {
                0..=7 => {
                    fifo.push_back((step, token.clone()));
                    model.push_back((step, token.clone()));
                }
                8..=13 => {
                    assert_eq!(
                        fifo.pop_front().map(|i| i.0),
                        model.pop_front().map(|i| i.0)
                    );
                }
                14 => {
                    let m = (x >> 8) % 5;
                    fifo.retain(|i| i.0 as u64 % 5 != m);
                    model.retain(|i| i.0 as u64 % 5 != m);
                }
                _ => fifo.shrink_to((x >> 8) as usize % 64),
            }
            assert_eq!(fifo.len(), model.len());
            assert!(fifo.capacity() >= fifo.len());
        }
        let rest: std::vec::Vec<usize> =
            core::iter::from_fn(|| fifo.pop_front().map(|i| i.0)).collect();
        let expected: std::vec::Vec<usize> = model.iter().map(|i| i.0).collect();
        assert_eq!(rest, expected);
        model.clear();
        fifo.push_back((0, token.clone()));
        drop(fifo);
        assert_eq!(Rc::strong_count(&token), 1, "every item dropped once");
    }

    #[test]
    fn a_panic_in_retain_loses_no_item() {
        let mut fifo = Fifo::new();
        (0..10).for_each(|i| fifo.push_back(i));
        let mut seen = 0;
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            fifo.retain(|&i| {
                seen += 1;
                assert!(seen < 4, "a key whose Eq panics");
                i % 2 == 0
            })
        }));
        assert!(caught.is_err());
        let mut rest: std::vec::Vec<i32> = core::iter::from_fn(|| fifo.pop_front()).collect();
        rest.sort_unstable();
        // 1 was dropped before the panic; the item in hand (3) stays.
        assert_eq!(rest, [0, 2, 3, 4, 5, 6, 7, 8, 9]);
    }
}
