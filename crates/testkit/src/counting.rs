//! A counting global allocator, for tests that hold what code allocates to
//! an estimate: declare it in the test binary
//! (`#[global_allocator] static ALLOCATOR: Counting = Counting;`) and
//! measure work with [`measure`]. Counts are per thread: what the work
//! allocates on other threads is not seen.
//!
//! The only unsafe code of the crate: every method forwards its call
//! unchanged to `System` (so `System`'s guarantees hold) and only adds to
//! thread-local counters that never allocate.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Forwards to `System`, counting the bytes live on each thread and their
/// peak.
#[derive(Debug)]
pub struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn add(bytes: isize) {
    let _ = LIVE.try_with(|live| {
        live.set(live.get() + bytes);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(live.get())));
    });
}

// SAFETY: every method calls `System` with the caller's arguments and
// returns its result unchanged; the counters are const-initialized
// thread-locals of `Cell<isize>` (no destructor, no allocation).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as isize);
        // SAFETY: forwarded as received.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add(-(layout.size() as isize));
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as isize);
        // SAFETY: forwarded as received.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Both blocks may exist at once while the contents move.
        add(new_size as isize);
        add(-(layout.size() as isize));
        // SAFETY: forwarded as received.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `work` and returns its result with the bytes it left allocated and
/// its peak, on this thread (0 unless [`Counting`] is the global
/// allocator).
pub fn measure<T>(work: impl FnOnce() -> T) -> (T, usize, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(base));
    let result = work();
    let live = LIVE.with(Cell::get) - base;
    let peak = PEAK.with(Cell::get) - base;
    (result, live.max(0) as usize, peak.max(0) as usize)
}
