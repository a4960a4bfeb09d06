//! `ethtool -K IFACE tx off` through the ethtool ioctl, so the tests need no ethtool binary.
//!
//! Why: a veth hands TCP/UDP to its peer with partial checksums (TX checksum offload). After
//! lbx re-sends such a frame with native XDP_TX, the backend sees a bad checksum and drops it
//! (testbed pitfall 2). Turning TX checksum offload off on the client makes the client's
//! kernel write full checksums.

use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

/// From linux/sockios.h and linux/ethtool.h.
const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` with the `ifr_data` member of its union; padded to the kernel's 40 bytes.
#[repr(C)]
struct IfreqData {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut EthtoolValue,
    _pad: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<IfreqData>() == 40);

fn ethtool_value(sock: &OwnedFd, iface: &str, cmd: u32, data: u32) -> io::Result<u32> {
    let mut value = EthtoolValue { cmd, data };
    let mut req = IfreqData {
        name: [0; libc::IFNAMSIZ],
        data: &mut value,
        _pad: [0; 16],
    };
    if iface.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {iface:?} is too long"),
        ));
    }
    for (dst, src) in req.name.iter_mut().zip(iface.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq whose data pointer points at `value`, both alive for the
    // call; SIOCETHTOOL reads and writes only those.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut req) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value.data)
}

/// Turns TX checksum offload off on `iface` in the calling thread's network namespace and
/// checks that it stuck.
pub fn disable_tx_checksum(iface: &str) -> io::Result<()> {
    // SAFETY: plain socket creation; the descriptor is owned by the OwnedFd at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    ethtool_value(&sock, iface, ETHTOOL_STXCSUM, 0)?;
    if ethtool_value(&sock, iface, ETHTOOL_GTXCSUM, 0)? != 0 {
        return Err(io::Error::other(format!(
            "TX checksum offload on {iface} is still on after turning it off"
        )));
    }
    Ok(())
}
