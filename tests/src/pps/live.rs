//! BPF_PROG_TEST_RUN in live-frames mode (`BPF_F_TEST_XDP_LIVE_FRAMES`, Linux 5.18): the
//! kernel builds real XDP frames from one input frame and really sends those the program
//! sends (XDP_TX goes out of the device named as ingress, XDP_REDIRECT where it points).
//! aya 0.14's `TestRunOptions` has no flags, context or batch size, hence the raw syscall.
//!
//! The kernel copies the input into a page once per call (its pages carry a cookie per
//! call) and recycles pages within a call without copying again: an encapsulating
//! program would see its own output. So every call runs exactly one batch
//! (`repeat == batch_size`), each frame on a page of its own, freshly copied.

use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd};

/// `BPF_PROG_TEST_RUN` and `BPF_F_TEST_XDP_LIVE_FRAMES` (linux/bpf.h).
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
/// The kernel's largest batch (`TEST_XDP_MAX_BATCH`).
pub const MAX_BATCH: u32 = 256;

/// The `test` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    pad: u32,
}
const _: () = assert!(core::mem::size_of::<TestAttr>() == 80);

/// `struct xdp_md`: live frames need `data_end` equal to the frame's length and take the
/// device from `ingress_ifindex`.
#[repr(C)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

/// Runs `prog` on `batch` live copies of `frame`, as if they arrived on `ifindex` (a
/// device of the calling thread's network namespace), in one batch.
pub fn run(prog: BorrowedFd<'_>, frame: &[u8], ifindex: u32, batch: u32) -> io::Result<()> {
    let mut ctx = XdpMd {
        data: 0,
        data_end: frame.len() as u32,
        data_meta: 0,
        ingress_ifindex: ifindex,
        rx_queue_index: 0,
        egress_ifindex: 0,
    };
    let attr = TestAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat: batch,
        ctx_size_in: core::mem::size_of::<XdpMd>() as u32,
        ctx_in: (&raw mut ctx) as u64,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        batch_size: batch,
        ..TestAttr::default()
    };
    // SAFETY: `attr` and what it points to (`frame`, `ctx`) outlive the call; the kernel
    // writes nothing back in live mode but `retval`/`duration` inside `attr`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &raw const attr,
            core::mem::size_of::<TestAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
