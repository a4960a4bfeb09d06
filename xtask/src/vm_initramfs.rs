//! The initramfs a test VM boots: a base per kernel, cached (busybox, iproute2's `ip`,
//! `setpriv`, their libraries and the kernel's module closure), and a part packed per run
//! (the `/init` script, the guest runner, the test binaries and their libraries, the plan)
//! appended to it. The kernel unpacks both archives in turn.
//!
//! Archives are written here in the `newc` cpio format, uncompressed: no staging folder, no
//! cpio tool, files owned by root whoever runs xtask, and nothing to decompress in a guest
//! whose CPU is emulated.

use std::{
    collections::BTreeSet,
    fs::{self, File},
    io::{BufWriter, Write as _},
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{process, vm_kernel::Kernel};

/// Where the run's files live in the guest.
pub const GUEST_DIR: &str = "/lbx-vm";
/// Modules in the guest: `<name>.ko` and `order`.
pub const GUEST_MODULES: &str = "/lib/modules/lbx";
/// Bump when the base's layout changes, so cached bases are rebuilt.
const BASE_FORMAT: u32 = 1;
/// Host programs the base carries, at the same path in the guest. They come before busybox
/// on the guest's PATH: iproute2's `ip` is the one the tests and lbx drive (busybox's has
/// no `netns`), util-linux's `setpriv` is the one the CLI tests use.
const BASE_PROGRAMS: &[&str] = &["/usr/sbin/ip", "/usr/bin/setpriv"];
/// The guest's PATH.
pub const GUEST_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// A `newc` cpio archive being written. Parent folders are added as needed.
pub struct Cpio {
    out: BufWriter<File>,
    written: u64,
    dirs: BTreeSet<String>,
    ino: u32,
}

impl Cpio {
    pub fn create(path: &Path) -> Result<Self> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self {
            out: BufWriter::new(file),
            written: 0,
            dirs: BTreeSet::new(),
            ino: 0,
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .context("writing a cpio archive")?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<()> {
        let n = (4 - self.written % 4) % 4;
        self.write(&[0; 3][..n as usize])
    }

    /// One entry: header, name, data. `rdev` is (major, minor) for device nodes.
    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) -> Result<()> {
        let name = name.trim_start_matches('/');
        ensure!(!name.is_empty(), "empty cpio entry name");
        self.ino += 1;
        let size = u32::try_from(data.len()).context("a file over 4 GiB in an initramfs")?;
        let name_size = u32::try_from(name.len() + 1).context("entry name too long")?;
        let fields = [
            self.ino, mode, 0, 0, 1, 0, size, 0, 0, rdev.0, rdev.1, name_size, 0,
        ];
        let mut header = String::from("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.write(header.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad()?;
        self.write(data)?;
        self.pad()
    }

    /// A folder (and its parents), once.
    pub fn dir(&mut self, path: &str) -> Result<()> {
        let path = path.trim_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return Ok(());
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent)?;
        }
        self.dirs.insert(path.to_owned());
        self.entry(path, 0o040_755, &[], (0, 0))
    }

    fn parent(&mut self, path: &str) -> Result<()> {
        match path.trim_matches('/').rsplit_once('/') {
            Some((parent, _)) => self.dir(parent),
            None => Ok(()),
        }
    }

    /// A regular file with `data` and permissions `perm` (e.g. 0o755).
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> Result<()> {
        self.parent(path)?;
        self.entry(path, 0o100_000 | perm, data, (0, 0))
    }

    /// A copy of the host file `from` (symlinks followed), keeping its permissions.
    pub fn copy(&mut self, path: &str, from: &Path) -> Result<()> {
        let data = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
        let perm = fs::metadata(from)?.permissions().mode() & 0o7777;
        self.file(path, perm, &data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.parent(path)?;
        self.entry(path, 0o120_777, target.as_bytes(), (0, 0))
    }

    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) -> Result<()> {
        self.parent(path)?;
        self.entry(path, 0o020_600, &[], (major, minor))
    }

    /// Writes the trailer and flushes; the archive's length is a multiple of 4, so another
    /// archive appended after it starts where the kernel looks for one.
    pub fn finish(mut self) -> Result<()> {
        self.entry("TRAILER!!!", 0, &[], (0, 0))?;
        self.out.flush().context("writing a cpio archive")?;
        Ok(())
    }
}

/// The shared libraries and the loader a dynamic program needs (`ldd`), as host paths; none
/// for a static one.
pub fn libraries(program: &Path) -> Result<Vec<String>> {
    let out = process::output(Command::new("ldd").arg(program))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("not a dynamic executable") {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("not a dynamic executable") || text.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        bail!("`ldd {}` failed: {}", program.display(), err.trim());
    }
    parse_ldd(&text).with_context(|| format!("libraries of {}", program.display()))
}

fn parse_ldd(text: &str) -> Result<Vec<String>> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim) {
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    bail!("library {} not found", name.trim());
                }
                rest.split_whitespace().next().unwrap_or_default()
            }
            // The loader (`/lib64/ld-linux-x86-64.so.2 (0x...)`) or the vDSO (no path).
            None => line.split_whitespace().next().unwrap_or_default(),
        };
        if path.starts_with('/') {
            libs.push(path.to_owned());
        }
    }
    Ok(libs)
}

/// Adds `programs` (host path, guest path) and every library they load, at their host
/// paths. A library already added is skipped.
pub fn add_programs(cpio: &mut Cpio, programs: &[(PathBuf, String)]) -> Result<()> {
    let mut libs = BTreeSet::new();
    for (host, guest) in programs {
        cpio.copy(guest, host)?;
        libs.extend(libraries(host)?);
    }
    for lib in libs {
        cpio.copy(&lib, Path::new(&lib))?;
    }
    Ok(())
}

/// The cached base initramfs of `kernel`, rebuilt when its inputs changed.
pub fn base(kernel: &Kernel) -> Result<PathBuf> {
    let path = kernel.dir.join("base.cpio");
    let stamp_path = kernel.dir.join("base.stamp");
    let busybox = which("busybox")?;
    let programs: Vec<PathBuf> = BASE_PROGRAMS.iter().map(PathBuf::from).collect();
    let stamp = base_stamp(kernel, &busybox, &programs)?;
    if path.is_file() && fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str()) {
        return Ok(path);
    }
    let _ = fs::remove_file(&stamp_path);
    let mut cpio = Cpio::create(&path)?;
    for dir in [
        "proc", "sys", "dev", "run", "tmp", "etc", "root", "usr/sbin", "usr/bin",
    ] {
        cpio.dir(dir)?;
    }
    // The kernel opens /dev/console for /init before anything is mounted.
    cpio.char_device("/dev/console", 5, 1)?;

    ensure!(
        libraries(&busybox)?.is_empty(),
        "{} is not static: install busybox-static (the guest has no libraries for it)",
        busybox.display()
    );
    cpio.copy("/bin/busybox", &busybox)?;
    let list = process::stdout(Command::new(&busybox).arg("--list"))?;
    let skip: BTreeSet<&str> = BASE_PROGRAMS
        .iter()
        .filter_map(|p| p.rsplit('/').next())
        .chain(["busybox"])
        .collect();
    for applet in list.lines().map(str::trim).filter(|a| !a.is_empty()) {
        if !skip.contains(applet) && !applet.contains('/') {
            cpio.symlink(&format!("/bin/{applet}"), "busybox")?;
        }
    }
    let pairs: Vec<(PathBuf, String)> = programs
        .iter()
        .map(|p| (p.clone(), p.display().to_string()))
        .collect();
    add_programs(&mut cpio, &pairs)?;

    let mut order = String::new();
    for (name, file) in &kernel.modules {
        cpio.copy(&format!("{GUEST_MODULES}/{name}.ko"), file)?;
        order.push_str(name);
        order.push('\n');
    }
    cpio.file(&format!("{GUEST_MODULES}/order"), 0o644, order.as_bytes())?;
    cpio.finish()?;
    fs::write(&stamp_path, stamp).with_context(|| format!("writing {}", stamp_path.display()))?;
    println!("   packed the base initramfs {}", path.display());
    Ok(path)
}

/// What the base is made of: the format, the kernel, and each host file's size and time.
fn base_stamp(kernel: &Kernel, busybox: &Path, programs: &[PathBuf]) -> Result<String> {
    let mut stamp = format!("format {BASE_FORMAT}\nkernel {}\n", kernel.pin.sha256);
    let mut files: Vec<PathBuf> = vec![busybox.to_owned()];
    for p in programs {
        ensure!(
            p.is_file(),
            "{} is missing (the VM tests need it in the guest)",
            p.display()
        );
        files.push(p.clone());
        files.extend(libraries(p)?.into_iter().map(PathBuf::from));
    }
    for f in files {
        let m = fs::metadata(&f).with_context(|| format!("reading {}", f.display()))?;
        stamp.push_str(&format!("{} {} {}\n", f.display(), m.len(), m.mtime()));
    }
    Ok(stamp)
}

/// The first `name` on PATH.
fn which(name: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} is not on PATH"))
}

/// Writes `initrd`: `base`, then `run` appended (both are multiples of 4 bytes long).
pub fn join(base: &Path, run: &Path, initrd: &Path) -> Result<()> {
    let mut out = File::create(initrd).with_context(|| format!("creating {}", initrd.display()))?;
    for part in [base, run] {
        let mut f = File::open(part).with_context(|| format!("opening {}", part.display()))?;
        std::io::copy(&mut f, &mut out).with_context(|| format!("writing {}", initrd.display()))?;
        let len = out.metadata()?.len();
        ensure!(
            len % 4 == 0,
            "{} does not end at a 4-byte boundary: the kernel would ignore what follows",
            part.display()
        );
    }
    Ok(())
}

/// `/init`: mounts what lbx and the tests use, loads the modules, brings `lo` up and hands
/// over to the guest runner (this xtask's `vm-guest`), which reports and powers off. If the
/// runner cannot, the script powers off itself; the host sees no final marker either way.
pub fn init_script(runner: &str, plan: &str) -> String {
    format!(
        r#"#!/bin/sh
# /init of an lbx test VM, written by xtask (xtask/src/vm_initramfs.rs).
export PATH={GUEST_PATH}
fail() {{ echo "@@lbx-vm setup-failed $*"; }}
mount -t proc proc /proc || fail "mount /proc"
mount -t sysfs sysfs /sys || fail "mount /sys"
mount -t devtmpfs devtmpfs /dev || fail "mount /dev"
mount -t bpf bpf /sys/fs/bpf || fail "mount bpffs on /sys/fs/bpf"
mount -t tmpfs -o mode=0755 tmpfs /run || fail "mount /run"
mount -t tmpfs -o mode=1777 tmpfs /tmp || fail "mount /tmp"
while read -r module; do
    insmod {GUEST_MODULES}/$module.ko || fail "insmod $module"
done < {GUEST_MODULES}/order
ip link set lo up || fail "ip link set lo up"
cd /tmp
{runner} vm-guest {plan}
echo "@@lbx-vm init: the runner exited with status $?; powering off"
poweroff -f
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_libraries_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f76)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f76)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
        let err = parse_ldd("\tlibfoo.so.1 => not found\n").unwrap_err();
        assert!(err.to_string().contains("libfoo.so.1"), "{err}");
    }

    #[test]
    fn cpio_entries_are_aligned_and_parents_come_first() {
        let dir = std::env::temp_dir().join(format!("xtask-cpio-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.cpio");
        let mut cpio = Cpio::create(&path).unwrap();
        cpio.file("/a/b/c.txt", 0o644, b"hello").unwrap();
        cpio.symlink("/bin/sh", "busybox").unwrap();
        cpio.finish().unwrap();
        let bytes = fs::read(&path).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(bytes.len() % 4, 0);
        // Entry names in order, read back from the headers.
        let mut names = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let header = std::str::from_utf8(&bytes[at..at + 110]).unwrap();
            assert!(header.starts_with("070701"), "bad magic at {at}");
            let field = |i: usize| usize::from_str_radix(&header[6 + 8 * i..14 + 8 * i], 16);
            let (size, name_size) = (field(6).unwrap(), field(11).unwrap());
            let name = std::str::from_utf8(&bytes[at + 110..at + 110 + name_size - 1]).unwrap();
            names.push(name.to_owned());
            at = (at + 110 + name_size).next_multiple_of(4);
            at = (at + size).next_multiple_of(4);
        }
        assert_eq!(
            names,
            ["a", "a/b", "a/b/c.txt", "bin", "bin/sh", "TRAILER!!!"]
        );
    }
}
