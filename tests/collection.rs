//! The collection API as a specification: values built in place, resize,
//! sizes without a guard, iteration, retain, clear, capacity, unsized
//! remove — including what a hostile caller does to them (panicking clones
//! and constructors, `clear` or a forged handle while a value is being built,
//! resizing a borrowed slice).

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use compact_heap::{
    AllocError, BorrowError, Config, Handle, Heap, RemoveError, ResizeError, SyncHeap,
};

/// Counts its drops in a shared counter; its clone panics on a chosen value.
#[derive(Debug)]
struct Counted {
    value: u32,
    drops: Arc<AtomicUsize>,
}

impl Clone for Counted {
    fn clone(&self) -> Self {
        assert!(self.value != 13, "unlucky clone");
        Counted {
            value: self.value,
            drops: self.drops.clone(),
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

fn counted(values: &[u32], drops: &Arc<AtomicUsize>) -> Vec<Counted> {
    values
        .iter()
        .map(|&value| Counted {
            value,
            drops: drops.clone(),
        })
        .collect()
}

#[test]
fn alloc_clone_takes_sized_slices_and_strs() {
    let heap = Heap::new();
    let n = heap.alloc_clone(&5u16);
    let s = heap.alloc_clone("text");
    let b = heap.alloc_clone(&b"bytes"[..]);
    let v = heap.alloc_clone(&[String::from("x"), String::from("y")][..]);
    assert_eq!(*heap.get(n).unwrap(), 5);
    assert_eq!(&*heap.get(s).unwrap(), "text");
    assert_eq!(&*heap.get(b).unwrap(), b"bytes");
    assert_eq!(heap.get(v).unwrap().concat(), "xy");
    assert_eq!(heap.stats().live_bytes, 2 + 4 + 5 + 2 * 24);
}

#[test]
fn a_panicking_clone_drops_the_clones_made_and_allocates_nothing() {
    let heap = Heap::new();
    let drops = Arc::new(AtomicUsize::new(0));
    let src = counted(&[1, 2, 13, 4], &drops);
    let r = catch_unwind(AssertUnwindSafe(|| heap.alloc_clone(&src[..])));
    assert!(r.is_err());
    // The two clones made before the panic were dropped; the source is intact.
    assert_eq!(drops.load(Ordering::SeqCst), 2);
    let st = heap.stats();
    assert_eq!(
        (st.live_objects, st.live_bytes, st.pinned_objects),
        (0, 0, 0)
    );
    // The heap is fine afterwards.
    let ok = heap.alloc_clone(&src[..2]);
    assert_eq!(heap.get(ok).unwrap()[1].value, 2);
    drop(src);
    drop(heap);
    assert_eq!(drops.load(Ordering::SeqCst), 2 + 4 + 2);
}

#[test]
fn a_panicking_constructor_drops_the_items_made() {
    let heap = Heap::new();
    let drops = Arc::new(AtomicUsize::new(0));
    let r = catch_unwind(AssertUnwindSafe(|| {
        heap.alloc_slice_with(10, |i| {
            assert!(i < 6, "constructor gives up");
            Counted {
                value: i as u32,
                drops: drops.clone(),
            }
        })
    }));
    assert!(r.is_err());
    assert_eq!(drops.load(Ordering::SeqCst), 6);
    assert_eq!(heap.len(), 0);
    let r = catch_unwind(AssertUnwindSafe(|| {
        heap.alloc_with(|| -> [u8; 64] { panic!("no value") })
    }));
    assert!(r.is_err());
    assert_eq!((heap.len(), heap.stats().live_bytes), (0, 0));
}

#[test]
fn clear_while_a_value_is_being_built_leaves_a_stale_handle_and_drops_once() {
    let heap = Heap::new();
    let drops = Arc::new(AtomicUsize::new(0));
    let other = heap.alloc(String::from("cleared too"));
    let h = heap.alloc_slice_with(3, |i| {
        if i == 1 {
            heap.clear(); // user code may call the heap: it must stay sound
        }
        Counted {
            value: i as u32,
            drops: drops.clone(),
        }
    });
    // The object was freed while being built: its handle reads None, and the
    // three values were dropped, once.
    assert!(heap.get(h).is_none());
    assert!(heap.get(other).is_none());
    assert_eq!(drops.load(Ordering::SeqCst), 3);
    assert_eq!((heap.len(), heap.stats().pinned_objects), (0, 0));
}

#[test]
fn an_object_being_built_cannot_be_read_or_moved_out() {
    let heap = Heap::new();
    let seen = Cell::new(None);
    let h = heap.alloc_slice_with(4, |i| {
        if i == 2 {
            // Forge handles to every slot near ours: the unfinished object is
            // refused to any type, including its own uninitialised one.
            for index in 0..4u64 {
                for version in [1u64, 3] {
                    let bits = (version << 32) | index;
                    let forged: Handle<[std::mem::MaybeUninit<u64>]> = Handle::from_bits(bits);
                    if let Err(e) = heap.try_get(forged) {
                        if e == BorrowError::BorrowedMut {
                            seen.set(Some(bits));
                            assert_eq!(heap.remove(forged).unwrap_err(), RemoveError::Pinned);
                        }
                    }
                    let as_done: Handle<[u64]> = Handle::from_bits(bits);
                    assert!(
                        heap.get(as_done).is_none(),
                        "a half-built slice is not readable"
                    );
                }
            }
            heap.compact(); // and compaction does not move it
        }
        i as u64 * 10
    });
    assert!(seen.get().is_some(), "the forged handle found the object");
    assert_eq!(&*heap.get(h).unwrap(), &[0, 10, 20, 30]);
}

#[test]
fn a_forged_handle_that_frees_an_object_being_built_is_harmless() {
    let heap = SyncHeap::new();
    let drops = Arc::new(AtomicUsize::new(0));
    let h = heap.alloc_slice_with(2, |i| {
        for index in 0..4u64 {
            let forged: Handle<[std::mem::MaybeUninit<Counted>]> =
                Handle::from_bits((1 << 32) | index);
            heap.free(forged);
        }
        Counted {
            value: i as u32,
            drops: drops.clone(),
        }
    });
    assert!(heap.get(h).is_none());
    assert_eq!(drops.load(Ordering::SeqCst), 2);
    assert_eq!(heap.len(), 0);
}

#[test]
fn resize_grows_in_place_at_the_end_and_moves_otherwise() {
    let heap = Heap::with_config(Config::default().no_pacing());
    let a = heap.alloc_slice(&[1u32, 2, 3]);
    let addr = |h: Handle<[u32]>| heap.get(h).unwrap().as_ptr().addr();
    let at = addr(a);
    heap.resize(a, 100, 9).unwrap();
    assert_eq!(addr(a), at, "the last object grows in place");
    let b = heap.alloc_slice(&[7u32; 4]);
    heap.resize(a, 200, 8).unwrap();
    assert_ne!(addr(a), at, "an object with a neighbour after it moves");
    let got = heap.get(a).unwrap();
    assert_eq!(&got[..4], &[1, 2, 3, 9]);
    assert!(got[3..100].iter().all(|&x| x == 9) && got[100..].iter().all(|&x| x == 8));
    drop(got);
    let at = addr(b);
    heap.resize(b, 1, 0).unwrap();
    assert_eq!(addr(b), at, "a shrink stays in place");
    assert_eq!(&*heap.get(b).unwrap(), &[7]);
    assert_eq!(heap.stats().live_bytes, 4 * 200 + 4);
    heap.resize(b, 0, 0).unwrap();
    assert_eq!(heap.len_of(b), Some(0));
}

#[test]
fn resize_refuses_stale_borrowed_and_oversized_and_changes_nothing() {
    let heap = Heap::with_config(Config::default().memory_limit(4 << 20));
    let h = heap.alloc_slice(&[5u8; 10]);
    {
        let r = heap.get(h).unwrap();
        assert_eq!(heap.resize(h, 20, 0), Err(ResizeError::Pinned));
        assert_eq!(r.len(), 10);
    }
    {
        let reader = heap.read();
        assert_eq!(heap.resize(h, 20, 0), Err(ResizeError::Pinned));
        assert_eq!(reader.get(h).unwrap().len(), 10);
    }
    assert_eq!(
        heap.resize(h, usize::MAX, 0),
        Err(ResizeError::Alloc(AllocError::TooLarge))
    );
    assert_eq!(
        heap.resize(h, 64 << 20, 0),
        Err(ResizeError::Alloc(AllocError::OutOfMemory))
    );
    assert_eq!(&*heap.get(h).unwrap(), &[5; 10]);
    assert_eq!(heap.stats().live_bytes, 10);
    heap.free(h);
    assert_eq!(heap.resize(h, 1, 0), Err(ResizeError::Stale));
    let foreign: Handle<[u16]> = Handle::from_bits(h.to_bits());
    assert_eq!(heap.resize(foreign, 1, 0), Err(ResizeError::Stale));
}

#[test]
fn resize_of_a_large_object_moves_it_between_spaces() {
    let heap = Heap::with_config(Config::default().segment_size(64 * 1024));
    let h = heap.alloc_slice_fill(100, 3u64);
    heap.resize(h, 100_000, 4).unwrap(); // into a mapping of its own
    assert_eq!(heap.stats().large_objects, 1);
    heap.resize(h, 50, 5).unwrap(); // back into a segment
    assert_eq!(heap.stats().large_objects, 0);
    assert_eq!(&*heap.get(h).unwrap(), &[3; 50]);
}

#[test]
fn remove_moves_unsized_values_out_into_boxes() {
    let heap = Heap::new();
    let drops = Arc::new(AtomicUsize::new(0));
    let s = heap.alloc_str("owned");
    let v = heap.alloc_from_iter(counted(&[1, 2, 3], &drops));
    let boxed: Box<str> = heap.remove(s).unwrap();
    assert_eq!(&*boxed, "owned");
    {
        let _r = heap.read();
        assert_eq!(heap.remove(v).unwrap_err(), RemoveError::Pinned);
    }
    let items: Box<[Counted]> = heap.remove(v).unwrap();
    assert_eq!(drops.load(Ordering::SeqCst), 0, "moved out, not dropped");
    assert_eq!(items.iter().map(|c| c.value).sum::<u32>(), 6);
    drop(items);
    assert_eq!(drops.load(Ordering::SeqCst), 3);
    assert_eq!(heap.remove(v).unwrap_err(), RemoveError::Stale);
    assert_eq!((heap.len(), heap.stats().live_bytes), (0, 0));
}

#[test]
fn sizes_need_no_guard_and_work_while_borrowed() {
    let heap = Heap::new();
    let h = heap.alloc_str("héllo");
    let w = heap.alloc([0u64; 3]);
    let _g = heap.get_mut(w).unwrap();
    assert_eq!((heap.size_of(h), heap.len_of(h)), (Some(6), Some(6)));
    assert_eq!((heap.size_of(w), heap.len_of(w)), (Some(24), Some(1)));
    let wrong_type: Handle<[u8]> = Handle::from_bits(h.to_bits());
    assert_eq!(heap.size_of(wrong_type), None);
}

#[test]
fn handles_walks_live_objects_of_one_type_while_the_heap_changes() {
    let heap = Heap::new();
    let hs: Vec<_> = (0..3000u32).map(|i| heap.alloc(i)).collect();
    heap.alloc_str("other type");
    let mut seen = 0;
    for h in heap.handles::<u32>() {
        let v = *heap.get(h).unwrap();
        // Free the next one on the way: it must not be listed.
        if let Some(&next) = hs.get(v as usize + 1) {
            heap.free(next);
        }
        seen += 1;
    }
    assert_eq!(seen, 1500);
    assert_eq!(heap.handles::<u32>().count(), 1500);
    assert_eq!(heap.handles::<str>().count(), 1);
}

#[test]
fn retain_frees_what_it_rejects_and_panics_on_a_borrowed_object() {
    let heap = Heap::new();
    let drops = Arc::new(AtomicUsize::new(0));
    let hs: Vec<_> = counted(&[1, 2, 3, 4, 5, 6], &drops)
        .into_iter()
        .map(|c| heap.alloc(c))
        .collect();
    heap.retain::<Counted>(|_, c| c.value % 2 == 0);
    assert_eq!(drops.load(Ordering::SeqCst), 3);
    assert_eq!(heap.len(), 3);
    let held = heap.get(hs[3]).unwrap();
    let r = catch_unwind(AssertUnwindSafe(|| heap.retain::<Counted>(|_, _| false)));
    let msg = r.unwrap_err();
    let msg = msg
        .downcast_ref::<String>()
        .map(String::as_str)
        .unwrap_or("");
    assert!(msg.contains("borrowed"), "{msg}");
    assert_eq!(held.value, 4, "the borrowed object is untouched");
}

#[test]
fn clear_drops_now_or_when_the_last_guard_goes() {
    let heap = SyncHeap::new();
    let drops = Arc::new(AtomicUsize::new(0));
    let hs: Vec<_> = counted(&[1, 2, 3], &drops)
        .into_iter()
        .map(|c| heap.alloc(c))
        .collect();
    let g = heap.get(hs[0]).unwrap();
    heap.clear();
    assert_eq!(drops.load(Ordering::SeqCst), 2);
    assert!(heap.is_empty());
    assert_eq!(g.value, 1);
    drop(g);
    assert_eq!(drops.load(Ordering::SeqCst), 3);
}

#[test]
fn capacity_grows_on_reserve_and_shrinks_on_shrink_to_fit() {
    let heap = Heap::new();
    assert_eq!(heap.capacity(), 0);
    heap.reserve(5000);
    let reserved = heap.capacity();
    assert!(reserved >= 5000);
    let hs: Vec<_> = (0..5000u64).map(|i| heap.alloc(i)).collect();
    assert_eq!(
        heap.capacity(),
        reserved,
        "no growth within the reservation"
    );
    hs.iter().for_each(|&h| {
        heap.free(h);
    });
    heap.shrink_to_fit();
    assert_eq!(heap.capacity(), 0);
    assert_eq!(heap.stats().held_bytes, 0);
    let r = catch_unwind(AssertUnwindSafe(|| heap.reserve(usize::MAX)));
    assert!(r.is_err(), "reserve past 2^32 objects panics");
    assert_eq!(heap.capacity(), 0, "and reserves nothing");
}

#[test]
fn stats_display_in_one_line() {
    let heap = Heap::new();
    heap.alloc_slice(&[0u8; 3 << 20]);
    let line = heap.stats().to_string();
    assert!(
        line.starts_with("live 3.0 MiB in 1 objects, held 3.0 MiB"),
        "{line}"
    );
    assert!(!line.contains('\n'));
}

#[test]
fn the_vec_trap_and_the_right_call() {
    let heap = Heap::new();
    let v = heap.alloc(vec![0u8; 1 << 16]);
    assert_eq!(
        heap.stats().live_bytes,
        24,
        "a Vec's buffer stays in malloc"
    );
    heap.free(v);
    let s = heap.alloc_clone(&vec![0u8; 1 << 16][..]);
    assert_eq!(heap.size_of(s), Some(1 << 16));
}

#[cfg(not(miri))]
#[test]
fn builders_and_clear_race_on_a_shared_heap() {
    let heap = Arc::new(SyncHeap::new());
    let drops = Arc::new(AtomicUsize::new(0));
    let made = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..2)
        .map(|t| {
            let (heap, drops, made) = (heap.clone(), drops.clone(), made.clone());
            std::thread::spawn(move || {
                for round in 0..2000u32 {
                    if t == 1 && round % 50 == 0 {
                        heap.clear();
                    }
                    let h = heap.alloc_slice_with(4, |i| {
                        made.fetch_add(1, Ordering::SeqCst);
                        Counted {
                            value: round + i as u32,
                            drops: drops.clone(),
                        }
                    });
                    if let Some(r) = heap.get(h) {
                        assert_eq!(r[3].value, round + 3);
                    }
                    if round % 3 == 0 {
                        heap.free(h);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    heap.clear();
    assert_eq!(drops.load(Ordering::SeqCst), made.load(Ordering::SeqCst));
}

#[test]
#[cfg_attr(
    miri,
    ignore = "hundreds of KiB written element by element: too slow under Miri"
)]
fn a_memory_limit_set_while_running_is_obeyed_and_can_be_lifted() {
    let heap = Heap::with_config(Config::default().segment_size(64 * 1024));
    assert_eq!(heap.memory_limit(), None);
    let hs: Vec<_> = (0..40).map(|_| heap.alloc_slice_fill(4000, 1u8)).collect();
    heap.set_memory_limit(Some(heap.stats().held_bytes));
    // Full: a new segment would pass the limit.
    let refused = (0..100).find_map(|_| heap.try_alloc_slice_fill(4000, 2u8).err());
    assert_eq!(refused, Some(AllocError::OutOfMemory));
    assert!(heap.stats().held_bytes <= heap.memory_limit().unwrap());
    // Frees and compaction make room under the same limit.
    for h in &hs[..20] {
        heap.free(*h);
    }
    assert!(heap.try_alloc_slice_fill(4000, 3u8).is_ok());
    heap.set_memory_limit(None);
    for _ in 0..100 {
        heap.alloc_slice_fill(4000, 4u8);
    }
    assert!(heap.stats().live_bytes > 100 * 4000);
}
