//! Inside a test VM: `xtask vm-guest PLAN` runs the integration tests one at a time and
//! reports on the serial console with marker lines, then makes qemu exit.
//!
//! The protocol, one marker a line (the host reads it in [`crate::vm_qemu`]):
//!
//! ```text
//! @@lbx-vm ready <kernel release>
//! @@lbx-vm start <id>                  then the test's own output, as it comes
//! @@lbx-vm result <ok|FAILED|TIMEOUT|ignored> <seconds> <id>
//! @@lbx-vm done passed=<n> failed=<n> ignored=<n>
//! @@lbx-vm setup-failed <what>         (from /init or here: the VM is not usable)
//! ```
//!
//! `<id>` is `[<decap>] <test binary>::<test name>`. After `done`, the runner writes to
//! qemu's isa-debug-exit port (0 when everything passed, 1 otherwise), so qemu exits with
//! status 1 or 3; it powers the VM off if that port is missing.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

/// Every marker line starts with this.
pub const MARKER: &str = "@@lbx-vm ";
/// The I/O port of qemu's `isa-debug-exit` device (`iobase=0xf4`).
pub const EXIT_PORT: u16 = 0xf4;

/// What the guest runs; written by the host into the run's initramfs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Environment for every test process (LBX_BIN, LBX_TEST_SERVER, ...).
    pub env: Vec<(String, String)>,
    /// The decapsulation modes to run the suite in, in order (LBX_TEST_DECAP).
    pub decap: Vec<String>,
    /// Test executables (guest paths).
    pub binaries: Vec<String>,
    /// The arguments selecting tests, as given after `vm-test --` (see [`Selection`]).
    pub filter: Vec<String>,
    /// Limit for one test.
    pub test_timeout: Duration,
    /// A failure to inject once the first test has started, to check that the host reports
    /// it (`vm-test --fault`, [`crate::vm_fault::Fault`]): `panic`, `hang` or `exit`; for
    /// `verifier` the host broke the binaries, and the guest only says so.
    pub fault: Option<String>,
}

impl Plan {
    /// One `key value` a line; values may hold spaces but no newline.
    pub fn to_text(&self) -> Result<String> {
        let mut out = format!("test-timeout {}\n", self.test_timeout.as_secs());
        let mut line = |key: &str, value: &str| -> Result<()> {
            ensure!(
                !value.contains('\n'),
                "{key} {value:?}: a newline cannot be passed to the guest"
            );
            out.push_str(&format!("{key} {value}\n"));
            Ok(())
        };
        for (k, v) in &self.env {
            ensure!(
                !k.contains('='),
                "environment variable name {k:?} holds '='"
            );
            line("env", &format!("{k}={v}"))?;
        }
        for d in &self.decap {
            line("decap", d)?;
        }
        for b in &self.binaries {
            line("binary", b)?;
        }
        for f in &self.filter {
            line("filter", f)?;
        }
        if let Some(f) = &self.fault {
            line("fault", f)?;
        }
        Ok(out)
    }

    pub fn parse(text: &str) -> Result<Self> {
        let mut plan = Plan::default();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "test-timeout" => {
                    plan.test_timeout = Duration::from_secs(value.parse().context("test-timeout")?);
                }
                "env" => {
                    let (k, v) = value.split_once('=').context("env line without '='")?;
                    plan.env.push((k.to_owned(), v.to_owned()));
                }
                "decap" => plan.decap.push(value.to_owned()),
                "binary" => plan.binaries.push(value.to_owned()),
                "filter" => plan.filter.push(value.to_owned()),
                "fault" => plan.fault = Some(value.to_owned()),
                _ => bail!("unknown plan line {line:?}"),
            }
        }
        ensure!(!plan.test_timeout.is_zero(), "the plan has no test-timeout");
        Ok(plan)
    }
}

/// Which tests run: what `vm-test -- ARGS` takes, libtest's selection applied to the ids
/// the results show, `<binary>::<test>`: patterns (substrings; whole ids or test names with
/// `--exact`), `--skip PATTERN`, `--ignored`, `--include-ignored`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    patterns: Vec<String>,
    skip: Vec<String>,
    exact: bool,
    ignored: bool,
    include_ignored: bool,
}

impl Selection {
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut sel = Selection::default();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--exact" => sel.exact = true,
                "--ignored" => sel.ignored = true,
                "--include-ignored" => sel.include_ignored = true,
                "--skip" => sel
                    .skip
                    .push(args.next().context("--skip needs a pattern")?.clone()),
                a if a.starts_with('-') => bail!(
                    "`{a}`: the VM tests take test name patterns, --exact, --skip PATTERN, \
                     --ignored and --include-ignored (each test runs alone, with its output)"
                ),
                a => sel.patterns.push(a.to_owned()),
            }
        }
        Ok(sel)
    }

    /// Whether test `test` of binary `binary` runs.
    pub fn selects(&self, binary: &str, test: &str) -> bool {
        let id = format!("{binary}::{test}");
        let hit = |p: &String| {
            if self.exact {
                p == test || *p == id
            } else {
                id.contains(p.as_str())
            }
        };
        (self.patterns.is_empty() || self.patterns.iter().any(hit)) && !self.skip.iter().any(hit)
    }

    /// libtest flags for listing and running the selected tests.
    pub fn libtest_flags(&self) -> &'static [&'static str] {
        match (self.ignored, self.include_ignored) {
            (true, _) => &["--ignored"],
            (false, true) => &["--include-ignored"],
            (false, false) => &[],
        }
    }
}

/// How one test ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Failed,
    Timeout,
    Ignored,
}

impl Status {
    pub fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "FAILED",
            Status::Timeout => "TIMEOUT",
            Status::Ignored => "ignored",
        }
    }

    pub fn from_word(word: &str) -> Option<Self> {
        [Status::Ok, Status::Failed, Status::Timeout, Status::Ignored]
            .into_iter()
            .find(|s| s.word() == word)
    }
}

/// `xtask vm-guest PLAN`: never returns inside a VM with isa-debug-exit.
pub fn run(plan_path: &Path) -> Result<i32> {
    let outcome = run_plan(plan_path);
    let all_passed = match &outcome {
        Ok(passed) => *passed,
        Err(e) => {
            marker(&format!("setup-failed {e:#}"));
            false
        }
    };
    exit_vm(all_passed);
    Ok(if all_passed { 0 } else { 1 })
}

fn marker(text: &str) {
    let mut out = std::io::stdout().lock();
    // A leading newline keeps a marker off a line the kernel or a test left unfinished.
    let _ = writeln!(out, "\n{MARKER}{text}");
    let _ = out.flush();
}

/// Runs the plan; returns whether every test passed (and there was one).
fn run_plan(plan_path: &Path) -> Result<bool> {
    let text = std::fs::read_to_string(plan_path)
        .with_context(|| format!("reading the plan {}", plan_path.display()))?;
    let plan = Plan::parse(&text)?;
    let selection = Selection::parse(&plan.filter)?;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    marker(&format!("ready {}", release.trim()));
    check_modules()?;

    let (mut passed, mut failed, mut ignored) = (0, 0, 0);
    for decap in &plan.decap {
        for binary in &plan.binaries {
            let name = Path::new(binary)
                .file_name()
                .map_or_else(|| binary.clone(), |n| n.to_string_lossy().into_owned());
            let tests = match list_tests(binary, &plan, &selection) {
                Ok(tests) => tests,
                Err(e) => {
                    let id = format!("[{decap}] {name}::(list)");
                    marker(&format!("start {id}"));
                    println!("{e:#}");
                    marker(&format!("result FAILED 0.0 {id}"));
                    failed += 1;
                    continue;
                }
            };
            for test in tests.iter().filter(|t| selection.selects(&name, t)) {
                let id = format!("[{decap}] {name}::{test}");
                marker(&format!("start {id}"));
                if let Some(fault) = &plan.fault {
                    inject(fault);
                }
                let started = Instant::now();
                let status = run_test(binary, test, decap, &plan, &selection);
                marker(&format!(
                    "result {} {:.1} {id}",
                    status.word(),
                    started.elapsed().as_secs_f64()
                ));
                match status {
                    Status::Ok => passed += 1,
                    Status::Ignored => ignored += 1,
                    Status::Failed | Status::Timeout => failed += 1,
                }
            }
        }
    }
    marker(&format!(
        "done passed={passed} failed={failed} ignored={ignored}"
    ));
    Ok(failed == 0 && passed > 0)
}

/// `vm-test --fault`: what a broken guest does, for checking the host's side.
fn inject(fault: &str) {
    println!("[vm-guest] injecting a fault: vm-test --fault {fault}");
    let _ = std::io::stdout().flush();
    match fault {
        // sysrq `c` crashes the kernel on purpose (a NULL dereference, then the panic).
        "panic" => {
            let _ = std::fs::write("/proc/sys/kernel/sysrq", "1");
            let _ = std::fs::write("/proc/sysrq-trigger", "c");
        }
        "hang" => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        // Ends the runner without its final marker; /init powers off.
        "exit" => std::process::exit(0),
        // Done on the host: the balancer in lbx and the tests is one the verifier rejects.
        "verifier" => {
            println!(
                "[vm-guest] this run's balancer program is broken: the verifier must reject it"
            );
        }
        _ => println!("[vm-guest] unknown fault {fault:?}: ignored"),
    }
}

/// Every module /init was to load is loaded (a failed insmod fails the VM run at once,
/// rather than as a confusing network error in every test).
fn check_modules() -> Result<()> {
    let dir = crate::vm_initramfs::GUEST_MODULES;
    let order =
        std::fs::read_to_string(format!("{dir}/order")).context("reading the module list")?;
    let loaded = std::fs::read_to_string("/proc/modules").context("reading /proc/modules")?;
    let loaded: Vec<&str> = loaded.lines().filter_map(|l| l.split(' ').next()).collect();
    let missing: Vec<&str> = order
        .lines()
        .filter(|m| !m.is_empty() && !loaded.contains(m))
        .collect();
    ensure!(
        missing.is_empty(),
        "modules not loaded: {}",
        missing.join(" ")
    );
    Ok(())
}

fn test_command(binary: &str, plan: &Plan) -> Command {
    let mut cmd = Command::new(binary);
    cmd.envs(plan.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    cmd
}

/// The names of the tests of `binary` (`--list --format=terse`).
fn list_tests(binary: &str, plan: &Plan, selection: &Selection) -> Result<Vec<String>> {
    let mut cmd = test_command(binary, plan);
    cmd.args(["--list", "--format=terse"])
        .args(selection.libtest_flags());
    let out = cmd
        .output()
        .with_context(|| format!("could not start {binary}"))?;
    ensure!(
        out.status.success(),
        "`{binary} --list` failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_owned)
        .collect())
}

/// Runs one test alone, its output streamed to the console as it comes.
fn run_test(binary: &str, test: &str, decap: &str, plan: &Plan, selection: &Selection) -> Status {
    let (reader, writer) = match std::io::pipe() {
        Ok(pipe) => pipe,
        Err(e) => {
            println!("cannot make a pipe: {e}");
            return Status::Failed;
        }
    };
    let Ok(writer2) = writer.try_clone() else {
        return Status::Failed;
    };
    let mut cmd = test_command(binary, plan);
    cmd.env("LBX_TEST_DECAP", decap)
        .args(["--exact", test, "--test-threads=1", "--nocapture"])
        .args(selection.libtest_flags())
        .stdout(writer)
        .stderr(writer2)
        // Its own process group, so a timeout can stop everything it started.
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            println!("could not start {binary}: {e}");
            return Status::Failed;
        }
    };
    // The command (holding the pipe's write ends) must go, or the reader never sees EOF.
    drop(cmd);

    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut summary = String::new();
        let mut reader = BufReader::new(reader);
        let mut line = Vec::new();
        while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&line);
            let _ = out.flush();
            let text = String::from_utf8_lossy(&line);
            if let Some(rest) = text.trim().strip_prefix("test result: ") {
                summary = rest.to_owned();
            }
            line.clear();
        }
        let _ = tx.send(summary);
    });

    let deadline = Instant::now() + plan.test_timeout;
    let mut timed_out = false;
    let exit = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                println!(
                    "\n[vm-guest] {test} did not finish within {} s: killing it",
                    plan.test_timeout.as_secs()
                );
                kill_group(child.id());
                break child.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                println!("waiting for {binary}: {e}");
                kill_group(child.id());
                break None;
            }
        }
    };
    // Its output, to the end (a leftover grandchild holding the pipe is not waited for).
    let summary = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
    if timed_out {
        return Status::Timeout;
    }
    judge(exit.is_some_and(|s| s.success()), &summary)
}

/// A test passed only if libtest says it ran exactly one test and it passed.
fn judge(success: bool, summary: &str) -> Status {
    let count = |what: &str| {
        summary.split(';').map(str::trim).find_map(|part| {
            part.strip_suffix(what)?
                .trim()
                .rsplit(' ')
                .next()?
                .parse::<u32>()
                .ok()
        })
    };
    match (success, count("passed"), count("ignored")) {
        (true, Some(1), _) => Status::Ok,
        (true, Some(0), Some(1)) => Status::Ignored,
        _ => Status::Failed,
    }
}

fn kill_group(pid: u32) {
    unsafe extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    const SIGKILL: i32 = 9;
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill has no memory effects; the group is the test's, not yet reaped.
        unsafe { kill(-pid, SIGKILL) };
    }
}

/// Ends the VM: isa-debug-exit makes qemu exit with `(value << 1) | 1`; failing that (no
/// such device), a power-off.
fn exit_vm(all_passed: bool) {
    unsafe extern "C" {
        fn ioperm(from: u64, num: u64, turn_on: i32) -> i32;
        fn sync();
        fn reboot(cmd: i32) -> i32;
        fn tcdrain(fd: i32) -> i32;
    }
    const RB_POWER_OFF: i32 = 0x4321_fedc_u32 as i32;
    let _ = std::io::stdout().flush();
    // The last marker must leave the serial line before the VM ends: a flush only hands
    // it to the tty, which may still hold it when qemu exits.
    // SAFETY: tcdrain on standard output; on a non-tty it fails harmlessly.
    unsafe { tcdrain(1) };
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: sync has no preconditions.
    unsafe { sync() };
    // SAFETY: ioperm only changes this process's I/O permission bitmap.
    if unsafe { ioperm(u64::from(EXIT_PORT), 4, 1) } == 0 {
        outb(EXIT_PORT, u8::from(!all_passed));
    }
    // SAFETY: reboot(2) with a valid command; it only returns on failure.
    unsafe { reboot(RB_POWER_OFF) };
}

#[cfg(target_arch = "x86_64")]
fn outb(port: u16, value: u8) {
    // SAFETY: ioperm granted this port; writing to isa-debug-exit only ends the VM.
    unsafe {
        std::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags));
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn outb(_port: u16, _value: u8) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_round_trips() {
        let plan = Plan {
            env: vec![("LBX_BIN".into(), "/lbx-vm/bin/lbx".into())],
            decap: vec!["mixed".into()],
            binaries: vec!["/lbx-vm/tests/dsr".into()],
            filter: vec!["--skip".into(), "a b".into()],
            test_timeout: Duration::from_secs(300),
            fault: Some("hang".into()),
        };
        assert_eq!(Plan::parse(&plan.to_text().unwrap()).unwrap(), plan);
        let bad = Plan {
            filter: vec!["a\nb".into()],
            ..plan
        };
        assert!(bad.to_text().is_err());
    }

    #[test]
    fn selection_matches_binary_and_test_names() {
        let sel = |args: &[&str]| {
            Selection::parse(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>()).unwrap()
        };
        let all = sel(&[]);
        assert!(all.selects("dsr", "replies"));
        let health = sel(&["health", "--skip", "v6"]);
        assert!(health.selects("health", "leaves_v4"));
        assert!(!health.selects("health", "leaves_v6"));
        assert!(!health.selects("dsr", "replies"));
        let exact = sel(&["--exact", "replies", "weights::spread"]);
        assert!(exact.selects("dsr", "replies"));
        assert!(exact.selects("weights", "spread"));
        assert!(!exact.selects("dsr", "replies_v6"));
        let err = Selection::parse(&["--nocapture".to_string()]).unwrap_err();
        assert!(err.to_string().contains("--exact"), "{err}");
    }

    #[test]
    fn a_test_passes_only_when_libtest_ran_it() {
        let ok = "ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.2s";
        assert_eq!(judge(true, ok), Status::Ok);
        assert_eq!(judge(false, ok), Status::Failed);
        let none = "ok. 0 passed; 0 failed; 0 ignored; 0 measured; 5 filtered out";
        assert_eq!(judge(true, none), Status::Failed);
        let ignored = "ok. 0 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out";
        assert_eq!(judge(true, ignored), Status::Ignored);
        assert_eq!(judge(true, ""), Status::Failed);
    }
}
