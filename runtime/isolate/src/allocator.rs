//! Each isolate's `ArrayBuffer` allocator: it counts the bytes of every backing store the
//! isolate allocates and refuses one that would take the isolate past its memory limit, so
//! `new ArrayBuffer(4 GiB)` or a loop of `new Uint8Array(64 MiB)` fails in JavaScript with
//! a `RangeError` ("Array buffer allocation failed") instead of taking the node's memory.
//!
//! V8 calls these functions from the isolate's thread and from its background sweeper
//! threads, and may free memory after the isolate is gone: the budget is an `Arc` of atomics
//! and the functions never touch the isolate.

use std::alloc::{self, Layout};
use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use deno_core::v8;

/// Alignment of every backing store (what `malloc` gives, which V8's default uses).
const ALIGN: usize = 16;

/// Typed arrays this small live on V8's heap, and V8 aborts the process if it cannot move
/// one out of it: such allocations are always granted.
const ALWAYS_GRANTED: usize = 64;

/// What an isolate may hold in `ArrayBuffer`s, and what it holds.
#[derive(Debug, Default)]
pub struct Budget {
    /// Bytes of backing stores allocated through the allocator and not yet freed.
    used: AtomicU64,
    /// The isolate's memory limit.
    limit: AtomicU64,
    /// The isolate's V8 heap in use, as last sampled; counts against the same limit.
    heap: AtomicU64,
}

impl Budget {
    pub fn new(limit: u64) -> Arc<Budget> {
        Arc::new(Budget {
            used: AtomicU64::new(0),
            limit: AtomicU64::new(limit),
            heap: AtomicU64::new(0),
        })
    }

    /// Bytes held in backing stores now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// Sets the limit (when a spare runtime is given to an app).
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Release);
    }

    /// Records the isolate's heap in use, sampled between turns.
    pub fn set_heap(&self, bytes: u64) {
        self.heap.store(bytes, Ordering::Release);
    }

    fn charge(&self, len: usize) -> bool {
        let len = len as u64;
        let limit = self.limit.load(Ordering::Acquire);
        let heap = self.heap.load(Ordering::Acquire);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let after = used.checked_add(len)?;
                (after.saturating_add(heap) <= limit || len <= ALWAYS_GRANTED as u64)
                    .then_some(after)
            })
            .is_ok()
    }

    fn release(&self, len: usize) {
        self.used.fetch_sub(len as u64, Ordering::AcqRel);
    }
}

/// A V8 array-buffer allocator drawing on `budget`.
pub fn allocator(budget: Arc<Budget>) -> v8::UniqueRef<v8::Allocator> {
    // SAFETY: the handle is an `Arc<Budget>` turned into a raw pointer, which is what
    // `VTABLE`'s functions take and what `drop_budget` turns back; V8 keeps the allocator
    // (and so the handle) alive until its last backing store is freed.
    unsafe { v8::new_rust_allocator(Arc::into_raw(budget), &VTABLE) }
}

static VTABLE: v8::RustAllocatorVtable<Budget> = v8::RustAllocatorVtable {
    allocate,
    allocate_uninitialized,
    free,
    drop: drop_budget,
};

fn layout(len: usize) -> Option<Layout> {
    Layout::from_size_align(len.max(1), ALIGN).ok()
}

/// Allocates `len` bytes if the budget allows, zeroed or not.
fn obtain(budget: &Budget, len: usize, zeroed: bool) -> *mut c_void {
    let Some(layout) = layout(len) else {
        return ptr::null_mut();
    };
    if !budget.charge(len) {
        return ptr::null_mut();
    }
    // SAFETY: `layout` has a non-zero size.
    let memory = unsafe {
        if zeroed {
            alloc::alloc_zeroed(layout)
        } else {
            alloc::alloc(layout)
        }
    };
    if memory.is_null() {
        budget.release(len);
    }
    memory.cast()
}

unsafe extern "C" fn allocate(budget: &Budget, len: usize) -> *mut c_void {
    obtain(budget, len, true)
}

unsafe extern "C" fn allocate_uninitialized(budget: &Budget, len: usize) -> *mut c_void {
    obtain(budget, len, false)
}

unsafe extern "C" fn free(budget: &Budget, data: *mut c_void, len: usize) {
    if data.is_null() {
        return;
    }
    let Some(layout) = layout(len) else {
        return;
    };
    // SAFETY: V8 frees with the length it allocated, so `data` came from `obtain` with the
    // same layout.
    unsafe { alloc::dealloc(data.cast(), layout) };
    budget.release(len);
}

unsafe extern "C" fn drop_budget(budget: *const Budget) {
    // SAFETY: `budget` is the pointer `allocator` made with `Arc::into_raw`, dropped once.
    drop(unsafe { Arc::from_raw(budget) });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_would_pass_the_limit_and_counts_frees() {
        let budget = Budget::new(1000);
        let a = obtain(&budget, 600, true);
        assert!(!a.is_null());
        assert!(obtain(&budget, 600, false).is_null());
        assert!(
            !obtain(&budget, 32, false).is_null(),
            "tiny buffers are always granted"
        );
        // SAFETY: `a` was allocated above with length 600.
        unsafe { free(&budget, a, 600) };
        assert_eq!(budget.used(), 32);
        budget.set_heap(900);
        assert!(obtain(&budget, 100, true).is_null(), "the heap counts too");
        assert!(obtain(&budget, 1 << 62, true).is_null());
    }
}
