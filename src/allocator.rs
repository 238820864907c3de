//! The global allocator: mimalloc, asked the way Rust's own `System`
//! allocator asks libc.
//!
//! The `mimalloc` crate's allocator calls `mi_malloc_aligned` for every
//! allocation, whose fast path covers only blocks up to 1 KiB: Pingora's
//! per-request buffers, header maps and futures are larger and took
//! mimalloc's generic aligned path, a few hundred instructions each.
//! Every mimalloc block is aligned to 16 bytes (or to its size, if
//! smaller), so when a layout asks no more than that, plain `mi_malloc` is
//! enough; anything else still goes to the aligned functions.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc,
    mi_zalloc_aligned,
};

/// The alignment every block has (mimalloc's `MI_MAX_ALIGN_SIZE`, and
/// what Rust's `System` assumes of malloc on 64-bit targets).
const MIN_ALIGN: usize = 16;

pub struct MiMalloc;

/// Whether a block of `size` bytes from plain `mi_malloc` is aligned
/// enough for `align`.
#[inline]
fn plain(align: usize, size: usize) -> bool {
    align <= MIN_ALIGN && align <= size
}

unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            mi_malloc(layout.size()) as *mut u8
        } else {
            mi_malloc_aligned(layout.size(), layout.align()) as *mut u8
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            mi_zalloc(layout.size()) as *mut u8
        } else {
            mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi_free(ptr as *mut c_void);
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain(layout.align(), new_size) {
            mi_realloc(ptr as *mut c_void, new_size) as *mut u8
        } else {
            mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_aligned_as_asked() {
        let a = MiMalloc;
        for (size, align) in [(1, 1), (8, 8), (24, 8), (3000, 16), (100, 64), (5000, 4096)] {
            let layout = Layout::from_size_align(size, align).unwrap();
            unsafe {
                let p = a.alloc(layout);
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0, "alloc {size}/{align}");
                let q = a.realloc(p, layout, size * 3);
                assert_eq!(q as usize % align, 0, "realloc {size}/{align}");
                a.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
                let z = a.alloc_zeroed(layout);
                assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                a.dealloc(z, layout);
            }
        }
    }
}
