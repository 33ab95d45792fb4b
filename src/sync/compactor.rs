//! A background thread that compacts a [`SyncHeap`] in slices.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::SyncHeap;

/// When and how much a background compactor works.
///
/// Every [`every`](Policy::every), if a compaction pass is in progress or the
/// heap holds more than [`threshold`](Policy::threshold) × its live bytes (and
/// more than one segment), it runs one [`SyncHeap::compact_step`] of
/// [`budget`](Policy::budget) bytes. Built from [`Policy::default`]:
///
/// ```
/// use std::time::Duration;
/// use compact_heap::Policy;
///
/// let policy = Policy::default().every(Duration::from_micros(500)).budget(16 * 1024).threshold(1.1);
/// assert_eq!(policy.get_budget(), 16 * 1024);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct Policy {
    every: Duration,
    budget: usize,
    threshold: f64,
}

impl Default for Policy {
    /// Every millisecond, 64 KiB per slice, from 1.25 × live.
    fn default() -> Policy {
        Policy {
            every: Duration::from_millis(1),
            budget: 64 * 1024,
            threshold: 1.25,
        }
    }
}

impl Policy {
    /// The pause between two slices.
    pub fn every(mut self, pause: Duration) -> Policy {
        self.every = pause;
        self
    }

    /// The most bytes one slice moves.
    ///
    /// # Panics
    /// If `bytes` is 0.
    pub fn budget(mut self, bytes: usize) -> Policy {
        assert!(bytes > 0, "compactor budget must be positive");
        self.budget = bytes;
        self
    }

    /// The held / live ratio above which slices run.
    ///
    /// # Panics
    /// If `ratio` is not at least 1.0.
    pub fn threshold(mut self, ratio: f64) -> Policy {
        assert!(
            ratio >= 1.0,
            "compactor threshold must be at least 1.0, got {ratio}"
        );
        self.threshold = ratio;
        self
    }

    /// The pause between two slices.
    pub fn get_every(&self) -> Duration {
        self.every
    }

    /// The most bytes one slice moves.
    pub fn get_budget(&self) -> usize {
        self.budget
    }

    /// The held / live ratio above which slices run.
    pub fn get_threshold(&self) -> f64 {
        self.threshold
    }
}

/// A background compactor, ready to [`spawn`](Compactor::spawn).
///
/// # Examples
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use compact_heap::{Policy, SyncHeap};
///
/// let heap = Arc::new(SyncHeap::new());
/// let compactor = heap.compactor(Policy::default().every(Duration::from_millis(1))).spawn();
/// let h = heap.alloc(5u64);
/// assert_eq!(*heap.get(h).unwrap(), 5);
/// drop(compactor); // stops and joins the thread
/// ```
#[derive(Debug)]
#[must_use = "a compactor does nothing until spawned"]
pub struct Compactor {
    heap: Arc<SyncHeap>,
    policy: Policy,
}

impl SyncHeap {
    /// A background compactor for this heap, with `policy`.
    pub fn compactor(self: &Arc<Self>, policy: Policy) -> Compactor {
        Compactor {
            heap: Arc::clone(self),
            policy,
        }
    }
}

/// The running compactor thread. Dropping it (or [`stop`](CompactorHandle::stop))
/// stops the thread and waits for it to finish its slice.
#[derive(Debug)]
#[must_use = "dropping the handle stops the compactor at once"]
pub struct CompactorHandle {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<u64>>,
}

impl Compactor {
    /// Starts the thread.
    pub fn spawn(self) -> CompactorHandle {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("compact-heap compactor".into())
            .spawn(move || run(&self.heap, self.policy, &signal))
            .expect("spawn the compactor thread");
        CompactorHandle {
            stop,
            thread: Some(thread),
        }
    }
}

/// The thread's loop; returns the slices it ran.
fn run(heap: &SyncHeap, policy: Policy, stop: &(Mutex<bool>, Condvar)) -> u64 {
    let mut slices = 0;
    loop {
        {
            let mut stopped = stop.0.lock();
            if !*stopped {
                stop.1.wait_for(&mut stopped, policy.every);
            }
            if *stopped {
                return slices;
            }
        }
        let (held, live, segment, active) = heap.pressure();
        if active || (held > segment && held as f64 > policy.threshold * live as f64) {
            heap.compact_step(policy.budget);
            slices += 1;
        }
    }
}

impl CompactorHandle {
    /// Stops the thread, waits for it, and returns how many slices it ran.
    pub fn stop(mut self) -> u64 {
        self.shut_down()
    }

    fn shut_down(&mut self) -> u64 {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        self.thread
            .take()
            .map_or(0, |t| t.join().expect("the compactor thread panicked"))
    }
}

impl Drop for CompactorHandle {
    fn drop(&mut self) {
        self.shut_down();
    }
}
