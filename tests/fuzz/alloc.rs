//! A counting global allocator for the fuzz binary: the peak of bytes held,
//! counted per thread (the test harness runs tests on several threads) and
//! only while a measurement is running.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

pub struct Counting;

/// One allocation larger than this while measuring means the bound is
/// already broken; the process stops with the case's replay line rather
/// than asking the system for it (which could take the machine's memory).
pub const MEASURED_ALLOCATION_CAP_BYTES: usize = 256 << 20;

thread_local! {
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    static HELD: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static LABEL: Cell<&'static str> = const { Cell::new("") };
    static CASE: Cell<u64> = const { Cell::new(0) };
}

fn count(delta: isize) {
    let _ = MEASURING.try_with(|m| {
        if m.get() {
            HELD.with(|h| {
                let held = h.get() + delta;
                h.set(held);
                PEAK.with(|p| p.set(p.get().max(held)));
            });
        }
    });
}

fn check_cap(size: usize) {
    let measuring = MEASURING.try_with(Cell::get).unwrap_or(false);
    if measuring && size > MEASURED_ALLOCATION_CAP_BYTES {
        let label = LABEL.with(Cell::get);
        let msg = b"\nfuzz: one allocation above the measured cap; replay with ";
        let (mut digits, mut at, mut case) = ([0u8; 20], 20, CASE.with(Cell::get));
        loop {
            at -= 1;
            digits[at] = b'0' + (case % 10) as u8;
            case /= 10;
            if case == 0 {
                break;
            }
        }
        // SAFETY: write(2) on stderr with valid buffers; nothing allocates.
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::write(2, label.as_ptr().cast(), label.len());
            libc::write(2, digits[at..].as_ptr().cast(), 20 - at);
            libc::write(2, b"\n".as_ptr().cast(), 1);
        }
        std::process::abort();
    }
}

// SAFETY: every call is passed to the system allocator unchanged; the
// bookkeeping touches only const-initialised thread locals, which never
// allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check_cap(layout.size());
        let p = System.alloc(layout);
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check_cap(layout.size());
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check_cap(new_size);
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        p
    }
}

/// Runs `f` and returns its result with the most bytes it held at once
/// (allocated during `f` and not yet freed). If one allocation passes the
/// cap, `label` followed by `case` is printed: the line that replays it.
pub fn peak_during<R>(label: &'static str, case: u64, f: impl FnOnce() -> R) -> (R, usize) {
    LABEL.with(|l| l.set(label));
    CASE.with(|c| c.set(case));
    HELD.with(|h| h.set(0));
    PEAK.with(|p| p.set(0));
    MEASURING.with(|m| m.set(true));
    let result = f();
    MEASURING.with(|m| m.set(false));
    (result, PEAK.with(Cell::get).max(0) as usize)
}
