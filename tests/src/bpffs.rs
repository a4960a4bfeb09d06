//! A BPF filesystem of a test's own, mounted in the host's mount namespace. Agents that
//! `ip netns exec` starts each get a mount namespace of their own with a fresh /sys, so
//! /sys/fs/bpf is not shared between them; this mount is, as /sys/fs/bpf is between agents
//! that systemd starts, so the pins one agent leaves are there for the next.

use std::{ffi::CString, os::unix::ffi::OsStrExt as _, path::Path};

use anyhow::{Context as _, bail};

/// Mounts a BPF filesystem on `dir`, which is made.
pub fn mount(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let target = CString::new(dir.as_os_str().as_bytes())?;
    let fs = CString::new("bpf").expect("no NUL");
    // SAFETY: mount(2) with valid C strings and no data.
    if unsafe {
        libc::mount(
            fs.as_ptr(),
            target.as_ptr(),
            fs.as_ptr(),
            0,
            std::ptr::null(),
        )
    } != 0
    {
        bail!(
            "mount a BPF filesystem on {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Unmounts what `mount` mounted (lazily: a program still holding it lets go later). The
/// pins in it go with it, and with them the links and maps they held.
pub fn unmount(dir: &Path) {
    let Ok(target) = CString::new(dir.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: umount2(2) with a valid C string; failure (nothing mounted) is harmless.
    unsafe {
        libc::umount2(target.as_ptr(), libc::MNT_DETACH);
    }
}
