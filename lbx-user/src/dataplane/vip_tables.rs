//! The `VIPS` map, one VIP table per generation slot. A table is a single value of
//! `VIP_TABLE_SLOTS` entries (256 KiB), too large to pass through a thread's stack as
//! the generic map accessors do, so it is read into and written from the heap.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{
    maps::{MapData, MapError},
    sys::SyscallError,
};
use lbx_common::VipTable;

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;

pub struct VipTables(MapData);

impl VipTables {
    pub fn new(data: MapData) -> Self {
        Self(data)
    }

    /// The table of generation slot `slot`.
    pub fn get(&self, slot: u32) -> Result<Box<VipTable>, MapError> {
        // SAFETY: VipTable is plain old data (lbx_common's Pod impls): all zeroes is one.
        let mut table: Box<VipTable> = unsafe { Box::new_zeroed().assume_init() };
        self.elem(
            BPF_MAP_LOOKUP_ELEM,
            "bpf_map_lookup_elem",
            slot,
            &mut *table,
        )?;
        Ok(table)
    }

    /// Writes the table of generation slot `slot`, whole, in one update.
    pub fn set(&mut self, slot: u32, table: &VipTable) -> Result<(), MapError> {
        let value = std::ptr::from_ref(table).cast_mut();
        // The kernel only reads the value of an update.
        self.elem(BPF_MAP_UPDATE_ELEM, "bpf_map_update_elem", slot, value)
    }

    fn elem(
        &self,
        cmd: libc::c_long,
        call: &'static str,
        slot: u32,
        value: *mut VipTable,
    ) -> Result<(), MapError> {
        // union bpf_attr for the element commands: map_fd, pad, key, value, flags.
        #[repr(C)]
        struct Attr {
            map_fd: u32,
            pad: u32,
            key: u64,
            value: u64,
            flags: u64,
        }
        let mut attr = Attr {
            map_fd: self.0.fd().as_fd().as_raw_fd() as u32,
            pad: 0,
            key: std::ptr::from_ref(&slot) as u64,
            value: value as u64,
            flags: 0,
        };
        // SAFETY: attr is a valid bpf_attr prefix of the size passed; key and value point
        // at a u32 and a whole VipTable, the map's key and value sizes.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                &mut attr as *mut Attr,
                std::mem::size_of::<Attr>() as u32,
            )
        };
        if r < 0 {
            return Err(MapError::SyscallError(SyscallError {
                call,
                io_error: io::Error::last_os_error(),
            }));
        }
        Ok(())
    }
}
