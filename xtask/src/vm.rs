//! `cargo xtask vm-test`: the integration tests of lbx-tests inside VMs, on each kernel
//! pinned in xtask/kernels.toml, with results from all kernels reported together.
//!
//! Per run: build the test binaries (as the kernel tier does), strip them into
//! `<target>/vm-test/bin`, pack them with the guest runner and a plan into `run.cpio`; per
//! kernel: fetch and unpack it once ([`crate::vm_kernel`]), pack its base initramfs once
//! ([`crate::vm_initramfs`]), append the run's archive, boot qemu and follow the console
//! ([`crate::vm_qemu`]); the guest side is [`crate::vm_guest`].

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    bootstrap::{self, Need},
    build::{TEST_PROFILE, TestBinaries},
    process::{self, Interrupted},
    vm_fault::{self, Fault},
    vm_guest::{Plan, Selection, Status},
    vm_initramfs::{self, Cpio, GUEST_DIR},
    vm_kernel::{self, Pin},
    vm_qemu::{self, Accel, Boot, TestResult, VmReport},
    workspace::{Profile, Workspace},
};

/// How the backends of the test network decapsulate (LBX_TEST_DECAP of the tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Decap {
    /// Every backend runs `lbx decap` (XDP), as on the host.
    Xdp,
    /// Every backend decapsulates with the kernel's tunl0 and ip6tnl0 devices.
    Kernel,
    /// Odd backends use the kernel's devices, even ones `lbx decap`: one pass covers both.
    Mixed,
}

impl Decap {
    fn name(self) -> &'static str {
        match self {
            Decap::Xdp => "xdp",
            Decap::Kernel => "kernel",
            Decap::Mixed => "mixed",
        }
    }
}

/// The profile of what the VMs run. Under TCG the guest's CPU is about 20 times slower than
/// the host's; unoptimised code on top of that made the CPU-bound tests 3 to 6 times slower
/// again (the differential test 121 s instead of 21 s, the generations test over its limit),
/// which costs more than building the release profile once.
const VM_PROFILE: Profile = Profile::Release;

/// LBX_TEST_SCALE inside the VMs, unless set on the host: the tests make half as many
/// connections, flows and generations where counts cost time (each CLI call takes about
/// 0.3 s of emulated CPU), never below what their checks need (`lbx_tests::topology::scaled`).
const DEFAULT_SCALE: &str = "0.5";

/// LBX_TEST_SCALE for the guests: the host's if set, else [`DEFAULT_SCALE`].
fn scale() -> String {
    std::env::var("LBX_TEST_SCALE").unwrap_or_else(|_| DEFAULT_SCALE.to_owned())
}

/// LBX_TEST_TIME_SCALE for the guests, unless set on the host: how much longer the tests
/// wait for what must happen (a process getting ready, a CLI call, a state change) than on
/// the host. An emulated CPU is 13 to 20 times slower, more when the host is busy; what the
/// tests assert about timing never scales (`lbx_tests::topology::patience`).
fn time_scale(accel: Accel) -> String {
    std::env::var("LBX_TEST_TIME_SCALE").unwrap_or_else(|_| {
        match accel {
            Accel::Tcg => "10",
            Accel::Kvm => "2",
        }
        .to_owned()
    })
}

/// The test the self-check runs with a broken balancer: it loads the program and fails in
/// about a second when it cannot.
const SELF_CHECK_TEST: &str = "fixtures::nothing_published_passes_everything";

/// Default limit for one test in a guest, in seconds: the slowest test takes about 80 s.
const TEST_TIMEOUT_S: u64 = 300;
/// Default limit for one VM, in seconds: a whole run takes about 6 minutes under TCG.
const VM_TIMEOUT_S: u64 = 2400;

/// Options of `cargo xtask vm-test` (and of the vm tier of `cargo xtask test`).
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// Kernel to boot: a `name` of xtask/kernels.toml (6.1, 6.12), its package name, or
    /// `all` (repeat for several).
    #[arg(long = "kernel", value_name = "NAME", default_value = "all")]
    pub kernels: Vec<String>,

    /// How backends decapsulate; repeat to run the suite once per mode.
    #[arg(long, value_enum, value_name = "MODE", default_value = "mixed")]
    pub decap: Vec<Decap>,

    /// Limit for one test inside the guest, in seconds; it is killed and fails after it.
    #[arg(long, value_name = "SECONDS", default_value_t = TEST_TIMEOUT_S)]
    pub test_timeout: u64,

    /// Limit for one whole VM, boot to power-off, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = VM_TIMEOUT_S)]
    pub timeout: u64,

    /// Build the binaries the VMs run with the dev profile, like the kernel tier (default:
    /// release: unoptimised code under an emulated CPU is too slow).
    #[arg(long)]
    pub debug: bool,

    /// Echo every line of the guest's console (it is always saved to
    /// target/vm-test/<kernel>/console.log).
    #[arg(long, short)]
    pub verbose: bool,

    /// Break the guests on purpose, to see how a failure is reported: `verifier` (the
    /// balancer embedded in lbx and the tests is one the verifier rejects), `panic`, `hang`
    /// or `exit` (the guest's kernel panics, its runner hangs or exits without its final
    /// marker, once the first test has started).
    #[arg(long, value_enum, value_name = "FAULT", env = "LBX_VM_FAULT")]
    pub fault: Option<Fault>,

    /// First boot one VM whose balancer the verifier rejects, and fail unless that VM is
    /// reported as failed (the vm tier of `cargo xtask test` does this).
    #[arg(long)]
    pub self_check: bool,

    /// Tests to run (after `--`): patterns matched in `<binary>::<test>` (`health`,
    /// `dsr::replies`), `--exact` (whole names), `--skip PATTERN`, `--ignored`,
    /// `--include-ignored`.
    #[arg(last = true, value_name = "FILTER")]
    pub filter: Vec<String>,
}

impl Args {
    /// The defaults, with `filter` (the vm tier of `cargo xtask test`).
    pub fn with_filter(filter: &[String]) -> Self {
        Self {
            kernels: vec!["all".into()],
            decap: vec![Decap::Mixed],
            test_timeout: TEST_TIMEOUT_S,
            timeout: VM_TIMEOUT_S,
            debug: false,
            verbose: false,
            fault: None,
            self_check: true,
            filter: filter.to_vec(),
        }
    }
}

/// `cargo xtask vm-test`: returns the exit code.
pub fn run(args: &Args) -> Result<i32> {
    let ws = bootstrap::run(Need::Build)?;
    let runs = suite(&ws, args)?;
    // Asked for VM tests by name, none is no success.
    Ok(if !runs.is_empty() && runs.iter().all(KernelRun::ok) {
        0
    } else {
        1
    })
}

/// The VM packages, the build, every selected kernel, then the report. Returns the runs;
/// an error only for what stops everything (bad arguments, no build, Ctrl-C).
pub fn suite(ws: &Workspace, args: &Args) -> Result<Vec<KernelRun>> {
    let pins = vm_kernel::select(&vm_kernel::read_pins()?, &args.kernels)?;
    bootstrap::vm_packages()?;
    let (accel, why) = Accel::detect();

    let target = ws.target_dir()?;
    let out = target.join("vm-test");
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    // Two runs in one target folder would overwrite each other's archives and logs.
    let lock_path = out.join("lock");
    let lock = fs::File::create(&lock_path)
        .with_context(|| format!("creating {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        println!(
            "   waiting for another vm-test that holds {}",
            lock_path.display()
        );
        lock.lock()
            .with_context(|| format!("locking {}", lock_path.display()))?;
    }
    let profile = if args.debug { TEST_PROFILE } else { VM_PROFILE };
    println!("== vm-test: build ({} profile)", profile.dir());
    let bins = build_binaries(ws, profile)?;
    let tests = test_executables(ws, profile)?;
    ensure!(
        !tests.is_empty(),
        "lbx-tests has no integration tests to run"
    );
    let selected = selected_tests(&tests, &Selection::parse(&args.filter)?)?;
    if selected == 0 {
        println!(
            "== vm-test: no integration test matches `{}`: nothing to run in the VMs",
            args.filter.join(" ")
        );
        return Ok(Vec::new());
    }
    let run_cpio = out.join("run.cpio");
    let plan = plan(&tests, args, &args.filter, accel, args.fault);
    pack_run(&out.join("bin"), &bins, &tests, &plan, &run_cpio)?;

    println!(
        "== vm-test: {selected} tests of {} on {}; CPU: {why}; decap {}; {} profile; \
         LBX_TEST_SCALE={}, LBX_TEST_TIME_SCALE={}{}",
        tests
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        pins.iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        args.decap
            .iter()
            .map(|d| d.name())
            .collect::<Vec<_>>()
            .join(", "),
        profile.dir(),
        scale(),
        time_scale(accel),
        match args.fault {
            Some(f) => format!("; broken on purpose: --fault {}", f.name()),
            None => String::new(),
        }
    );
    let mut runs = Vec::new();
    if args.self_check {
        let pin = pins.first().context("no kernel selected")?;
        match self_check(pin, accel, &out, &target, &bins, &tests, args) {
            Err(e) if e.is::<Interrupted>() => return Err(e),
            Err(e) => runs.push(KernelRun {
                label: format!("{} self-check", pin.name),
                report: None,
                error: Some(format!("{e:#}")),
                wall: Duration::ZERO,
                console: None,
                expect_failure: true,
            }),
            Ok(run) => runs.push(run),
        }
    }
    for pin in &pins {
        let run = one_kernel(pin, &pin.name, accel, &run_cpio, &target, args, false);
        match run {
            Err(e) if e.is::<Interrupted>() => return Err(e),
            Err(e) => runs.push(KernelRun {
                label: pin.name.clone(),
                report: None,
                error: Some(format!("{e:#}")),
                wall: Duration::ZERO,
                console: None,
                expect_failure: false,
            }),
            Ok(run) => runs.push(run),
        }
    }
    summary(&runs, accel);
    Ok(runs)
}

/// The outcome of one VM: a kernel's run, or the self-check.
pub struct KernelRun {
    /// `6.1`, or `6.1 self-check`.
    pub label: String,
    pub report: Option<VmReport>,
    /// What stopped it before or instead of a VM run (download, packing, qemu).
    pub error: Option<String>,
    /// Preparing the kernel and its initramfs, and running qemu.
    pub wall: Duration,
    pub console: Option<PathBuf>,
    /// The self-check: the guest's balancer is broken on purpose, so it must fail.
    pub expect_failure: bool,
}

impl KernelRun {
    pub fn ok(&self) -> bool {
        if self.expect_failure {
            return self.self_check().is_ok();
        }
        self.error.is_none() && self.report.as_ref().is_some_and(VmReport::ok)
    }

    /// For the self-check: whether the guest with a broken balancer was reported the way
    /// it must be: it finished, and each of its tests failed, refused by the verifier.
    fn self_check(&self) -> Result<String, String> {
        if let Some(e) = &self.error {
            return Err(format!("it did not run: {e}"));
        }
        let Some(r) = &self.report else {
            return Err("no report".into());
        };
        if r.ok() {
            return Err(
                "a guest whose balancer the verifier rejects was reported as passing: \
                        vm-test cannot be trusted to see a failure"
                    .into(),
            );
        }
        if r.done.is_none() || r.results.is_empty() {
            return Err(format!(
                "the guest did not run its test to the end: {}",
                r.problems.join("; ")
            ));
        }
        if let Some(t) = r.results.iter().find(|t| !refused_by_the_verifier(t)) {
            return Err(format!(
                "{} {}, but its output names no verifier rejection",
                t.id,
                t.status.word()
            ));
        }
        Ok(format!(
            "a broken balancer fails {} of {} tests, refused by the verifier",
            r.failed(),
            r.results.len()
        ))
    }

    /// One line for a summary: `6.1: ok, 23 passed, 0 failed, 5m 52s (VM 5m 49s)`: the
    /// whole time, then qemu's, boot to power-off.
    pub fn line(&self) -> String {
        let time = match &self.report {
            Some(r) => format!("{} (VM {})", minutes(self.wall), minutes(r.wall)),
            None => minutes(self.wall),
        };
        if self.expect_failure {
            return match self.self_check() {
                Ok(what) => format!("{}: ok, {what}, {time}", self.label),
                Err(why) => format!("{}: FAILED: {why}, {time}", self.label),
            };
        }
        match (&self.error, &self.report) {
            (Some(e), _) => format!("{}: FAILED before the tests ran ({time}): {e}", self.label),
            (None, Some(r)) => {
                let verdict = if self.ok() { "ok" } else { "FAILED" };
                let ignored = r.count(Status::Ignored);
                let mut line = format!(
                    "{}: {verdict}, {} passed, {} failed{}, {time}",
                    self.label,
                    r.passed(),
                    r.failed(),
                    if ignored > 0 {
                        format!(", {ignored} ignored")
                    } else {
                        String::new()
                    }
                );
                for p in &r.problems {
                    line.push_str(&format!("; {p}"));
                }
                line
            }
            (None, None) => format!("{}: no result", self.label),
        }
    }
}

/// What the verifier says about the instruction [`vm_fault`] puts in the balancer (quoted
/// in the load error lbx and the tests print).
const VERIFIER_REJECTION: &str = "invalid bpf_context access off=4096";

/// Whether a test failed because the kernel refused to load the broken balancer: the
/// verifier's words for the broken instruction are in its output.
fn refused_by_the_verifier(t: &TestResult) -> bool {
    t.status == Status::Failed && t.output.iter().any(|l| l.contains(VERIFIER_REJECTION))
}

fn minutes(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}m {:02}s", s / 60, s % 60)
}

/// Boots `pin` with a copy of the run whose balancer the verifier rejects, running one test
/// that loads it: the run must come back failed, with the verifier's rejection.
fn self_check(
    pin: &Pin,
    accel: Accel,
    out: &Path,
    target: &Path,
    bins: &TestBinaries,
    tests: &[(String, PathBuf)],
    args: &Args,
) -> Result<KernelRun> {
    println!();
    println!(
        "== vm-test: self-check: a guest whose balancer the verifier rejects must be reported \
         as failed"
    );
    let (binary, _) = SELF_CHECK_TEST
        .split_once("::")
        .expect("SELF_CHECK_TEST is <binary>::<test>");
    let tests: Vec<_> = tests.iter().filter(|(n, _)| n == binary).cloned().collect();
    ensure!(
        !tests.is_empty(),
        "the self-check runs {SELF_CHECK_TEST}, and there is no test binary {binary}"
    );
    let filter = ["--exact".to_owned(), SELF_CHECK_TEST.to_owned()];
    let plan = plan(&tests, args, &filter, accel, Some(Fault::Verifier));
    let cpio = out.join("self-check.cpio");
    pack_run(&out.join("self-check-bin"), bins, &tests, &plan, &cpio)?;
    let label = format!("{} self-check", pin.name);
    one_kernel(pin, &label, accel, &cpio, target, args, true)
}

fn one_kernel(
    pin: &Pin,
    label: &str,
    accel: Accel,
    run_cpio: &Path,
    target: &Path,
    args: &Args,
    expect_failure: bool,
) -> Result<KernelRun> {
    println!();
    println!("== vm-test: {label}: kernel {}", pin.describe());
    let started = Instant::now();
    let kernel = vm_kernel::prepare(pin)?;
    let base = vm_initramfs::base(&kernel)?;
    let dir = vm_qemu::run_dir(target, &label.replace(' ', "-"));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let initrd = dir.join("initrd.img");
    vm_initramfs::join(&base, run_cpio, &initrd)?;
    let console = dir.join("console.log");
    let boot = Boot {
        label,
        vmlinuz: &kernel.vmlinuz,
        initrd: &initrd,
        accel,
        cpus: 2,
        limit: Duration::from_secs(args.timeout),
        silence: Duration::from_secs(args.test_timeout + 60),
        console_log: &console,
        verbose: args.verbose,
    };
    let name = pin.name.clone();
    let mut report = vm_qemu::boot(&boot, &mut |r: &TestResult| {
        let expected = if expect_failure && r.status == Status::Failed {
            " (expected)"
        } else {
            ""
        };
        println!(
            "   {name:<5} {:<8} {:7.1} s  {}{expected}",
            r.status.word(),
            r.secs,
            r.id
        );
    })?;
    if let Some(release) = &report.release
        && release != &kernel.release
    {
        report.problems.push(format!(
            "the guest runs kernel {release}, not the pinned {}: remove {} to unpack it again",
            kernel.release,
            kernel.dir.display()
        ));
    }
    let run = KernelRun {
        label: label.to_owned(),
        report: Some(report),
        error: None,
        wall: started.elapsed(),
        console: Some(console),
        expect_failure,
    };
    println!("-- {}", run.line());
    Ok(run)
}

/// Lines of a failed test's output shown in the summary.
const FAILED_OUTPUT_LINES: usize = 80;

fn summary(runs: &[KernelRun], accel: Accel) {
    // Details first, so the verdicts end the output. A self-check's failures are expected;
    // its details are shown only when it did not come out as it must.
    for run in runs.iter().filter(|r| !r.expect_failure || !r.ok()) {
        let Some(report) = &run.report else { continue };
        for r in report
            .results
            .iter()
            .filter(|r| matches!(r.status, Status::Failed | Status::Timeout))
        {
            println!();
            let start = r.output.len().saturating_sub(FAILED_OUTPUT_LINES);
            println!(
                "--- {}: {} {} after {:.1} s; its output (last {} of {} lines):",
                run.label,
                r.id,
                r.status.word(),
                r.secs,
                r.output.len() - start,
                r.output.len()
            );
            for line in &r.output[start..] {
                println!("    {line}");
            }
        }
        if !report.problems.is_empty() {
            println!();
            println!("--- {}: {}", run.label, report.problems.join("; "));
            match &report.unfinished {
                // Its output, shown above, runs to the console's last line.
                Some(id) => println!("    the test running when the console ended: {id}"),
                None => {
                    println!("    last {} console lines:", report.tail.len());
                    for line in &report.tail {
                        println!("    | {line}");
                    }
                }
            }
        }
    }
    println!();
    println!("{}", "=".repeat(78));
    println!(
        "== vm-test results ({})",
        match accel {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG",
        }
    );
    println!("{}", "=".repeat(78));
    for run in runs {
        println!("  {}", run.line());
        if let Some(c) = &run.console {
            println!("      console: {}", c.display());
        }
        if let Some(report) = &run.report
            && !run.expect_failure
        {
            for r in report
                .results
                .iter()
                .filter(|r| matches!(r.status, Status::Failed | Status::Timeout))
            {
                println!("      {} {}", r.status.word(), r.id);
            }
        }
    }
    let kernels = runs.iter().filter(|r| !r.expect_failure).count();
    let failed = runs.iter().filter(|r| !r.expect_failure && !r.ok()).count();
    let check = runs.iter().find(|r| r.expect_failure);
    if failed == 0 {
        println!(
            "{} passed{}",
            match kernels {
                1 => "the kernel".to_owned(),
                n => format!("all {n} kernels"),
            },
            match check {
                Some(c) if !c.ok() => "; the self-check FAILED",
                Some(_) => "; the self-check saw the broken guest fail",
                None => "",
            }
        );
    } else {
        println!(
            "{failed} of {kernels} kernels FAILED{}",
            match check {
                Some(c) if !c.ok() => "; the self-check FAILED too",
                _ => "",
            }
        );
    }
    let total: Duration = runs.iter().map(|r| r.wall).sum();
    println!("VMs: {} in all", minutes(total));
}

/// Test binaries that run on the host tier only, and why.
pub const HOST_ONLY: &[(&str, &str)] = &[
    (
        "metrics",
        "it runs a real Prometheus server and promtool (two 50 MB Go programs with their \
         libraries), which the guests' initramfs does not carry",
    ),
    (
        "cli_docs",
        "it checks the generated completions with bash and zsh and runs `cargo xtask \
         install`, none of which the guests' busybox initramfs carries",
    ),
    (
        "cluster",
        "it needs etcd: it runs a real etcd cluster (Debian's etcd and etcdctl, Go programs \
         of 21 and 17 MB), which the guests' initramfs does not carry",
    ),
];

/// The integration test executables of lbx-tests, built like the kernel tier builds them:
/// (target name, path).
fn test_executables(ws: &Workspace, profile: Profile) -> Result<Vec<(String, PathBuf)>> {
    let mut cmd = ws.cargo(["test", "-p", "lbx-tests", "--test", "*", "--no-run"]);
    cmd.args(profile.flags())
        .arg("--message-format=json")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    println!("$ {}", process::display(&cmd));
    let out = cmd
        .output()
        .with_context(|| format!("could not run `{}`", process::display(&cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({})",
            process::display(&cmd),
            process::describe(out.status)
        );
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // Integration tests only: the package's binaries are built for them too.
        if !line.contains("\"reason\":\"compiler-artifact\"")
            || !line.contains("\"kind\":[\"test\"]")
        {
            continue;
        }
        let Some(exe) = crate::workspace::json_string_field(line, "executable") else {
            continue;
        };
        let exe = PathBuf::from(exe);
        let name = target_name(&exe);
        if let Some((_, why)) = HOST_ONLY.iter().find(|(h, _)| *h == name) {
            println!("   {name}: host tier only: {why}");
            continue;
        }
        if !found.iter().any(|(n, _)| n == &name) {
            found.push((name, exe));
        }
    }
    found.sort();
    Ok(found)
}

/// How many tests `selection` picks from `tests` (each binary lists its own, on the host).
fn selected_tests(tests: &[(String, PathBuf)], selection: &Selection) -> Result<usize> {
    let mut n = 0;
    for (name, exe) in tests {
        let mut cmd = Command::new(exe);
        cmd.args(["--list", "--format=terse"])
            .args(selection.libtest_flags());
        let listed = process::stdout(&mut cmd)?;
        n += listed
            .lines()
            .filter_map(|l| l.strip_suffix(": test"))
            .filter(|t| selection.selects(name, t))
            .count();
    }
    Ok(n)
}

/// `lbx` and `lbx-test-server` built with `profile` (what [`TestBinaries::build`] does for
/// the kernel tier's profile).
fn build_binaries(ws: &Workspace, profile: Profile) -> Result<TestBinaries> {
    if profile == TEST_PROFILE {
        return TestBinaries::build(ws);
    }
    let mut cmd = ws.cargo(["build", "-p", "lbx-user", "--bin", "lbx"]);
    cmd.args(["-p", "lbx-tests", "--bin", "lbx-test-server"])
        .args(["--bin", CAPACITY_SERVER])
        .args(profile.flags());
    process::run(&mut cmd)?;
    Ok(TestBinaries {
        lbx: ws.binary(profile, "lbx")?,
        test_server: ws.binary(profile, "lbx-test-server")?,
        xdp_variant: crate::build::xdp_variant(ws)?,
    })
}

/// `target/debug/deps/dsr-bce1cb497fad0cd6` -> `dsr`.
fn target_name(exe: &Path) -> String {
    let file = exe
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    match file.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            name.to_owned()
        }
        _ => file,
    }
}

/// Strips debug information (the guest needs none; it is most of a debug binary) into
/// `dir/<name>`.
fn stage(from: &Path, dir: &Path, name: &str) -> Result<PathBuf> {
    let to = dir.join(name);
    process::stdout(
        Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&to)
            .arg(from),
    )
    .with_context(|| format!("stripping {}", from.display()))?;
    Ok(to)
}

/// Where the guest finds the runner, lbx, the test server and each test binary.
const GUEST_RUNNER: &str = "bin/xtask";
const GUEST_LBX: &str = "bin/lbx";
const GUEST_SERVER: &str = "bin/lbx-test-server";
/// The adaptive test's backends (LBX_CAPACITY_SERVER), built next to the test server.
const CAPACITY_SERVER: &str = "lbx-capacity-server";
const GUEST_CAPACITY_SERVER: &str = "bin/lbx-capacity-server";
/// The other build of the XDP programs (LBX_TEST_XDP_VARIANT), a data file.
const GUEST_XDP_VARIANT: &str = "bin/lbx-xdp-variant";

fn guest_path(rel: &str) -> String {
    format!("{GUEST_DIR}/{rel}")
}

/// What the guest runs: `tests` (their names) selected by `filter`, in the modes of `args`.
fn plan(
    tests: &[(String, PathBuf)],
    args: &Args,
    filter: &[String],
    accel: Accel,
    fault: Option<Fault>,
) -> Plan {
    Plan {
        env: vec![
            ("LBX_BIN".to_owned(), guest_path(GUEST_LBX)),
            ("LBX_TEST_SERVER".to_owned(), guest_path(GUEST_SERVER)),
            (
                "LBX_CAPACITY_SERVER".to_owned(),
                guest_path(GUEST_CAPACITY_SERVER),
            ),
            (
                "LBX_TEST_XDP_VARIANT".to_owned(),
                guest_path(GUEST_XDP_VARIANT),
            ),
            ("LBX_TEST_SCALE".to_owned(), scale()),
            ("LBX_TEST_TIME_SCALE".to_owned(), time_scale(accel)),
        ],
        decap: args.decap.iter().map(|d| d.name().to_owned()).collect(),
        binaries: tests
            .iter()
            .map(|(name, _)| guest_path(&format!("tests/{name}")))
            .collect(),
        filter: filter.to_vec(),
        test_timeout: Duration::from_secs(args.test_timeout),
        fault: fault.map(|f| f.name().to_owned()),
    }
}

/// The run's archive: /init, the guest runner (this very xtask), lbx, the test and capacity
/// servers, the test binaries with their libraries, the variant XDP object, and the plan;
/// the binaries are staged (stripped) in `staged`. A plan with the `verifier` fault gets
/// binaries and a variant whose balancer is broken.
fn pack_run(
    staged: &Path,
    bins: &TestBinaries,
    tests: &[(String, PathBuf)],
    plan: &Plan,
    cpio_path: &Path,
) -> Result<()> {
    let _ = fs::remove_dir_all(staged);
    fs::create_dir_all(staged).with_context(|| format!("creating {}", staged.display()))?;
    // This very binary, through /proc (another process's /proc/self would be its own): it
    // may have been rebuilt, its file replaced, since it started.
    let xtask = PathBuf::from(format!("/proc/{}/exe", std::process::id()));
    let mut programs = vec![(stage(&xtask, staged, "xtask")?, guest_path(GUEST_RUNNER))];
    let mut under_test = vec![
        (stage(&bins.lbx, staged, "lbx")?, guest_path(GUEST_LBX)),
        (
            stage(&bins.test_server, staged, "lbx-test-server")?,
            guest_path(GUEST_SERVER),
        ),
        (
            stage(
                &bins.test_server.with_file_name(CAPACITY_SERVER),
                staged,
                CAPACITY_SERVER,
            )?,
            guest_path(GUEST_CAPACITY_SERVER),
        ),
    ];
    for (name, exe) in tests {
        under_test.push((
            stage(exe, staged, &format!("test-{name}"))?,
            guest_path(&format!("tests/{name}")),
        ));
    }
    // A copy as it is: a BPF object is no program to strip or ask `ldd` about, and its BTF
    // is what aya loads it with.
    let variant = staged.join("lbx-xdp-variant");
    fs::copy(&bins.xdp_variant, &variant)
        .with_context(|| format!("copying {}", bins.xdp_variant.display()))?;
    if plan.fault.as_deref() == Some(Fault::Verifier.name()) {
        let mut broken = 0;
        for path in under_test.iter().map(|(p, _)| p).chain([&variant]) {
            broken += break_programs_in(path)?;
        }
        ensure!(
            broken > 0,
            "--fault verifier: no binary embeds the program {}",
            vm_fault::BROKEN_PROGRAM
        );
        println!(
            "-- broke {} on purpose in {broken} binaries: the verifier must reject it",
            vm_fault::BROKEN_PROGRAM
        );
    }
    programs.extend(under_test);

    let plan_path = guest_path("plan");
    let mut cpio = Cpio::create(cpio_path)?;
    cpio.file(
        "/init",
        0o755,
        vm_initramfs::init_script(&guest_path(GUEST_RUNNER), &plan_path).as_bytes(),
    )?;
    cpio.file(&plan_path, 0o644, plan.to_text()?.as_bytes())?;
    vm_initramfs::add_programs(&mut cpio, &programs)?;
    cpio.copy(&guest_path(GUEST_XDP_VARIANT), &variant)?;
    cpio.finish()?;
    let size = fs::metadata(cpio_path)?.len();
    println!(
        "-- packed {} ({:.1} MB): {} test binaries, lbx, lbx-test-server, lbx-capacity-server, \
         the variant XDP object, the guest runner",
        cpio_path.display(),
        size as f64 / 1e6,
        tests.len()
    );
    Ok(())
}

/// [`vm_fault::break_programs`] on the file at `path`; returns how many objects it broke.
fn break_programs_in(path: &Path) -> Result<usize> {
    let mut bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let n = vm_fault::break_programs(&mut bytes)
        .with_context(|| format!("breaking the programs in {}", path.display()))?;
    if n > 0 {
        fs::write(path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_executables_are_named_by_their_target() {
        assert_eq!(
            target_name(Path::new("/t/debug/deps/backend_changes-1daf5f5e271c05d4")),
            "backend_changes"
        );
        assert_eq!(target_name(Path::new("/t/debug/deps/odd-name")), "odd-name");
    }

    fn self_check_run(results: &[(Status, &str)], done: bool) -> KernelRun {
        let results: Vec<TestResult> = results
            .iter()
            .map(|(status, line)| TestResult {
                id: format!("[mixed] {SELF_CHECK_TEST}"),
                status: *status,
                secs: 1.0,
                output: vec!["running 1 test".into(), (*line).into()],
            })
            .collect();
        let passed = results.iter().filter(|r| r.status == Status::Ok).count() as u32;
        let failed = results.len() as u32 - passed;
        KernelRun {
            label: "6.1 self-check".into(),
            report: Some(VmReport {
                done: done.then_some((passed, failed, 0)),
                problems: if done {
                    Vec::new()
                } else {
                    vec!["the guest never printed its final marker".into()]
                },
                results,
                ..VmReport::default()
            }),
            error: None,
            wall: Duration::from_secs(30),
            console: None,
            expect_failure: true,
        }
    }

    #[test]
    fn the_self_check_passes_only_when_the_broken_guest_failed_at_the_verifier() {
        let refused = "load the balancer: the BPF_PROG_LOAD syscall failed. Verifier output: \
                       0: (61) r0 = *(u32 *)(r1 +4096) invalid bpf_context access off=4096 size=4";
        let run = self_check_run(&[(Status::Failed, refused)], true);
        assert!(run.ok(), "{}", run.line());
        assert!(
            run.line().contains("refused by the verifier"),
            "{}",
            run.line()
        );

        // A broken guest reported as passing is the failure this check exists for.
        let passed = self_check_run(&[(Status::Ok, "test result: ok. 1 passed")], true);
        assert!(!passed.ok());
        assert!(
            passed.line().contains("reported as passing"),
            "{}",
            passed.line()
        );

        // Failing for another reason, or not finishing, proves nothing. The guest's own note
        // that the program is broken is no rejection either.
        let other = self_check_run(&[(Status::Failed, "topology: no such file")], true);
        assert!(!other.ok(), "{}", other.line());
        let note = "[vm-guest] this run's balancer program is broken: the verifier must reject it";
        let noted = self_check_run(&[(Status::Failed, note)], true);
        assert!(!noted.ok(), "{}", noted.line());
        let unfinished = self_check_run(&[(Status::Failed, refused)], false);
        assert!(!unfinished.ok(), "{}", unfinished.line());
        let nothing = self_check_run(&[], true);
        assert!(!nothing.ok(), "{}", nothing.line());
    }
}
