//! The wire: one veth pair per CPU in a network namespace of the bench's own. A worker
//! sends frames from `b<i>` (an AF_PACKET socket, `sender`); they arrive on `a<i>`, where
//! the program under test runs as native XDP, as on a NIC; what it sends back with XDP_TX
//! arrives on `b<i>`, whose XDP program (`lbx_bench_drop`) drops it once the veth has
//! counted it. Native XDP_TX into a veth needs an XDP program on the peer (testbed
//! pitfall 1): the sink is that program. A pair per CPU: no two CPUs share a ring or a
//! NAPI context, so what they share is the balancer's maps alone.
//!
//! Programs are attached with `ip link set ... xdpdrv pinned`, from pins in a BPF
//! filesystem of the rig's own: the attachment belongs to the device, and goes with the
//! namespace when the rig is dropped (also on a panic).

use std::fs::File;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::{bpffs, netns::Netns};

/// One pair: `a` runs the program under test, `b` sends and sinks.
#[derive(Clone, Debug)]
pub struct Pair {
    pub a: String,
    pub b: String,
    /// `b`'s index in the namespace, for the sender's socket.
    pub b_ifindex: u32,
}

/// Counters of all pairs, from the kernel's link statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wire {
    /// Frames that reached `a` (its rx packets).
    pub reached: u64,
    /// Frames sent from `b` that the veth dropped before `a`'s XDP program (`b`'s tx
    /// drops and `a`'s rx drops).
    pub lost_before: u64,
    /// Frames that arrived back on `b`: what the program sent.
    pub arrived: u64,
    /// Frames the program sent that the veth dropped (`a`'s tx drops, `b`'s rx drops).
    pub lost_after: u64,
}

impl Wire {
    pub fn since(self, before: Wire) -> Wire {
        Wire {
            reached: self.reached - before.reached,
            lost_before: self.lost_before - before.lost_before,
            arrived: self.arrived - before.arrived,
            lost_after: self.lost_after - before.lost_after,
        }
    }
}

pub struct Rig {
    ns: Netns,
    pub pairs: Vec<Pair>,
    pins: PathBuf,
}

impl Rig {
    /// A rig with `pairs` veth pairs, the sink attached on every `b`.
    pub fn create(pairs: usize, sink: BorrowedFd<'_>) -> Result<Self> {
        let ns = Netns::create("pps")?;
        let pins = std::env::temp_dir().join(format!("{}-bpf", ns.name()));
        let mut rig = Self {
            ns,
            pairs: Vec::new(),
            pins,
        };
        // No IPv6 on the pairs: router and neighbour solicitations would be frames no
        // sender sent.
        for key in [
            "net.ipv6.conf.all.disable_ipv6",
            "net.ipv6.conf.default.disable_ipv6",
        ] {
            rig.ns.sysctl(key, "1")?;
        }
        bpffs::mount(&rig.pins)?;
        let sink_pin = rig.pin("sink", sink)?;
        for i in 0..pairs.max(1) {
            let (a, b) = (format!("a{i}"), format!("b{i}"));
            rig.ns
                .ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])?;
            for dev in [&a, &b] {
                rig.ns.ip(&["link", "set", dev, "up"])?;
            }
            rig.ns.ip(&[
                "link",
                "set",
                "dev",
                &b,
                "xdpdrv",
                "pinned",
                path_str(&sink_pin)?,
            ])?;
            let b_ifindex = rig.ifindex(&b)?;
            rig.pairs.push(Pair { a, b, b_ifindex });
        }
        Ok(rig)
    }

    fn ifindex(&self, dev: &str) -> Result<u32> {
        let out = self.ns.ip(&["-j", "link", "show", "dev", dev])?;
        let links: serde_json::Value = serde_json::from_str(&out).context("`ip -j link`")?;
        match links[0]["ifindex"].as_u64() {
            Some(i) => Ok(i as u32),
            None => bail!("no ifindex for {dev} in `ip -j link`: {out}"),
        }
    }

    /// The index of pair `i`'s `a` in the namespace (the ingress of live frames).
    pub fn a_ifindex(&self, i: usize) -> Result<u32> {
        let p = self.pairs.get(i).context("no such pair")?;
        self.ifindex(&p.a)
    }

    /// Pins `prog` as `name` in the rig's BPF filesystem.
    fn pin(&self, name: &str, prog: BorrowedFd<'_>) -> Result<PathBuf> {
        let path = self.pins.join(name);
        if path.exists() {
            std::fs::remove_file(&path).with_context(|| format!("unpin {}", path.display()))?;
        }
        obj_pin(prog, &path)?;
        Ok(path)
    }

    /// Attaches `prog` (native XDP) on every `a`, in place of what ran there.
    pub fn attach(&self, prog: &aya::programs::Xdp) -> Result<()> {
        let pin = self.pin("measured", prog.fd()?.as_fd())?;
        for p in &self.pairs {
            self.ns.ip(&[
                "-force",
                "link",
                "set",
                "dev",
                &p.a,
                "xdpdrv",
                "pinned",
                path_str(&pin)?,
            ])?;
        }
        Ok(())
    }

    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// Opens the namespace for `enter` (one open file for all the threads of a run).
    pub fn handle(&self) -> Result<File> {
        File::open(self.ns.path()).with_context(|| format!("open {}", self.ns.path().display()))
    }

    /// Moves the calling thread into the namespace: sockets it makes then belong to it.
    pub fn enter(handle: &File) -> Result<()> {
        // SAFETY: setns only reads the descriptor; it affects the calling thread alone.
        if unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setns into the rig");
        }
        Ok(())
    }

    pub fn wire(&self) -> Result<Wire> {
        let out = self.ns.ip(&["-s", "-j", "link", "show"])?;
        let links: serde_json::Value = serde_json::from_str(&out).context("`ip -s -j link`")?;
        let stats = |dev: &str, dir: &str, what: &str| -> u64 {
            links
                .as_array()
                .and_then(|l| l.iter().find(|l| l["ifname"] == dev))
                .and_then(|l| l["stats64"][dir][what].as_u64())
                .unwrap_or(0)
        };
        let mut w = Wire::default();
        for p in &self.pairs {
            w.reached += stats(&p.a, "rx", "packets");
            w.lost_before += stats(&p.b, "tx", "dropped") + stats(&p.a, "rx", "dropped");
            w.arrived += stats(&p.b, "rx", "packets");
            w.lost_after += stats(&p.a, "tx", "dropped") + stats(&p.b, "rx", "dropped");
        }
        Ok(w)
    }

    /// The counters once the last frames have arrived: a veth's NAPI may still be
    /// draining its ring when the senders return.
    pub fn settled_wire(&self) -> Result<Wire> {
        let mut last = self.wire()?;
        for _ in 0..50 {
            std::thread::sleep(std::time::Duration::from_millis(20));
            let now = self.wire()?;
            if now == last {
                return Ok(now);
            }
            last = now;
        }
        Ok(last)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        bpffs::unmount(&self.pins);
        let _ = std::fs::remove_dir(&self.pins);
    }
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("pin path is not UTF-8")
}

/// `BPF_OBJ_PIN` (aya 0.14 pins a program only through `&mut`, which the balancer's
/// owner keeps).
fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    const BPF_OBJ_PIN: libc::c_long = 6;
    #[repr(C)]
    struct ObjAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        pad: u32,
    }
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
        path_fd: 0,
        pad: 0,
    };
    // SAFETY: `attr` and the path it points to outlive the call; the kernel only reads.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &raw const attr,
            core::mem::size_of::<ObjAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("pin a program at {}", path.display()));
    }
    Ok(())
}
