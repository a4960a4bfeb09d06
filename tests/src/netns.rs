//! Named network namespaces (`ip netns`) that delete themselves, and running code inside one.

use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;

use crate::process::{run_bounded, stdout_of};
use crate::topology::patience;

/// Prefix of every namespace the tests create: `lbxt-<pid>-<n>-<role>`. The pid lets a later
/// run recognise namespaces left behind by a test process that was killed outright.
pub const PREFIX: &str = "lbxt-";

/// How long one `ip` command may take before it counts as hung (times [`patience`]).
const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// A network namespace created by this process, deleted (with every interface in it) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `lbxt-<pid>-<n>-<role>` where `n` is unique within this process.
    pub fn create(role: &str) -> anyhow::Result<Self> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}-{role}", std::process::id());
        ip(&["netns", "add", &name])?;
        Ok(Self { name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind mount that holds the namespace open, as `setns` needs it.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// `ip -n <ns> ARGS`, returning stdout or an error that carries `ip`'s stderr.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A command that runs `program ARGS` inside this namespace (`ip netns exec`, which also
    /// gives the program a mount namespace of its own, with /sys for this network namespace).
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets `f` creates belong to the
    /// namespace for their whole life, so they may be returned and used from any thread.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let file = File::open(self.path())
            .with_context(|| format!("failed to open {}", self.path().display()))?;
        std::thread::scope(|scope| {
            let thread = scope.spawn(move || {
                // SAFETY: setns only reads the descriptor, which `file` keeps open; joining a
                // network namespace affects the calling thread alone, which ends with `f`.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(std::io::Error::last_os_error())
                        .with_context(|| format!("setns into {}", self.name));
                }
                Ok(f())
            });
            match thread.join() {
                Ok(result) => result,
                // Re-raise on the caller's thread: the panic's own message is the test failure.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Writes a sysctl of this namespace, `key` in dotted form (`net.ipv4.ip_forward`).
    /// /proc/sys/net shows the namespace of the task that opens it, so this writes from a
    /// thread inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        self.run(|| std::fs::write(&path, value))?
            .with_context(|| format!("failed to set {key}={value} in {}", self.name))
    }

    /// The id of the XDP program attached to `iface`, as `ip` reports it.
    pub fn xdp_prog_id(&self, iface: &str) -> anyhow::Result<Option<u64>> {
        let out = self.ip(&["-j", "link", "show", "dev", iface])?;
        let links: serde_json::Value =
            serde_json::from_str(&out).context("`ip -j link` printed invalid JSON")?;
        Ok(links[0]["xdp"]["prog"]["id"].as_u64())
    }

    /// The namespace's IP, ICMP, TCP and UDP counters from /proc/net/snmp and
    /// /proc/net/snmp6, named as `nstat` names them (`IcmpOutDestUnreachs`,
    /// `Icmp6OutPktTooBigs`).
    pub fn snmp_counters(&self) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
        // /proc/net is the namespace of the reading thread only through thread-self (plain
        // /proc/net follows the process's first thread).
        let (snmp, snmp6) = self.run(|| {
            (
                std::fs::read_to_string("/proc/thread-self/net/snmp"),
                std::fs::read_to_string("/proc/thread-self/net/snmp6"),
            )
        })?;
        let snmp = snmp.context("read /proc/net/snmp")?;
        let snmp6 = snmp6.context("read /proc/net/snmp6")?;
        let mut counters = std::collections::BTreeMap::new();
        // snmp: a line of names, then a line of values, both beginning with `Group:`.
        let lines: Vec<&str> = snmp.lines().collect();
        for pair in lines.chunks(2) {
            let [names, values] = pair else { continue };
            let (Some((group, names)), Some((_, values))) =
                (names.split_once(':'), values.split_once(':'))
            else {
                continue;
            };
            for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
                if let Ok(v) = value.parse() {
                    counters.insert(format!("{group}{name}"), v);
                }
            }
        }
        // snmp6: one `Name value` a line.
        for line in snmp6.lines() {
            let mut words = line.split_whitespace();
            if let (Some(name), Some(Ok(v))) = (words.next(), words.next().map(str::parse)) {
                counters.insert(name.to_owned(), v);
            }
        }
        Ok(counters)
    }

    /// Reads one interface counter (`rx_packets`, `tx_packets`, ...) from /sys.
    pub fn link_counter(&self, iface: &str, counter: &str) -> anyhow::Result<u64> {
        let out = self.ip(&["-s", "-j", "link", "show", "dev", iface])?;
        let json: serde_json::Value =
            serde_json::from_str(&out).context("`ip -j -s link` printed invalid JSON")?;
        let (dir, field) = counter
            .split_once('_')
            .with_context(|| format!("bad counter name {counter}"))?;
        json[0]["stats64"][dir][field]
            .as_u64()
            .with_context(|| format!("no {counter} for {iface} in `ip -s link` output: {out}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "delete", &self.name]) {
            eprintln!("warning: failed to delete namespace {}: {e:#}", self.name);
        }
    }
}

/// Runs `ip ARGS`, returning stdout; an error names the command and carries its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    let what = format!("ip {}", args.join(" "));
    let out = run_bounded(cmd, patience(IP_TIMEOUT)).with_context(|| what.clone())?;
    stdout_of(out, &what)
}

/// Names of the test namespaces that exist now (any process's).
pub fn list_test_namespaces() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    dir.filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(PREFIX))
        .collect()
}

/// Deletes test namespaces whose creating process no longer exists: what a test killed by
/// SIGKILL (so no destructor ran) leaves behind. Namespaces of live processes are untouched.
pub fn remove_stale_namespaces() {
    for name in list_test_namespaces() {
        let Some(pid) = name[PREFIX.len()..].split('-').next() else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing namespace {name} left behind by exited process {pid}");
            // Best effort: another process may be removing it at the same moment.
            let _ = ip(&["netns", "delete", &name]);
        }
    }
}
