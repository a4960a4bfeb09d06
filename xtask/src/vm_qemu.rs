//! Booting one test VM with qemu under time limits, and reading its serial console: the
//! guest runner's markers ([`crate::vm_guest`]) become per-test results; a guest that
//! panics, hangs or stops without its final marker is a failure with its last lines.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    process::Interrupted,
    vm_guest::{MARKER, Status},
};

/// The qemu binary.
const QEMU: &str = "qemu-system-x86_64";
/// Guest memory: the initramfs (about 60 MB unpacked) plus a dozen lbx and test processes.
const MEMORY_MIB: u32 = 1024;
/// How long a guest may take from qemu's start to its runner's `ready` marker (about 5 s
/// under TCG here).
const BOOT_LIMIT: Duration = Duration::from_secs(180);
/// Console lines kept for a failure report.
const TAIL: usize = 40;

/// How the guest's CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// KVM only where it really works: `kvm_intel` or `kvm_amd` loaded (this machine's
    /// /dev/kvm is `kvm_pvm`, on which Debian's kernels crash), or LBX_VM_KVM=1 to force it;
    /// LBX_VM_KVM=0 forces TCG.
    pub fn detect() -> (Self, String) {
        match std::env::var("LBX_VM_KVM").as_deref() {
            Ok("1") => return (Accel::Kvm, "KVM (forced by LBX_VM_KVM=1)".into()),
            Ok("0") => return (Accel::Tcg, "TCG (forced by LBX_VM_KVM=0)".into()),
            _ => {}
        }
        let modules = std::fs::read_to_string("/proc/modules").unwrap_or_default();
        let kvm = modules
            .lines()
            .filter_map(|l| l.split(' ').next())
            .find(|m| *m == "kvm_intel" || *m == "kvm_amd");
        match kvm {
            Some(m) if Path::new("/dev/kvm").exists() => (Accel::Kvm, format!("KVM ({m} loaded)")),
            _ => (
                Accel::Tcg,
                "TCG, emulated CPU (no kvm_intel or kvm_amd loaded; LBX_VM_KVM=1 forces KVM)"
                    .into(),
            ),
        }
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            Accel::Kvm => &["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => &["-accel", "tcg", "-cpu", "max"],
        }
    }
}

/// What to boot and how long it may take.
pub struct Boot<'a> {
    pub label: &'a str,
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    pub accel: Accel,
    pub cpus: u32,
    /// The whole VM, boot to exit.
    pub limit: Duration,
    /// Longest the console may stay silent once the runner is up (the guest stops a test at
    /// its own limit and says so, so this is a bit more than that).
    pub silence: Duration,
    pub console_log: &'a Path,
    /// Echo every console line.
    pub verbose: bool,
}

/// One test's result as the guest reported it.
#[derive(Debug, Clone)]
pub struct TestResult {
    pub id: String,
    pub status: Status,
    pub secs: f64,
    /// Console lines between its start and result markers (its output).
    pub output: Vec<String>,
}

/// What came back from one VM.
#[derive(Debug, Default)]
pub struct VmReport {
    /// The guest's kernel release, from its `ready` marker.
    pub release: Option<String>,
    pub results: Vec<TestResult>,
    /// The counts of the final marker, if it came.
    pub done: Option<(u32, u32, u32)>,
    /// Why the VM run counts as failed besides failed tests (no final marker, timeout,
    /// kernel panic, setup failure, qemu trouble).
    pub problems: Vec<String>,
    /// The test that had started but not finished when the console ended.
    pub unfinished: Option<String>,
    /// The last console lines.
    pub tail: Vec<String>,
    pub wall: Duration,
}

impl VmReport {
    pub fn passed(&self) -> usize {
        self.count(Status::Ok)
    }

    pub fn failed(&self) -> usize {
        self.count(Status::Failed) + self.count(Status::Timeout)
    }

    pub fn count(&self, status: Status) -> usize {
        self.results.iter().filter(|r| r.status == status).count()
    }

    /// Everything passed, the runner said so, and something was tested.
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.failed() == 0 && self.passed() > 0
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: i32) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

unsafe extern "C" {
    fn signal(signum: i32, handler: usize) -> usize;
    fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
}
const SIGINT: i32 = 2;
const SIGKILL: i32 = 9;
const PR_SET_PDEATHSIG: i32 = 1;

/// Boots the VM and follows its console until qemu exits or a limit is reached. Progress
/// (one line per test) is printed as results come.
pub fn boot(b: &Boot<'_>, progress: &mut dyn FnMut(&TestResult)) -> Result<VmReport> {
    let mut cmd = Command::new(QEMU);
    cmd.args(b.accel.args())
        .args(["-smp", &b.cpus.to_string(), "-m", &MEMORY_MIB.to_string()])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(["-serial", "stdio"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .arg("-kernel")
        .arg(b.vmlinuz)
        .arg("-initrd")
        .arg(b.initrd)
        // panic=-1: a panicking guest reboots at once, which -no-reboot turns into an exit.
        .args(["-append", "console=ttyS0 quiet panic=-1 oops=panic"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: prctl in the forked child before exec; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            // qemu must not outlive xtask (killed outright, it could run on for an hour).
            if prctl(PR_SET_PDEATHSIG, SIGKILL as u64, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    println!("$ {}", crate::process::display(&cmd));
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start {QEMU} (Debian package qemu-system-x86)"))?;
    INTERRUPTED.store(false, Ordering::SeqCst);
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    let previous = unsafe { signal(SIGINT, on_sigint as *const () as usize) };
    let report = follow(b, &mut child, started, progress);
    // SAFETY: restores the disposition returned by the call above.
    unsafe { signal(SIGINT, previous) };
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Err(Interrupted.into());
    }
    report
}

enum Event {
    Line(String),
    Eof,
}

fn follow(
    b: &Boot<'_>,
    child: &mut Child,
    started: Instant,
    progress: &mut dyn FnMut(&TestResult),
) -> Result<VmReport> {
    let mut log = File::create(b.console_log)
        .with_context(|| format!("creating {}", b.console_log.display()))?;
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().context("qemu's stdout")?;
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        while matches!(reader.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
            let line = String::from_utf8_lossy(&buf)
                .trim_end_matches(['\n', '\r'])
                .to_owned();
            if tx.send(Event::Line(line)).is_err() {
                return;
            }
            buf.clear();
        }
        let _ = tx.send(Event::Eof);
    });
    let stderr = child.stderr.take().context("qemu's stderr")?;
    let stderr_thread = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
        text
    });

    let mut report = VmReport::default();
    let mut parser = Parser::default();
    let mut last_output = Instant::now();
    let mut killed: Option<String> = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Event::Line(line)) => {
                last_output = Instant::now();
                let _ = writeln!(log, "{line}");
                if b.verbose {
                    println!("   [{}] {line}", b.label);
                }
                if let Some(result) = parser.line(&line, &mut report) {
                    progress(&result);
                    report.results.push(result);
                }
            }
            Ok(Event::Eof) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            let _ = child.kill();
            killed = Some("interrupted".into());
        }
        if killed.is_none() {
            let elapsed = started.elapsed();
            let why = if elapsed > b.limit {
                Some(format!(
                    "the VM ran longer than its limit of {} s: killed it",
                    b.limit.as_secs()
                ))
            } else if report.release.is_none() && elapsed > BOOT_LIMIT {
                Some(format!(
                    "the guest did not reach its test runner within {} s: killed it",
                    BOOT_LIMIT.as_secs()
                ))
            } else if report.release.is_some() && last_output.elapsed() > b.silence {
                Some(format!(
                    "the guest printed nothing for {} s (hung?): killed it",
                    b.silence.as_secs()
                ))
            } else {
                None
            };
            if let Some(why) = why {
                let _ = child.kill();
                killed = Some(why);
            }
        }
    }
    // The console ended; qemu exits right after, unless it hangs with its output closed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().context("waiting for qemu")?.is_none() && killed.is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            killed = Some("qemu closed the console but did not exit: killed it".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = child.wait().context("waiting for qemu")?;
    report.wall = started.elapsed();
    let qemu_err = stderr_thread.join().unwrap_or_default();
    parser.finish(&mut report);

    if let Some(why) = killed {
        report.problems.push(why);
    } else {
        // isa-debug-exit: the runner writes 0 (all passed) or 1, qemu exits with 1 or 3.
        match status.code() {
            Some(1) | Some(3) => {}
            Some(0) => {
                if report.done.is_some() {
                    report.problems.push(
                        "qemu exited with 0: the guest powered off instead of reporting through \
                         isa-debug-exit"
                            .into(),
                    );
                }
            }
            _ => report.problems.push(format!(
                "qemu ended with {}: {}",
                crate::process::describe(status),
                last_lines(&qemu_err, 5)
            )),
        }
        if status.code() == Some(1) && report.failed() > 0 {
            report
                .problems
                .push("the guest said all passed, but a test failed".into());
        }
    }
    if report.done.is_none() {
        report
            .problems
            .push("the guest never printed its final marker".into());
    }
    if let Some((passed, failed, _)) = report.done {
        let seen = (report.passed(), report.failed());
        if (passed as usize, failed as usize) != seen {
            report.problems.push(format!(
                "the guest counted {passed} passed and {failed} failed, the console showed \
                 {} and {}",
                seen.0, seen.1
            ));
        }
    }
    if report.results.is_empty() && report.done.is_some() {
        report
            .problems
            .push("no test ran: does the filter match any test?".into());
    }
    Ok(report)
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Reads console lines into a report.
#[derive(Default)]
struct Parser {
    current: Option<(String, Vec<String>)>,
    tail: std::collections::VecDeque<String>,
}

/// Lines of output kept per test (the last ones).
const OUTPUT_LINES: usize = 4000;

impl Parser {
    fn line(&mut self, line: &str, report: &mut VmReport) -> Option<TestResult> {
        if self.tail.len() == TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_owned());
        if line.contains("Kernel panic - not syncing") {
            report
                .problems
                .push(format!("kernel panic: {}", line.trim()));
        }
        let Some(at) = line.find(MARKER) else {
            if let Some((_, output)) = &mut self.current {
                if output.len() == OUTPUT_LINES {
                    output.remove(0);
                }
                output.push(line.to_owned());
            }
            return None;
        };
        let rest = &line[at + MARKER.len()..];
        let (kind, args) = rest.split_once(' ').unwrap_or((rest, ""));
        match kind {
            "ready" => report.release = Some(args.to_owned()),
            "start" => {
                if let Some((id, _)) = self.current.take() {
                    report
                        .problems
                        .push(format!("{id} started but never reported a result"));
                }
                self.current = Some((args.to_owned(), Vec::new()));
            }
            "result" => {
                let mut parts = args.splitn(3, ' ');
                let status = parts.next().and_then(Status::from_word);
                let secs = parts.next().and_then(|s| s.parse().ok());
                let id = parts.next().unwrap_or_default().to_owned();
                let output = match self.current.take() {
                    Some((started, output)) if started == id => output,
                    _ => Vec::new(),
                };
                let (Some(status), Some(secs)) = (status, secs) else {
                    report
                        .problems
                        .push(format!("unreadable result marker: {line}"));
                    return None;
                };
                return Some(TestResult {
                    id,
                    status,
                    secs,
                    output,
                });
            }
            "done" => {
                let count = |key: &str| {
                    args.split(' ')
                        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
                };
                report.done = Some((
                    count("passed").unwrap_or(0),
                    count("failed").unwrap_or(0),
                    count("ignored").unwrap_or(0),
                ));
            }
            "setup-failed" => report.problems.push(format!("guest setup failed: {args}")),
            _ => {}
        }
        None
    }

    fn finish(self, report: &mut VmReport) {
        if let Some((id, output)) = self.current {
            report.unfinished = Some(id.clone());
            report.results.push(TestResult {
                id,
                status: Status::Failed,
                secs: 0.0,
                output,
            });
        }
        report.tail = self.tail.into_iter().collect();
    }
}

/// Where a run's files go: `<target>/vm-test/<kernel name>/`.
pub fn run_dir(target: &Path, kernel: &str) -> PathBuf {
    target.join("vm-test").join(kernel)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(lines: &[&str]) -> VmReport {
        let mut report = VmReport::default();
        let mut parser = Parser::default();
        for l in lines {
            if let Some(r) = parser.line(l, &mut report) {
                report.results.push(r);
            }
        }
        parser.finish(&mut report);
        report
    }

    #[test]
    fn markers_become_results_with_their_output() {
        let report = feed(&[
            "[    1.0] boot noise",
            "@@lbx-vm ready 6.1.0-56-cloud-amd64",
            "@@lbx-vm start [mixed] dsr::replies",
            "running 1 test",
            "test replies ... ok",
            "@@lbx-vm result ok 30.5 [mixed] dsr::replies",
            "@@lbx-vm start [mixed] weights::spread",
            "assertion failed",
            "[   99.1] kernel noise@@lbx-vm result FAILED 2.0 [mixed] weights::spread",
            "@@lbx-vm done passed=1 failed=1 ignored=0",
        ]);
        assert_eq!(report.release.as_deref(), Some("6.1.0-56-cloud-amd64"));
        assert_eq!(report.results.len(), 2);
        assert_eq!(report.results[0].status, Status::Ok);
        assert_eq!(
            report.results[0].output,
            ["running 1 test", "test replies ... ok"]
        );
        assert_eq!(report.results[1].status, Status::Failed);
        assert_eq!(report.results[1].id, "[mixed] weights::spread");
        assert_eq!(report.done, Some((1, 1, 0)));
        assert!(report.problems.is_empty());
        assert!(!report.ok());
    }

    #[test]
    fn a_guest_that_stops_mid_test_fails_that_test() {
        let report = feed(&[
            "@@lbx-vm ready 6.12",
            "@@lbx-vm start [mixed] dsr::replies",
            "Kernel panic - not syncing: Fatal exception",
        ]);
        assert_eq!(report.unfinished.as_deref(), Some("[mixed] dsr::replies"));
        assert_eq!(report.results[0].status, Status::Failed);
        assert!(report.problems[0].contains("kernel panic"));
        assert!(report.done.is_none());
        assert!(!report.ok());
        assert_eq!(report.tail.len(), 3);
    }
}
