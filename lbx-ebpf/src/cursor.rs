//! The one bounds-checked accessor every parser uses.

use aya_ebpf::programs::XdpContext;

/// A pointer to a `T` at `offset` bytes into the packet, if the packet holds all of it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Reads a `T` at `offset` (unaligned: packet headers have no alignment guarantee).
#[inline(always)]
pub fn read_at<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    ptr_at::<T>(ctx, offset).map(|p| unsafe { p.read_unaligned() })
}
