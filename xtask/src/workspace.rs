//! The workspace xtask drives: where it is, where cargo puts binaries, and how to start a
//! cargo command with the bootstrapped tools on PATH.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::process;

/// Cargo profiles xtask builds with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Debug,
    Release,
}

impl Profile {
    /// The folder under the target directory (`debug` or `release`).
    pub fn dir(self) -> &'static str {
        match self {
            Profile::Debug => "debug",
            Profile::Release => "release",
        }
    }

    /// The cargo flags selecting this profile.
    pub fn flags(self) -> &'static [&'static str] {
        match self {
            Profile::Debug => &[],
            Profile::Release => &["--release"],
        }
    }
}

/// The workspace after bootstrap: every child cargo runs in `root` with `path` as PATH.
pub struct Workspace {
    pub root: PathBuf,
    /// PATH for children, with the cached bpf-linker's folder first.
    path: OsString,
}

impl Workspace {
    /// `tool_dirs` are put first on PATH for every child process.
    pub fn new(tool_dirs: &[PathBuf]) -> Result<Self> {
        let root = root();
        let mut dirs: Vec<PathBuf> = tool_dirs.to_vec();
        if let Some(path) = env::var_os("PATH") {
            dirs.extend(env::split_paths(&path).filter(|d| !tool_dirs.contains(d)));
        }
        let path = env::join_paths(dirs).context("a folder on PATH contains ':'")?;
        Ok(Self { root, path })
    }

    /// A command run in the workspace root with the bootstrapped PATH.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(&self.root).env("PATH", &self.path);
        cmd
    }

    /// `cargo <args>` in the workspace root with the bootstrapped PATH.
    pub fn cargo<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = self.command("cargo");
        cmd.args(args);
        cmd
    }

    /// Cargo's target directory (honours CARGO_TARGET_DIR and `build.target-dir`).
    pub fn target_dir(&self) -> Result<PathBuf> {
        let json = process::stdout(&mut self.cargo([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ]))
        .context("could not ask cargo for the target directory")?;
        match json_string_field(&json, "target_directory") {
            Some(dir) => Ok(PathBuf::from(dir)),
            None => bail!("`cargo metadata` printed no target_directory"),
        }
    }

    /// The path of a binary built with `profile`, checked to exist.
    pub fn binary(&self, profile: Profile, name: &str) -> Result<PathBuf> {
        let path = self.target_dir()?.join(profile.dir()).join(name);
        if !path.is_file() {
            bail!(
                "the build did not produce {} (is there still a `{name}` binary target?)",
                path.display()
            );
        }
        Ok(path)
    }
}

/// The workspace root: xtask's own manifest is in `<root>/xtask`.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in a folder of the workspace")
        .to_path_buf()
}

/// The value of the first `"key":"string"` in a JSON text (enough for `cargo metadata`,
/// without a JSON dependency).
pub fn json_string_field(json: &str, key: &str) -> Option<String> {
    let pattern = format!("\"{key}\":\"");
    let start = json.find(&pattern)? + pattern.len();
    let mut out = String::new();
    let mut chars = json[start..].chars();
    loop {
        match chars.next()? {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                c => out.push(c),
            },
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_target_directory_in_cargo_metadata() {
        let json = r#"{"packages":[],"target_directory":"/w/ta\"r\\get","version":1}"#;
        assert_eq!(
            json_string_field(json, "target_directory").as_deref(),
            Some(r#"/w/ta"r\get"#)
        );
        assert_eq!(json_string_field(json, "workspace_root"), None);
    }
}
