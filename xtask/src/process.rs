//! Running child processes: echo the command line, wait with Ctrl-C left to the child,
//! capture output of quick queries, and a couple of tiny libc calls (std has no wrapper and
//! xtask stays free of the `libc` crate).

use std::{
    ffi::OsStr,
    fmt,
    os::unix::process::ExitStatusExt as _,
    process::{Command, ExitStatus, Output, Stdio},
};

use anyhow::{Context as _, Result, bail};

unsafe extern "C" {
    fn geteuid() -> u32;
    fn signal(signum: i32, handler: usize) -> usize;
}

const SIGINT: i32 = 2;
const SIG_IGN: usize = 1;

/// Whether xtask runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { geteuid() == 0 }
}

/// The error returned when a child was stopped by Ctrl-C: the caller stops everything.
#[derive(Debug)]
pub struct Interrupted;

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// A command line as a user could paste it into a shell (environment overrides first).
pub fn display(cmd: &Command) -> String {
    let mut parts = Vec::new();
    for (key, value) in cmd.get_envs() {
        // Only show variables that matter to a reader; PATH is always rewritten by xtask.
        if let Some(value) = value
            && key != "PATH"
        {
            parts.push(format!("{}={}", key.to_string_lossy(), quote(value)));
        }
    }
    parts.push(quote(cmd.get_program()));
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=+:,@%".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs `cmd` with inherited stdio after printing it, and returns its exit status.
///
/// While the child runs, xtask itself ignores SIGINT: Ctrl-C reaches the child (it is in
/// the same process group), which can clean up (the tests remove their namespaces); xtask
/// then sees the child end and reports [`Interrupted`].
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    println!("$ {}", display(cmd));
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start `{}`", display(cmd)))?;
    // Set after the fork, so the child keeps the default SIGINT disposition.
    // SAFETY: installing SIG_IGN for SIGINT is always valid.
    let previous = unsafe { signal(SIGINT, SIG_IGN) };
    let waited = child.wait();
    // SAFETY: restores the disposition returned by the call above.
    unsafe { signal(SIGINT, previous) };
    let status = waited.with_context(|| format!("waiting for `{}`", display(cmd)))?;
    if status.signal() == Some(SIGINT) {
        return Err(Interrupted.into());
    }
    Ok(status)
}

/// Runs `cmd` like [`status`] and fails unless it exits with 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("`{}` failed ({})", display(cmd), describe(status));
    }
    Ok(())
}

/// Runs a quick query silently and returns its output (whatever its exit status).
pub fn output(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not run `{}`", display(cmd)))
}

/// Runs a quick query silently and returns its stdout; fails with its stderr otherwise.
pub fn stdout(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            display(cmd),
            describe(out.status),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout)
        .with_context(|| format!("`{}`: output is not UTF-8", display(cmd)))
}

/// "exit status 1" or "killed by signal 9".
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => status.to_string(),
    }
}

/// The exit code xtask should end with to forward a child's status (128 + signal if killed).
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// Takes an exclusive lock on `path` (created if missing), waiting and saying so while
/// another xtask holds it: two runs at once must not build or unpack into one place.
/// The lock lasts as long as the returned file.
pub fn lock_file(path: &std::path::Path) -> Result<std::fs::File> {
    let lock =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    if lock.try_lock().is_err() {
        println!("   waiting for another xtask that holds {}", path.display());
        lock.lock()
            .with_context(|| format!("locking {}", path.display()))?;
    }
    Ok(lock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_what_a_shell_would_split() {
        let mut cmd = Command::new("cargo");
        cmd.args(["test", "--test", "*", "--", "a b", "it's"])
            .env("LBX_BIN", "/t/debug/lbx");
        assert_eq!(
            display(&cmd),
            r"LBX_BIN=/t/debug/lbx cargo test --test '*' -- 'a b' 'it'\''s'"
        );
    }
}
