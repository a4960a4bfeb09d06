//! `lbx completions` and `lbx man`: the scripts generated for each shell are accepted by
//! that shell (`bash -n`, `zsh -n`) and know the commands; the man pages are written, one
//! per command; `cargo xtask install` puts them where those tools look. Host tier only: the
//! VM guests carry no bash, zsh or cargo.

use std::process::Command;

use lbx_tests::Binaries;

#[test]
fn completions_and_man_pages() {
    let lbx = Binaries::locate_lbx().expect("the lbx binary");
    let dir = tempfile_dir();
    for (shell, check) in [("bash", "bash"), ("zsh", "zsh"), ("fish", "")] {
        let out = Command::new(&lbx)
            .args(["completions", shell])
            .output()
            .expect("lbx completions");
        assert!(out.status.success(), "lbx completions {shell}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        for word in ["vip", "backend", "all-ports", "completions"] {
            assert!(text.contains(word), "{shell} completions lack {word}");
        }
        if check.is_empty() {
            continue;
        }
        let file = dir.join(format!("lbx.{shell}"));
        std::fs::write(&file, &out.stdout).expect("write the script");
        let syntax = Command::new(check)
            .arg("-n")
            .arg(&file)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run {check} (cargo xtask bootstrap installs it): {e}")
            });
        assert!(
            syntax.status.success(),
            "{check} -n refuses the completions: {}",
            String::from_utf8_lossy(&syntax.stderr)
        );
    }
    let out = Command::new(&lbx).args(["man"]).output().expect("lbx man");
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "lbx man: {out:?}");
    assert!(page.contains(".TH lbx 1"), "lbx man: {page}");
    assert!(
        page.contains("Exit status"),
        "the man page lists the exit statuses"
    );
    let pages = dir.join("man");
    let out = Command::new(&lbx)
        .args(["man", "--out-dir"])
        .arg(&pages)
        .output()
        .expect("lbx man --out-dir");
    assert!(out.status.success(), "{out:?}");
    for page in ["lbx.1", "lbx-run.1", "lbx-vip-add.1", "lbx-backend-drain.1"] {
        assert!(
            pages.join(page).is_file(),
            "lbx man --out-dir wrote no {page}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "lbx-cli-docs-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}

/// `cargo xtask install --destdir D` puts the binary, the completions and the man pages
/// where their tools look, and the installed binary runs.
#[test]
fn xtask_install_stages_the_binary_completions_and_man_pages() {
    let dest = tempfile_dir().join("stage");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_owned();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(&root)
        .args([
            "xtask",
            "install",
            "--debug",
            "--prefix",
            "/usr",
            "--destdir",
        ])
        .arg(&dest)
        .output()
        .expect("cargo xtask install");
    assert!(
        out.status.success(),
        "cargo xtask install failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let usr = dest.join("usr");
    for file in [
        "bin/lbx",
        "share/bash-completion/completions/lbx",
        "share/zsh/site-functions/_lbx",
        "share/fish/vendor_completions.d/lbx.fish",
        "share/man/man1/lbx.1",
        "share/man/man1/lbx-vip-add.1",
    ] {
        assert!(usr.join(file).is_file(), "not installed: {file}");
    }
    let version = Command::new(usr.join("bin/lbx"))
        .arg("--version")
        .output()
        .expect("the installed lbx runs");
    assert!(
        String::from_utf8_lossy(&version.stdout).starts_with("lbx "),
        "{version:?}"
    );
    let zsh = Command::new("zsh")
        .arg("-n")
        .arg(usr.join("share/zsh/site-functions/_lbx"))
        .status()
        .expect("zsh");
    assert!(zsh.success(), "zsh -n refuses the installed completions");
    let _ = std::fs::remove_dir_all(&dest);
}
