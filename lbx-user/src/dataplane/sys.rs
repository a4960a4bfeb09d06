//! The few kernel interfaces aya 0.14 does not wrap: a BPF "grace period" barrier,
//! memory-mapping an array map, the BPF filesystem and interface facts.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    path::Path,
    ptr::NonNull,
};

use lbx_common::{RING_LANES, flows::FlowSlot, ring_entry};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_TYPE_XDP: u32 = 6;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// `union bpf_attr`, large enough for the commands used here; the kernel wants the
/// unused tail zeroed.
#[repr(C, align(8))]
struct BpfAttr([u8; 128]);

impl BpfAttr {
    fn new() -> Self {
        Self([0; 128])
    }
    fn put_u32(&mut self, offset: usize, v: u32) {
        self.0[offset..offset + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn put_u64(&mut self, offset: usize, v: u64) {
        self.0[offset..offset + 8].copy_from_slice(&v.to_ne_bytes());
    }
}

fn bpf(cmd: libc::c_long, attr: &mut BpfAttr) -> io::Result<i64> {
    // SAFETY: attr is a valid, zero-padded bpf_attr of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BpfAttr,
            std::mem::size_of::<BpfAttr>() as u32,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn map_create(
    map_type: u32,
    key: u32,
    value: u32,
    entries: u32,
    inner: RawFd,
) -> io::Result<OwnedFd> {
    let mut attr = BpfAttr::new();
    attr.put_u32(0, map_type);
    attr.put_u32(4, key);
    attr.put_u32(8, value);
    attr.put_u32(12, entries);
    attr.put_u32(16, 0); // map_flags
    attr.put_u32(20, inner.max(0) as u32); // inner_map_fd
    let fd = bpf(BPF_MAP_CREATE, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn map_update(map: RawFd, key: &u32, value: &u32) -> io::Result<()> {
    let mut attr = BpfAttr::new();
    attr.put_u32(0, map as u32);
    attr.put_u64(8, key as *const u32 as u64);
    attr.put_u64(16, value as *const u32 as u64);
    attr.put_u64(24, 0); // BPF_ANY
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
}

/// The XDP link pinned at `path`: its program's id and its interface's index (0 once the
/// interface is gone). From the link's own descriptor, which needs no more privilege than
/// the pin's file does.
pub fn pinned_xdp_link(path: &Path) -> io::Result<(u32, u32)> {
    let c = c_path(path)?;
    let mut attr = BpfAttr::new();
    attr.put_u64(0, c.as_ptr() as u64);
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor we now own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    // struct bpf_link_info: type, id, prog_id, then an 8-aligned union whose XDP member
    // starts with the ifindex.
    #[repr(C, align(8))]
    struct LinkInfo([u32; 16]);
    let mut info = LinkInfo([0; 16]);
    let mut attr = BpfAttr::new();
    attr.put_u32(0, fd.as_raw_fd() as u32);
    attr.put_u32(4, std::mem::size_of::<LinkInfo>() as u32);
    attr.put_u64(8, info.0.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    if info.0[0] != BPF_LINK_TYPE_XDP {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not an XDP link", path.display()),
        ));
    }
    Ok((info.0[2], info.0[4]))
}

/// An exclusive `flock` on a directory, held while this lives. The kernel lets go when the
/// process ends, however it ends, so a lock that is held means a live holder.
#[derive(Debug)]
pub struct DirLock {
    _fd: OwnedFd,
}

impl DirLock {
    /// The lock, or None while another process holds it.
    pub fn try_lock(dir: &Path) -> io::Result<Option<Self>> {
        let c = c_path(dir)?;
        // SAFETY: open(2) on a valid C string; the result is checked.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor we just opened and own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: flock(2) on a live descriptor.
        if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EWOULDBLOCK) => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(Self { _fd: fd }))
    }
}

/// Waits until every BPF program that was running when it was called has returned.
///
/// The kernel waits for an RCU grace period after each update of a map-in-map from user
/// space, so that the caller knows no program still uses the old inner map. Updating a
/// private one-slot array-of-maps is therefore a barrier: after it, no packet that read
/// the previous generation slot is still in flight.
pub struct ProgramBarrier {
    outer: OwnedFd,
    inner: OwnedFd,
}

impl ProgramBarrier {
    pub fn new() -> io::Result<Self> {
        let inner = map_create(BPF_MAP_TYPE_ARRAY, 4, 4, 1, -1)?;
        let outer = map_create(BPF_MAP_TYPE_ARRAY_OF_MAPS, 4, 4, 1, inner.as_raw_fd())?;
        Ok(Self { outer, inner })
    }

    pub fn wait(&self) -> io::Result<()> {
        map_update(self.outer.as_raw_fd(), &0, &(self.inner.as_raw_fd() as u32))
    }
}

/// The value area of a memory-mappable array map (`BPF_F_MMAPABLE`), mapped shared into
/// our memory as `len` elements of `T`; unmapped on drop.
struct Mapping<T> {
    ptr: NonNull<T>,
    len: usize,
    bytes: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value.
unsafe impl<T> Send for Mapping<T> {}

impl<T> Mapping<T> {
    /// Maps the `len` elements behind `fd`. The kernel lays a mappable array's values
    /// out back to back at its element stride, which is `T`'s size for the maps mapped
    /// here (8-byte ring words, 64-byte flow slots).
    fn new(fd: BorrowedFd<'_>, len: usize) -> io::Result<Self> {
        let page = 4096usize;
        let bytes = (len * std::mem::size_of::<T>()).div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of the map's value area; checked for failure.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast()).expect("mmap returned null");
        Ok(Self { ptr, len, bytes })
    }
}

impl<T> Drop for Mapping<T> {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what new() mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
    }
}

/// The elements of the rings map, mapped into our memory (`BPF_F_MMAPABLE`): `u64`s
/// holding `RING_LANES` 16-bit ring entries each (`lbx_common::ring_entry`).
pub struct MappedRings(Mapping<u64>);

impl MappedRings {
    /// Maps the `len` elements of the `u64` array behind `fd`.
    pub fn new(fd: BorrowedFd<'_>, len: usize) -> io::Result<Self> {
        Mapping::new(fd, len).map(Self)
    }

    /// The elements, as the program reads them.
    fn elems(&mut self) -> &mut [u64] {
        // SAFETY: the mapping holds `len` u64 elements for as long as self lives, and
        // &mut self gives exclusive access on our side.
        unsafe { std::slice::from_raw_parts_mut(self.0.ptr.as_ptr(), self.0.len) }
    }

    /// Every element of the rings as they are now (both generation slots).
    pub fn snapshot(&self) -> Vec<u64> {
        // SAFETY: the mapping holds `len` u64 elements for as long as self lives; read only.
        unsafe { std::slice::from_raw_parts(self.0.ptr.as_ptr(), self.0.len) }.to_vec()
    }

    /// The `len` ring entries (backend slots) from element `start` on, as the program
    /// reads them; `None` if they would run past the end of the rings.
    pub fn read_ring(&self, start: usize, len: usize) -> Option<Vec<u32>> {
        let count = len.div_ceil(RING_LANES as usize);
        if start + count > self.0.len {
            return None;
        }
        // SAFETY: in bounds of the mapping (checked above); read only.
        let elems = unsafe { std::slice::from_raw_parts(self.0.ptr.as_ptr().add(start), count) };
        Some(
            (0..len as u32)
                .map(|i| ring_entry(elems[(i / RING_LANES) as usize], i))
                .collect(),
        )
    }

    /// Writes the ring `entries` (backend slots) from element `start` on, `RING_LANES`
    /// to an element, each whole element in one store.
    pub fn write_ring(&mut self, start: usize, entries: &[u32]) {
        let count = entries.len().div_ceil(RING_LANES as usize);
        assert!(
            start + count <= self.0.len,
            "write past the end of the rings"
        );
        for (elem, lanes) in self.elems()[start..start + count]
            .iter_mut()
            .zip(entries.chunks(RING_LANES as usize))
        {
            *elem = pack_lanes(lanes);
        }
    }
}

/// One element of the rings map from up to `RING_LANES` backend slots.
fn pack_lanes(lanes: &[u32]) -> u64 {
    lanes.iter().enumerate().fold(0, |e, (i, &slot)| {
        debug_assert!(slot < 1 << 16, "backend slots are 16-bit");
        e | (u64::from(slot) & 0xffff) << (16 * i)
    })
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = c_path(path) else { return false };
    // SAFETY: statfs on a valid C string into a zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

fn mount_bpffs(at: &Path) -> io::Result<()> {
    let c = c_path(at)?;
    let fs = CString::new("bpf").expect("no NUL");
    // SAFETY: mount(2) with valid C strings and no data.
    if unsafe { libc::mount(fs.as_ptr(), c.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!(
                "cannot mount a BPF filesystem on {}: {e} (as root: `mount -t bpf bpf {0}`)",
                at.display()
            ),
        ));
    }
    Ok(())
}

/// Makes `dir` a directory on a BPF filesystem, as bpftool and Cilium do. Nothing to do if
/// it is on one; a directory that exists or can be made gets a BPF filesystem mounted on
/// it. Where it cannot be made, because its nearest existing ancestor is on a filesystem
/// that refuses new directories (the fresh sysfs that `ip netns exec` mounts, whose
/// /sys/fs/bpf is empty and not mounted), a BPF filesystem goes on that ancestor if it is
/// an empty directory, and `dir` is made inside it. lbx never mounts over a directory
/// that holds anything.
pub fn ensure_bpffs(dir: &Path) -> io::Result<()> {
    if is_bpffs(dir) {
        return Ok(());
    }
    if dir.is_dir() {
        return mount_bpffs(dir);
    }
    let ancestor = dir
        .ancestors()
        .skip(1)
        .find(|a| a.is_dir())
        .unwrap_or(Path::new("/"));
    if is_bpffs(ancestor) {
        return std::fs::create_dir_all(dir);
    }
    let refused = match std::fs::create_dir_all(dir) {
        Ok(()) => return mount_bpffs(dir),
        Err(e) => e,
    };
    let empty = std::fs::read_dir(ancestor).is_ok_and(|mut d| d.next().is_none());
    if !empty || ancestor == Path::new("/") {
        return Err(io::Error::new(
            refused.kind(),
            format!(
                "cannot create {}: {refused}; {} is not a BPF filesystem and is not empty, so \
                 lbx will not mount one over it: give --bpffs a directory on a BPF filesystem \
                 (e.g. /sys/fs/bpf, after `mount -t bpf bpf /sys/fs/bpf`)",
                dir.display(),
                ancestor.display()
            ),
        ));
    }
    mount_bpffs(ancestor)?;
    std::fs::create_dir_all(dir)
}

/// The interface's index, or None if there is no such interface.
pub fn if_index(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: valid C string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// The interface's MTU, from sysfs.
pub fn if_mtu(name: &str) -> io::Result<u32> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))?;
    s.trim().parse().map_err(io::Error::other)
}

/// The data plane's coarse clock: whole seconds since boot, plus one so that no tick is
/// zero (zero stands for "no clock yet"). Every agent of one boot reads the same clock,
/// so the stamps an agent before this one wrote stay comparable.
pub fn coarse_now() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write; CLOCK_BOOTTIME always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u32 + 1
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Older kernels charge BPF maps to RLIMIT_MEMLOCK; newer ones ignore it.
pub fn raise_memlock_limit() {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid struct; failure only matters on old kernels.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) };
}

/// The connection table (`FLOWS`, memory-mappable), mapped into our memory: the agent
/// answers `lbx flow` from it and tests read or clear it whole without a system call per
/// slot.
pub struct MappedFlows(Mapping<FlowSlot>);

impl MappedFlows {
    /// Maps the `len` slots of the `FlowSlot` array behind `fd`.
    pub fn new(fd: BorrowedFd<'_>, len: usize) -> io::Result<Self> {
        Mapping::new(fd, len).map(Self)
    }

    pub fn len(&self) -> usize {
        self.0.len
    }

    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }

    /// Slot `i` as it is now (the data plane may be writing it: a torn copy fails its
    /// check word, as it would for a packet).
    pub fn get(&self, i: usize) -> Option<FlowSlot> {
        // SAFETY: in bounds of the mapping; volatile because the kernel writes it.
        (i < self.0.len).then(|| unsafe { self.0.ptr.as_ptr().add(i).read_volatile() })
    }

    /// Every slot in order, each as `get` reads it.
    pub fn slots(&self) -> impl Iterator<Item = FlowSlot> + '_ {
        (0..self.0.len).filter_map(|i| self.get(i))
    }

    /// Writes slot `i` (in bounds), as a packet's insert does.
    pub fn set(&mut self, i: usize, slot: FlowSlot) {
        assert!(i < self.0.len, "flow slot {i} out of {}", self.0.len);
        // SAFETY: in bounds of the mapping; volatile because the kernel reads it.
        unsafe { self.0.ptr.as_ptr().add(i).write_volatile(slot) };
    }

    /// Empties every slot.
    pub fn clear(&mut self) {
        // SAFETY: the mapping holds `len` slots for as long as self lives.
        unsafe { std::ptr::write_bytes(self.0.ptr.as_ptr(), 0, self.0.len) };
    }
}

#[cfg(test)]
mod tests {
    use lbx_common::ring_entry;

    use super::*;

    /// The agent packs ring entries where the program unpacks them.
    #[test]
    fn ring_lanes_round_trip() {
        let ring: Vec<u32> = (0..11).map(|i| (i * 4099 + 7) % (1 << 16)).collect();
        let elems: Vec<u64> = ring.chunks(RING_LANES as usize).map(pack_lanes).collect();
        assert_eq!(elems.len(), lbx_common::ring_elems(11) as usize);
        for (i, want) in ring.iter().enumerate() {
            let i = i as u32;
            assert_eq!(ring_entry(elems[(i / RING_LANES) as usize], i), *want);
        }
    }
}
