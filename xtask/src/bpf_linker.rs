//! bpf-linker, built from crates.io against the nightly toolchain's own libLLVM and cached
//! outside the source tree, so no system LLVM and no download of binaries is needed.
//!
//! Layout under the cache folder ([`cache_dir`]):
//! - `bpf-linker/bin/bpf-linker`: the binary (`cargo install --root <cache>/bpf-linker`);
//! - `bpf-linker/lbx-llvm.stamp`: the LLVM it was built against;
//! - `llvm-<major>/lib/libLLVM.so{,.<suffix>}`: symlinks to the nightly's libLLVM (the
//!   `LLVM_PREFIX` of the build; the binary keeps it as its rpath).

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::process;

/// The bpf-linker release xtask installs.
pub const VERSION: &str = "0.13.0";

const STAMP: &str = "lbx-llvm.stamp";

/// The cache folder of lbx: `$LBX_CACHE_DIR`, else `$XDG_CACHE_HOME/lbx`, else
/// `$HOME/.cache/lbx`. Keep in step with `cached_bpf_linker_dir` in lbx-user/build.rs,
/// which looks for the linker in `<this>/bpf-linker/bin`.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = env::var_os("LBX_CACHE_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let base = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .context("neither LBX_CACHE_DIR, XDG_CACHE_HOME nor HOME is set: set LBX_CACHE_DIR")?;
    Ok(base.join("lbx"))
}

/// The LLVM inside the nightly toolchain.
struct NightlyLlvm {
    /// Full version, e.g. `22.1.4`.
    version: String,
    major: u32,
    /// `<sysroot>/lib/libLLVM.so.<suffix>`.
    library: PathBuf,
    /// The file name of `library` (its SONAME), e.g. `libLLVM.so.22.1-rust-1.97.0-nightly`.
    soname: String,
}

fn nightly_llvm() -> Result<NightlyLlvm> {
    let verbose = process::stdout(Command::new("rustc").args(["+nightly", "-vV"]))
        .context("could not run the nightly rustc")?;
    let version = verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .map(|v| v.trim().to_string())
        .context("`rustc +nightly -vV` printed no \"LLVM version:\" line")?;
    let major = llvm_major(&version)
        .with_context(|| format!("cannot read the LLVM major version from {version:?}"))?;
    let sysroot = process::stdout(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("could not ask the nightly rustc for its sysroot")?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let mut found: Vec<PathBuf> = fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .collect();
    found.sort();
    let Some(library) = found.pop() else {
        bail!(
            "the nightly toolchain has no lib/libLLVM.so.* in {}: bpf-linker cannot be built \
             against it (reinstall it: rustup toolchain install nightly --force)",
            lib.display()
        );
    };
    let soname = library
        .file_name()
        .and_then(|n| n.to_str())
        .expect("filtered on a UTF-8 name")
        .to_string();
    Ok(NightlyLlvm {
        version,
        major,
        library,
        soname,
    })
}

fn llvm_major(version: &str) -> Option<u32> {
    version.split('.').next()?.trim().parse().ok()
}

/// Makes sure a bpf-linker matching the nightly's LLVM is in the cache, building it when
/// needed, and returns the folder holding it (to put first on PATH).
pub fn ensure() -> Result<PathBuf> {
    let cache = cache_dir()?;
    let root = cache.join("bpf-linker");
    let bin_dir = root.join("bin");
    let binary = bin_dir.join("bpf-linker");
    let llvm = nightly_llvm()?;

    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    // Two xtask runs at once must not both build (or one use a half-installed linker).
    let _lock = crate::process::lock_file(&cache.join("bpf-linker.lock"))?;

    let problem = match check(&root, &binary, &llvm) {
        Ok(()) => {
            println!(
                "-- bpf-linker {VERSION} for LLVM {}: cached in {}",
                llvm.major,
                bin_dir.display()
            );
            return Ok(bin_dir);
        }
        Err(problem) => problem,
    };
    println!(
        "-- bpf-linker {VERSION} for LLVM {}: {problem}; building it (about a minute)",
        llvm.major
    );
    build(&cache, &root, &llvm)?;
    check(&root, &binary, &llvm).map_err(|p| anyhow::anyhow!("bpf-linker was built but {p}"))?;
    Ok(bin_dir)
}

/// Why the cached linker cannot be used, if it cannot.
fn check(root: &Path, binary: &Path, llvm: &NightlyLlvm) -> Result<(), String> {
    if !binary.is_file() {
        return Err(format!("not in {}", root.display()));
    }
    let stamp_path = root.join(STAMP);
    let recorded = match fs::read_to_string(&stamp_path) {
        Ok(stamp) => stamp_major(&stamp),
        // A linker installed by hand with the same recipe but no stamp: cargo install's
        // own record tells which `llvm-NN` feature it was built with.
        Err(_) => fs::read_to_string(root.join(".crates2.json"))
            .ok()
            .and_then(|json| installed_llvm_feature(&json)),
    };
    match recorded {
        None => return Err("its LLVM version is not recorded".into()),
        Some(major) if major != llvm.major => {
            return Err(format!(
                "it was built for LLVM {major}, the nightly has LLVM {}",
                llvm.version
            ));
        }
        Some(_) => {}
    }
    // It loads libLLVM through the symlinks: a nightly update can leave them dangling.
    let version = process::output(Command::new(binary).arg("--version"))
        .map_err(|e| format!("it does not run: {e:#}"))?;
    if !version.status.success() {
        return Err(format!(
            "it does not run ({}; libLLVM moved?): {}",
            process::describe(version.status),
            String::from_utf8_lossy(&version.stderr).trim()
        ));
    }
    let printed = String::from_utf8_lossy(&version.stdout);
    if printed.trim() != format!("bpf-linker {VERSION}") {
        return Err(format!("it is {:?}, not {VERSION}", printed.trim()));
    }
    if !stamp_path.exists() {
        // Adopt it, so the next check reads the stamp.
        let _ = fs::write(
            &stamp_path,
            stamp(llvm, "adopted: found installed without a stamp"),
        );
    }
    Ok(())
}

fn stamp(llvm: &NightlyLlvm, note: &str) -> String {
    format!(
        "# Written by `cargo xtask`: the LLVM this bpf-linker was built against ({note}).\n\
         llvm-major = {}\nllvm-version = {}\nlibllvm = {}\nbpf-linker = {VERSION}\n",
        llvm.major, llvm.version, llvm.soname
    )
}

fn stamp_major(stamp: &str) -> Option<u32> {
    stamp.lines().find_map(|l| {
        let (key, value) = l.split_once('=')?;
        if key.trim() == "llvm-major" {
            value.trim().parse().ok()
        } else {
            None
        }
    })
}

/// The NN of an `llvm-NN` feature of bpf-linker in cargo install's `.crates2.json`.
fn installed_llvm_feature(json: &str) -> Option<u32> {
    let entry = &json[json.find(&format!("\"bpf-linker {VERSION} "))?..];
    let features = &entry[entry.find("\"features\":[")?..];
    let features = &features[..features.find(']')?];
    let start = features.find("\"llvm-")? + "\"llvm-".len();
    let digits: String = features[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Builds bpf-linker into `root` against the nightly's libLLVM.
fn build(cache: &Path, root: &Path, llvm: &NightlyLlvm) -> Result<()> {
    let prefix = cache.join(format!("llvm-{}", llvm.major));
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for name in ["libLLVM.so", llvm.soname.as_str()] {
        let link = lib.join(name);
        if link.symlink_metadata().is_ok() {
            fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
        }
        std::os::unix::fs::symlink(&llvm.library, &link)
            .with_context(|| format!("linking {} to {}", link.display(), llvm.library.display()))?;
    }
    let stamp_path = root.join(STAMP);
    let _ = fs::remove_file(&stamp_path);

    let mut install = Command::new("cargo");
    install
        .env("LLVM_PREFIX", &prefix)
        .args(["+stable", "install", "bpf-linker", "--version", VERSION])
        .args(["--locked", "--force", "--no-default-features", "--features"])
        .arg(format!("llvm-{}", llvm.major))
        .arg("--root")
        .arg(root);
    process::run(&mut install).with_context(|| {
        format!(
            "could not build bpf-linker {VERSION} against the nightly's LLVM {} \
             (it needs network access to crates.io and a stable toolchain; \
             `rustup toolchain install stable` if it is missing)",
            llvm.version
        )
    })?;
    fs::write(&stamp_path, stamp(llvm, "built"))
        .with_context(|| format!("writing {}", stamp_path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_llvm_versions() {
        assert_eq!(llvm_major("22.1.4"), Some(22));
        assert_eq!(llvm_major("x"), None);
        assert_eq!(
            stamp_major("# c\nllvm-major = 22\nllvm-version = 22.1.4\n"),
            Some(22)
        );
        assert_eq!(stamp_major("llvm-version = 22.1.4\n"), None);
    }

    #[test]
    fn reads_the_llvm_feature_cargo_install_recorded() {
        let json = r#"{"installs":{"bpf-linker 0.13.0 (registry+https://github.com/rust-lang/crates.io-index)":{"version_req":"=0.13.0","bins":["bpf-linker"],"features":["llvm-22"],"all_features":false}}}"#;
        assert_eq!(installed_llvm_feature(json), Some(22));
        assert_eq!(installed_llvm_feature(&json.replace("llvm-22", "")), None);
        assert_eq!(
            installed_llvm_feature(&json.replace("0.13.0", "0.9.0")),
            None
        );
    }
}
