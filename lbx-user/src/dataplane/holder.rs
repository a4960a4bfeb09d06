//! Who already holds an interface's XDP hook: the program the kernel reports attached
//! (rtnetlink's link attributes) and the processes that hold it open (/proc), so that a
//! command that cannot attach names what to stop instead of a bare "device busy".

use std::{
    collections::BTreeSet,
    fmt, io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use lbx_common::programs;

/// An XDP program attached to an interface, and who holds it.
#[derive(Debug, Clone)]
pub struct Attached {
    pub id: u32,
    /// In the driver (native mode); else in the stack (generic) or offloaded.
    pub native: bool,
    /// The program's name as the kernel has it (at most 15 bytes).
    pub name: String,
    pub holders: Vec<Process>,
}

/// A process holding a program open.
#[derive(Debug, Clone)]
pub struct Process {
    pub pid: u32,
    pub command: String,
    /// The Unix sockets it listens on by path: an lbx agent's control socket.
    pub sockets: Vec<PathBuf>,
}

impl Attached {
    /// An lbx agent: the balancer program, held by an `lbx` process.
    pub fn agent(&self) -> Option<&Process> {
        (self.name == programs::BALANCER)
            .then(|| self.holders.iter().find(|p| p.is_lbx()))
            .flatten()
    }
}

impl Process {
    fn is_lbx(&self) -> bool {
        self.command
            .split(' ')
            .next()
            .and_then(|p| Path::new(p).file_name())
            .is_some_and(|n| n == "lbx")
    }
}

impl fmt::Display for Attached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(agent) = self.agent() {
            write!(f, "an lbx agent holds it: pid {}", agent.pid)?;
            match agent.sockets.as_slice() {
                [] => {}
                sockets => {
                    let list: Vec<_> = sockets.iter().map(|s| s.display().to_string()).collect();
                    write!(f, ", control socket {}", list.join(", "))?;
                }
            }
            return write!(
                f,
                ", XDP program {} ({}), started as `{}`",
                self.id, self.name, agent.command
            );
        }
        write!(f, "XDP program {} ({}) is attached", self.id, self.name)?;
        match self.holders.as_slice() {
            [] => write!(
                f,
                ", held by no process (a pinned link, or attached by `ip link`)"
            ),
            holders => {
                let list: Vec<_> = holders
                    .iter()
                    .map(|p| format!("pid {} `{}`", p.pid, p.command))
                    .collect();
                write!(f, ", held by {}", list.join(", "))
            }
        }
    }
}

/// What holds the XDP hook of the interface with index `ifindex`, if anything does.
pub fn attached(ifindex: u32) -> io::Result<Option<Attached>> {
    let Some((id, mode)) = xdp_program(ifindex)? else {
        return Ok(None);
    };
    let name = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_owned))
        .unwrap_or_else(|| "unnamed".to_owned());
    Ok(Some(Attached {
        id,
        native: mode == XDP_ATTACHED_DRV,
        name,
        holders: holders(id),
    }))
}

// From linux/netlink.h, linux/rtnetlink.h and linux/if_link.h.
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const RTM_GETLINK: u16 = 18;
const RTM_NEWLINK: u16 = 16;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_PROG_ID: u16 = 4;
const XDP_ATTACHED_DRV: u8 = 1;
/// Attribute types without the nested and byte-order flags.
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSGHDR_LEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;

/// The id of the XDP program attached to the interface and how (`XDP_ATTACHED_*`), by an
/// RTM_GETLINK request for that one interface.
fn xdp_program(ifindex: u32) -> io::Result<Option<(u32, u8)>> {
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor we just opened and own.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };

    const LEN: usize = NLMSGHDR_LEN + IFINFOMSG_LEN;
    let mut req = [0u8; LEN];
    req[0..4].copy_from_slice(&(LEN as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    req[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // ifinfomsg: family AF_UNSPEC, then the index at offset 4.
    req[NLMSGHDR_LEN + 4..NLMSGHDR_LEN + 8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    // SAFETY: send(2) from a live buffer of the given length.
    if unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: recv(2) into a live buffer of the given length.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    parse_link_reply(&buf[..n as usize])
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn malformed() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "malformed rtnetlink reply")
}

/// Reads IFLA_XDP's program id and attach mode out of an RTM_NEWLINK reply (id 0 or
/// absent: nothing attached), or the error an NLMSG_ERROR reply carries.
fn parse_link_reply(msg: &[u8]) -> io::Result<Option<(u32, u8)>> {
    let len = u32_at(msg, 0).ok_or_else(malformed)? as usize;
    let msg = msg.get(..len).ok_or_else(malformed)?;
    match u16_at(msg, 4).ok_or_else(malformed)? {
        NLMSG_ERROR => {
            let errno = u32_at(msg, NLMSGHDR_LEN).ok_or_else(malformed)? as i32;
            return Err(io::Error::from_raw_os_error(-errno));
        }
        RTM_NEWLINK => {}
        _ => return Err(malformed()),
    }
    let attrs = msg
        .get(NLMSGHDR_LEN + IFINFOMSG_LEN..)
        .ok_or_else(malformed)?;
    let Some(xdp) = attribute(attrs, IFLA_XDP) else {
        return Ok(None);
    };
    let mode = attribute(xdp, IFLA_XDP_ATTACHED)
        .and_then(|v| v.first().copied())
        .unwrap_or(0);
    Ok(attribute(xdp, IFLA_XDP_PROG_ID)
        .and_then(|v| u32_at(v, 0))
        .filter(|&id| id != 0)
        .map(|id| (id, mode)))
}

/// The payload of the first attribute of `kind` in a run of rtattrs.
fn attribute(mut attrs: &[u8], kind: u16) -> Option<&[u8]> {
    while let (Some(len), Some(ty)) = (u16_at(attrs, 0), u16_at(attrs, 2)) {
        let len = len as usize;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if ty & NLA_TYPE_MASK == kind {
            return Some(&attrs[4..len]);
        }
        attrs = attrs.get(len.next_multiple_of(4)..)?;
    }
    None
}

/// The processes (but this one) with a descriptor of program `id` or of a link to it.
fn holders(id: u32) -> Vec<Process> {
    let me = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<Process> = procs
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && holds(pid, id))
        .map(|pid| Process {
            pid,
            command: command(pid),
            sockets: listening_sockets(pid),
        })
        .collect();
    found.sort_by_key(|p| p.pid);
    found
}

fn holds(pid: u32, id: u32) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let wanted = format!("prog_id:\t{id}");
    fds.filter_map(Result::ok).any(|fd| {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            return false;
        };
        let target = target.to_string_lossy();
        (target == "anon_inode:bpf-prog" || target == "anon_inode:bpf_link")
            && std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .is_ok_and(|info| info.lines().any(|l| l == wanted))
    })
}

fn command(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(String::from_utf8_lossy)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// The paths of the Unix sockets `pid` listens on: its socket descriptors' inodes, looked
/// up in its network namespace's /proc/net/unix.
fn listening_sockets(pid: u32) -> Vec<PathBuf> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let inodes: BTreeSet<String> = fds
        .filter_map(Result::ok)
        .filter_map(|fd| {
            let target = std::fs::read_link(fd.path()).ok()?;
            let target = target.to_str()?;
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let Ok(table) = std::fs::read_to_string(format!("/proc/{pid}/net/unix")) else {
        return Vec::new();
    };
    // Num RefCount Protocol Flags Type St Inode Path; flag 0x10000 is a listening socket.
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
            let path = f.get(7)?;
            (flags & 0x10000 != 0 && inodes.contains(*f.get(6)?) && !path.starts_with('@'))
                .then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtattr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&(4 + payload.len() as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(payload);
        a.resize(a.len().next_multiple_of(4), 0);
        a
    }

    fn reply(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut m = vec![0u8; NLMSGHDR_LEN];
        m.extend_from_slice(body);
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        m[4..6].copy_from_slice(&kind.to_ne_bytes());
        m
    }

    #[test]
    fn reads_the_program_id_among_other_attributes() {
        let mut body = vec![0u8; IFINFOMSG_LEN];
        body.extend(rtattr(3, b"eth0\0"));
        let mut xdp = rtattr(IFLA_XDP_ATTACHED, &[XDP_ATTACHED_DRV]);
        xdp.extend(rtattr(IFLA_XDP_PROG_ID, &57u32.to_ne_bytes()));
        body.extend(rtattr(IFLA_XDP | 0x8000, &xdp));
        assert_eq!(
            parse_link_reply(&reply(RTM_NEWLINK, &body)).unwrap(),
            Some((57, XDP_ATTACHED_DRV))
        );
    }

    #[test]
    fn no_program_is_none_and_errors_carry_their_errno() {
        let mut body = vec![0u8; IFINFOMSG_LEN];
        body.extend(rtattr(IFLA_XDP, &rtattr(IFLA_XDP_ATTACHED, &[0])));
        assert_eq!(parse_link_reply(&reply(RTM_NEWLINK, &body)).unwrap(), None);
        let err = reply(NLMSG_ERROR, &(-libc::ENODEV).to_ne_bytes());
        assert_eq!(
            parse_link_reply(&err).unwrap_err().raw_os_error(),
            Some(libc::ENODEV)
        );
        // A reply cut short is malformed, not a panic.
        let full = reply(RTM_NEWLINK, &body);
        for cut in 0..full.len() {
            let _ = parse_link_reply(&full[..cut]);
        }
    }
}
