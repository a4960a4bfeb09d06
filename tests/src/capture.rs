//! Frame capture on one interface with an AF_PACKET socket (what `tcpdump -e -n -i IF` shows,
//! reduced to the headers the tests check), so the tests need no tcpdump binary.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::netns::Netns;

/// A capture stops by itself after this long or this many frames, stopped or not.
const MAX_DURATION: Duration = Duration::from_secs(120);
const MAX_FRAMES: usize = 200_000;

const ETH_P_ALL: u16 = 0x0003;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// The headers of one captured frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub ethertype: u16,
    /// Source and destination of an IPv4 or IPv6 packet.
    pub src_ip: Option<IpAddr>,
    pub dst_ip: Option<IpAddr>,
    /// Sent by this host rather than received.
    pub outgoing: bool,
}

impl Frame {
    fn parse(bytes: &[u8], outgoing: bool) -> Option<Self> {
        let mac = |at: usize| -> Option<[u8; 6]> { bytes.get(at..at + 6)?.try_into().ok() };
        let ethertype = u16::from_be_bytes(bytes.get(12..14)?.try_into().ok()?);
        let ip = &bytes[14..];
        let (src_ip, dst_ip) = match ethertype {
            ETH_P_IP if ip.len() >= 20 => {
                let a: [u8; 4] = ip[12..16].try_into().ok()?;
                let b: [u8; 4] = ip[16..20].try_into().ok()?;
                (
                    Some(IpAddr::V4(Ipv4Addr::from(a))),
                    Some(IpAddr::V4(Ipv4Addr::from(b))),
                )
            }
            ETH_P_IPV6 if ip.len() >= 40 => {
                let a: [u8; 16] = ip[8..24].try_into().ok()?;
                let b: [u8; 16] = ip[24..40].try_into().ok()?;
                (
                    Some(IpAddr::V6(Ipv6Addr::from(a))),
                    Some(IpAddr::V6(Ipv6Addr::from(b))),
                )
            }
            _ => (None, None),
        };
        Some(Self {
            dst_mac: mac(0)?,
            src_mac: mac(6)?,
            ethertype,
            src_ip,
            dst_ip,
            outgoing,
        })
    }
}

/// A running capture; [`Capture::stop`] returns the frames seen.
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<anyhow::Result<Vec<Frame>>>,
}

impl Capture {
    /// Starts capturing every frame on `iface` in `netns`; returns once the socket is bound, so
    /// traffic sent afterwards is seen.
    pub fn start(netns: &Netns, iface: &str) -> anyhow::Result<Self> {
        let iface_owned = iface.to_owned();
        let sock = netns
            .run(move || open_packet_socket(&iface_owned))?
            .with_context(|| format!("failed to capture on {iface} in {}", netns.name()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || capture_loop(&sock, &flag));
        Ok(Self { stop, thread })
    }

    /// Stops the capture and returns the frames, in order.
    pub fn stop(self) -> anyhow::Result<Vec<Frame>> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.join() {
            Ok(frames) => frames,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// Turns a libc return code into a result that names the failed call.
fn check(rc: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(rc)
}

/// An AF_PACKET socket bound to `iface` in the calling thread's namespace, with a short
/// receive timeout so the capture loop can notice it was stopped.
fn open_packet_socket(iface: &str) -> io::Result<OwnedFd> {
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: `name` is a valid C string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: plain socket creation; the descriptor is owned by the OwnedFd at once.
    let fd = check(
        unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_ALL.to_be()),
            )
        },
        "socket(AF_PACKET)",
    )?;
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };

    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as libc::sa_family_t;
    addr.sll_protocol = ETH_P_ALL.to_be();
    addr.sll_ifindex = i32::try_from(ifindex).map_err(io::Error::other)?;
    // SAFETY: `addr` is a valid sockaddr_ll and the length is its size.
    check(
        unsafe {
            libc::bind(
                sock.as_raw_fd(),
                std::ptr::from_ref(&addr).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        },
        "bind(AF_PACKET)",
    )?;

    // Room for bursts while the capture thread is descheduled (root may exceed rmem_max).
    let rcvbuf: libc::c_int = 16 << 20;
    // SAFETY: SO_RCVBUFFORCE takes an int; pointer and length describe `rcvbuf`.
    check(
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                std::ptr::from_ref(&rcvbuf).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        },
        "setsockopt(SO_RCVBUFFORCE)",
    )?;

    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: SO_RCVTIMEO takes a timeval; pointer and length describe `timeout`.
    check(
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::from_ref(&timeout).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        },
        "setsockopt(SO_RCVTIMEO)",
    )?;
    Ok(sock)
}

fn capture_loop(sock: &OwnedFd, stop: &AtomicBool) -> anyhow::Result<Vec<Frame>> {
    let started = Instant::now();
    let mut frames = Vec::new();
    let mut buf = [0u8; 256];
    while !stop.load(Ordering::Relaxed)
        && started.elapsed() < MAX_DURATION
        && frames.len() < MAX_FRAMES
    {
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut from_len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: buffer and address pointers with their lengths describe live locals. Frames
        // longer than the buffer are truncated, which keeps the headers the parser needs.
        let n = unsafe {
            libc::recvfrom(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                std::ptr::from_mut(&mut from).cast(),
                &mut from_len,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => continue,
                _ => return Err(e).context("recvfrom(AF_PACKET)"),
            }
        }
        let len = usize::try_from(n).unwrap_or(0).min(buf.len());
        let outgoing = from.sll_pkttype == libc::PACKET_OUTGOING;
        if let Some(frame) = Frame::parse(&buf[..len], outgoing) {
            frames.push(frame);
        }
    }
    Ok(frames)
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
