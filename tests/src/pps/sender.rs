//! The traffic: an AF_PACKET socket on a rig's `b` device that sends batches of frames
//! with `sendmmsg`, bypassing the qdisc (`PACKET_QDISC_BYPASS`: the frame goes straight
//! to the veth, whose peer runs the program under test in the same CPU's softirq). Each
//! frame of a batch is a copy of one frame whose source address comes from a sequence
//! (`Flows`), so a batch carries many flows.

use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

/// The source sequence: `span` flows whose source's last four bytes run from `base`.
/// `span` 0: every frame as built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flows {
    pub base: u32,
    pub span: u32,
}

impl Flows {
    pub fn one() -> Self {
        Self { base: 0, span: 0 }
    }
}

/// Offset of the last four bytes of the source address: IPv4, IPv6.
const SRC_TAIL_V4: usize = 14 + 12;
const SRC_TAIL_V6: usize = 14 + 8 + 12;

pub struct Sender {
    fd: OwnedFd,
    frames: Vec<Vec<u8>>,
    src_at: usize,
    flows: Flows,
    next: u32,
}

impl Sender {
    /// A socket on `ifindex` of the calling thread's namespace that sends `batch` frames
    /// a call, copies of `frame`.
    pub fn new(ifindex: u32, frame: &[u8], batch: usize, flows: Flows) -> io::Result<Self> {
        // SAFETY: plain socket calls; the descriptor is owned at once.
        let fd = unsafe {
            let raw = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            OwnedFd::from_raw_fd(raw)
        };
        let one: libc::c_int = 1;
        // SAFETY: setsockopt reads an int.
        if unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&raw const one).cast(),
                core::mem::size_of::<libc::c_int>() as u32,
            )
        } != 0
        {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a zeroed sockaddr_ll with family and index set is a valid address.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: bind reads `addr`, of the size given.
        if unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                core::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        } != 0
        {
            return Err(io::Error::last_os_error());
        }
        let v6 = frame.get(12..14) == Some(&[0x86, 0xdd]);
        Ok(Self {
            fd,
            frames: vec![frame.to_vec(); batch.max(1)],
            src_at: if v6 { SRC_TAIL_V6 } else { SRC_TAIL_V4 },
            flows,
            next: 0,
        })
    }

    /// Sends one batch; returns the frames the kernel took.
    pub fn send(&mut self) -> io::Result<u64> {
        if self.flows.span != 0 {
            for f in &mut self.frames {
                let src = self.flows.base.wrapping_add(self.next);
                self.next = if self.next + 1 >= self.flows.span {
                    0
                } else {
                    self.next + 1
                };
                f[self.src_at..self.src_at + 4].copy_from_slice(&src.to_be_bytes());
            }
        }
        let mut iov: Vec<libc::iovec> = self
            .frames
            .iter_mut()
            .map(|f| libc::iovec {
                iov_base: f.as_mut_ptr().cast(),
                iov_len: f.len(),
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                // SAFETY: a zeroed msghdr is valid (no name, no control data).
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = v;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        // SAFETY: every header points at an iovec of a live frame buffer.
        let n =
            unsafe { libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as u32, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as u64)
    }
}
