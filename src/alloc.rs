//! The binary's global allocator: the system allocator, plus a hint to the
//! kernel that large allocations should be backed by transparent huge pages.
//!
//! A large run touches hundreds of megabytes of fresh anonymous memory
//! (cas_ids, the store's shard slots, certification's blocks). In 4 KiB
//! pages that is tens of thousands of page faults; in 2 MiB pages a few
//! hundred (BENCHMARKS.md has the figures). Where the kernel's THP mode is
//! `madvise` (the common default), nothing is huge unless asked for, so
//! allocations of at least [`HUGE_PAGE_HINT_MIN_BYTES`] are `madvise`d
//! `MADV_HUGEPAGE`. It is only a hint: where THP is off, or on other
//! systems, nothing changes.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations from this size on get the huge-page hint.
pub const HUGE_PAGE_HINT_MIN_BYTES: usize = 2 << 20;

/// [`System`] with the huge-page hint on large allocations.
pub struct HugePageHintAlloc;

// SAFETY: every method forwards to `System` with the same arguments and
// returns its result unchanged; the hint never touches the memory's
// contents (MADV_HUGEPAGE only changes how the kernel backs the range).
unsafe impl GlobalAlloc for HugePageHintAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let ptr = unsafe { System.alloc(layout) };
        hint(ptr, layout.size());
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        hint(ptr, layout.size());
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let ptr = unsafe { System.realloc(ptr, layout, new_size) };
        hint(ptr, new_size);
        ptr
    }
}

/// Asks for huge pages behind the whole pages of `[ptr, ptr + size)`.
fn hint(ptr: *mut u8, size: usize) {
    #[cfg(target_os = "linux")]
    if !ptr.is_null() && size >= HUGE_PAGE_HINT_MIN_BYTES {
        const PAGE_BYTES: usize = 4096;
        let start = (ptr as usize).next_multiple_of(PAGE_BYTES);
        let end = (ptr as usize + size) / PAGE_BYTES * PAGE_BYTES;
        if end > start {
            // SAFETY: the range lies inside an allocation we just got and
            // is page-aligned; MADV_HUGEPAGE neither reads nor writes it.
            // Failure (THP off, an old kernel) only means no hint, and must
            // not leak into `errno`: a caller may allocate between a failed
            // libc call and reading its error.
            unsafe {
                let errno = *libc::__errno_location();
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
                *libc::__errno_location() = errno;
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, size);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_and_small_allocations_behave_like_the_system_allocators() {
        let allocator = HugePageHintAlloc;
        for size in [64, HUGE_PAGE_HINT_MIN_BYTES + 123] {
            let layout = Layout::from_size_align(size, 64).unwrap();
            // SAFETY: non-zero layout; every pointer is checked, used inside
            // its size and freed with the layout it was allocated with.
            unsafe {
                let zeroed = allocator.alloc_zeroed(layout);
                assert!(!zeroed.is_null());
                let bytes = std::slice::from_raw_parts_mut(zeroed, size);
                assert!(bytes.iter().all(|b| *b == 0));
                bytes[size - 1] = 7;
                let grown = allocator.realloc(zeroed, layout, size * 2);
                assert!(!grown.is_null());
                assert_eq!(*grown.add(size - 1), 7);
                allocator.dealloc(grown, Layout::from_size_align(size * 2, 64).unwrap());
                let plain = allocator.alloc(layout);
                assert!(!plain.is_null());
                plain.write_bytes(1, size);
                assert_eq!(*plain.add(size / 2), 1);
                allocator.dealloc(plain, layout);
            }
        }
    }
}
