//! `cargo xtask install`: the `lbx` binary, its shell completions and its man pages under a
//! prefix, in the places bash-completion, zsh, fish and man look.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    bootstrap::{self, Need},
    process,
    workspace::Profile,
};

/// Where each file goes, relative to the prefix.
const BIN: &str = "bin/lbx";
const COMPLETIONS: &[(&str, &str)] = &[
    ("bash", "share/bash-completion/completions/lbx"),
    ("zsh", "share/zsh/site-functions/_lbx"),
    ("fish", "share/fish/vendor_completions.d/lbx.fish"),
];
const MAN: &str = "share/man/man1";

pub struct Options {
    pub prefix: PathBuf,
    /// Staging root prepended to every path (for packaging); the prefix stays as given.
    pub destdir: Option<PathBuf>,
    pub debug: bool,
}

pub fn run(opts: &Options) -> Result<()> {
    if !opts.prefix.is_absolute() {
        bail!(
            "--prefix {} must be an absolute path",
            opts.prefix.display()
        );
    }
    let ws = bootstrap::run(Need::Build)?;
    let profile = if opts.debug {
        Profile::Debug
    } else {
        Profile::Release
    };
    let mut cargo = ws.cargo(["build", "-p", "lbx-user", "--bin", "lbx"]);
    cargo.args(profile.flags());
    process::run(&mut cargo)?;
    let built = ws.binary(profile, "lbx")?;
    let root = match &opts.destdir {
        Some(d) => d.join(opts.prefix.strip_prefix("/").unwrap_or(&opts.prefix)),
        None => opts.prefix.clone(),
    };

    let bin = root.join(BIN);
    create_parent(&bin)?;
    // Copy beside, then rename: a running lbx keeps its old binary intact.
    let staged = bin.with_extension("new");
    fs::copy(&built, &staged).with_context(|| format!("cannot write {}", staged.display()))?;
    fs::set_permissions(&staged, fs::Permissions::from_mode(0o755))?;
    fs::rename(&staged, &bin).with_context(|| format!("cannot install {}", bin.display()))?;
    println!("installed {}", bin.display());

    for (shell, rel) in COMPLETIONS {
        let out = process::output(Command::new(&built).args(["completions", shell]))?;
        if !out.status.success() {
            bail!(
                "`lbx completions {shell}` failed: {}",
                process::describe(out.status)
            );
        }
        let path = root.join(rel);
        create_parent(&path)?;
        fs::write(&path, &out.stdout)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("installed {}", path.display());
    }

    let man = root.join(MAN);
    process::run(Command::new(&built).arg("man").arg("--out-dir").arg(&man))?;
    println!("installed the man pages under {}", man.display());
    Ok(())
}

fn create_parent(path: &Path) -> Result<()> {
    let dir = path.parent().expect("an installed file has a folder");
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}
