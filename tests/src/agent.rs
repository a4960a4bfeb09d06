//! One lbx agent as the tests drive it: its `lbx run` command line, and the `lbx` CLI against
//! its control socket from inside its namespace.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context as _, ensure};

use crate::netns::Netns;
use crate::process::{Process, run_bounded, stdout_of};
use crate::topology::{Flow, patience};
use crate::wiring::READY_TIMEOUT;

/// Limit for one `lbx` CLI command.
const CLI_TIMEOUT: Duration = Duration::from_secs(20);
/// Limit for `lbx status` while waiting for the agent, and for the report at the end.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// `lbx run` on `iface` with its socket, configuration file and BPF filesystem, then `extra`;
/// native XDP unless `extra` picks another mode.
pub fn run_args(
    iface: &str,
    socket: &Path,
    config: &Path,
    bpffs: &Path,
    extra: impl IntoIterator<Item = String>,
) -> Vec<String> {
    let mut args: Vec<String> = [
        "run",
        "--iface",
        iface,
        "--socket",
        &socket.display().to_string(),
        "--config",
        &config.display().to_string(),
        "--bpffs",
        &bpffs.display().to_string(),
    ]
    .map(str::to_owned)
    .into();
    args.extend(extra);
    if !args.iter().any(|a| a == "--xdp-mode") {
        args.extend(["--xdp-mode".to_owned(), "native".to_owned()]);
    }
    args
}

/// The `lbx` CLI of one agent: `ip netns exec NS lbx --socket S ...`.
#[derive(Debug, Clone, Copy)]
pub struct LbxCli<'a> {
    pub netns: &'a Netns,
    pub lbx: &'a Path,
    pub socket: &'a Path,
}

impl LbxCli<'_> {
    /// `lbx --socket S ARGS` in the agent's namespace, not yet run.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = self.netns.command(self.lbx);
        cmd.arg("--socket").arg(self.socket).args(args);
        cmd
    }

    /// Runs a command; returns its output whatever the exit status.
    pub fn output(&self, args: &[&str]) -> anyhow::Result<Output> {
        run_bounded(self.command(args), patience(CLI_TIMEOUT))
            .with_context(|| format!("lbx {}", args.join(" ")))
    }

    /// Runs a command; returns stdout, or an error with stderr if it failed.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        stdout_of(self.output(args)?, &format!("lbx {}", args.join(" ")))
    }

    /// Runs `lbx --json ARGS` and parses its stdout.
    pub fn json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let out = self.run(&full)?;
        serde_json::from_str(&out)
            .with_context(|| format!("`lbx {}` printed invalid JSON: {out}", full.join(" ")))
    }

    /// Runs a command that must fail; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.output(args)?;
        ensure!(
            !out.status.success(),
            "`lbx {}` succeeded but should have failed; stdout: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout).trim()
        );
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// `lbx --json flow SRC DST`: the backend a TCP flow goes to and why (`source`).
    pub fn flow(&self, src: SocketAddr, dst: SocketAddr) -> anyhow::Result<Flow> {
        let json = self.json(&["flow", "--proto", "tcp", &src.to_string(), &dst.to_string()])?;
        let backend = json["backend"]
            .as_str()
            .and_then(|b| b.parse().ok())
            .with_context(|| format!("`lbx flow` printed no backend address: {json}"))?;
        let source = json["source"]
            .as_str()
            .with_context(|| format!("`lbx flow` printed no source: {json}"))?
            .to_owned();
        Ok(Flow { backend, source })
    }

    /// Waits until the agent `agent` (just started) answers `lbx status`, failing at once if
    /// it exits. Loading the balancer runs the verifier over it: seconds of an emulated CPU.
    pub fn wait_for(&self, agent: &mut Process) -> anyhow::Result<()> {
        agent.wait_until(
            "its socket answering `lbx status`",
            patience(READY_TIMEOUT),
            || {
                run_bounded(self.command(&["status"]), patience(STATUS_TIMEOUT))
                    .is_ok_and(|out| out.status.success())
            },
        )
    }

    /// `lbx status` and `lbx stats` as they stand, or why they could not be read, headed
    /// with `who`: for the report of a failed test.
    pub fn report(&self, who: &str) -> String {
        let mut text = String::new();
        for args in [["status"], ["stats"]] {
            let shown = match run_bounded(self.command(&args), patience(STATUS_TIMEOUT)) {
                Ok(out) => format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
                Err(e) => format!("{e:#}"),
            };
            text.push_str(&format!(
                "--- {who}: lbx {} at the end of the test ---\n{shown}\n",
                args[0]
            ));
        }
        text
    }
}
