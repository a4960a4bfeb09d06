//! Child processes of the tests: long-running ones (servers, lbx agents) that log to files and
//! are killed with their process group on drop, and short commands run with a time limit.

use std::fs::File;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::topology::patience;

/// How long a stopped process gets between SIGTERM and SIGKILL (times
/// [`patience`]: an agent detaching its programs on an emulated CPU takes seconds).
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often waits poll a child or a log file.
const POLL: Duration = Duration::from_millis(20);

/// Makes `cmd` start its own process group (so the whole group can be signalled) and die if
/// the thread that spawned it dies (so a test killed outright leaves no process behind).
fn isolate(cmd: &mut Command) {
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent; this runs in the
    // forked child before exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Signals the process group led by `pid`.
fn signal_group(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill has no memory effects. Callers signal only groups this module created whose
    // leader is not reaped yet, so the id cannot have been reused.
    unsafe {
        libc::kill(-pid, signal);
    }
}

/// Runs `cmd` to completion with stdout and stderr captured, killing it (and its process
/// group) if it takes longer than `timeout`.
pub fn run_bounded(cmd: Command, timeout: Duration) -> anyhow::Result<Output> {
    run_bounded_to(cmd, Stdio::piped(), timeout)
}

/// Like [`run_bounded`], with stdout going to `stdout` (captured only if that is
/// `Stdio::piped()`), e.g. a pipe whose reader is gone.
pub fn run_bounded_to(
    mut cmd: Command,
    stdout: Stdio,
    timeout: Duration,
) -> anyhow::Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped());
    isolate(&mut cmd);
    let program = format!("{:?}", cmd.get_program());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("failed to start {program}"))?;
    let stdout = read_in_background(child.stdout.take());
    let stderr = read_in_background(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            signal_group(child.id(), libc::SIGKILL);
            let _ = child.wait();
            bail!("{program} did not finish within {timeout:?}; killed it");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// The stdout of a command that ran (`what`: how to name it), or, if it failed, an error
/// with its exit status and stderr.
pub fn stdout_of(out: Output, what: &str) -> anyhow::Result<String> {
    if !out.status.success() {
        bail!(
            "`{what}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn read_in_background(
    pipe: Option<impl std::io::Read + Send + 'static>,
) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

/// A long-running child whose stdout and stderr go to files in the test's directory. Dropping
/// it stops the whole process group: SIGTERM, then SIGKILL after a grace period.
#[derive(Debug)]
pub struct Process {
    label: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    exited: Option<ExitStatus>,
}

impl Process {
    /// Starts `cmd`, logging to `<log_dir>/<label>.stdout` and `.stderr`.
    pub fn spawn(label: &str, mut cmd: Command, log_dir: &Path) -> anyhow::Result<Self> {
        let stdout = log_dir.join(format!("{label}.stdout"));
        let stderr = log_dir.join(format!("{label}.stderr"));
        cmd.stdin(Stdio::null())
            .stdout(File::create(&stdout)?)
            .stderr(File::create(&stderr)?);
        isolate(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("failed to start {label}: {cmd:?}"))?;
        Ok(Self {
            label: label.to_owned(),
            child,
            stdout,
            stderr,
            exited: None,
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running (it is reaped if it has exited).
    pub fn is_running(&mut self) -> bool {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited.is_none()
    }

    /// Waits until the process prints a stdout line containing `needle`.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let path = self.stdout.clone();
        self.wait_until(&format!("a line containing {needle:?}"), timeout, || {
            std::fs::read_to_string(&path).is_ok_and(|out| out.lines().any(|l| l.contains(needle)))
        })
    }

    /// Polls `ready` until it holds, failing at once if the process exits, or after `timeout`.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready() {
                return Ok(());
            }
            if !self.is_running() {
                bail!(
                    "{} exited ({}) before {what}\n{}",
                    self.label,
                    self.exited.map_or_else(String::new, |s| s.to_string()),
                    self.tail(20)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not show {what} within {timeout:?}\n{}",
                    self.label,
                    self.tail(20)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Kills the process group outright (SIGKILL, as a crash would end it) and returns how
    /// the leader exited.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            signal_group(self.child.id(), libc::SIGKILL);
            self.exited = self.child.wait().ok();
        }
        self.exited
    }

    /// Stops the process group (SIGTERM, SIGKILL after a grace period) and returns how the
    /// leader exited.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if self.is_running() {
            signal_group(self.child.id(), libc::SIGTERM);
            let deadline = Instant::now() + patience(STOP_GRACE);
            while self.is_running() && Instant::now() < deadline {
                std::thread::sleep(POLL);
            }
        }
        if self.exited.is_none() {
            // Only while the leader is unreaped does its id surely still name this group.
            signal_group(self.child.id(), libc::SIGKILL);
            self.exited = self.child.wait().ok();
        }
        self.exited
    }

    /// The last `lines` lines of stdout and of stderr, labelled, for failure reports.
    pub fn tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for (stream, path) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            out.push_str(&format!(
                "--- {} {stream} (last {} of {} lines) ---\n",
                self.label,
                all.len() - start,
                all.len()
            ));
            for line in &all[start..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}
