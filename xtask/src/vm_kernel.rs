//! The kernels `vm-test` boots: the pin file (xtask/kernels.toml), fetching each pinned
//! Debian package once with `apt-get download`, checking it against its sha256, and
//! unpacking what a VM needs (vmlinuz, the module closure) into the cache.
//!
//! Cache layout, under `<cache>/vm/<package>_<version>/` ([`crate::bpf_linker::cache_dir`]):
//! - `<package>_<version>_amd64.deb`: the download, checked against the pin;
//! - `vmlinuz`, `release` (the kernel release, e.g. `6.1.0-56-cloud-amd64`);
//! - `modules/<name>.ko` (decompressed) and `modules/order` (load order, one name a line);
//! - `prepared`: written last, holds the sha256 the rest was made from;
//! - `base.cpio`, `base.stamp`: the cached base initramfs ([`crate::vm_initramfs`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{bpf_linker, process, workspace};

/// The pin file, relative to the workspace root.
pub const PIN_FILE: &str = "xtask/kernels.toml";

/// Modules the test network needs; their dependencies come from the kernel's modules.dep.
/// veth and bridge build the network, ipip and ip6_tunnel give backends the kernel's own
/// decapsulation (`tunl0`, `ip6tnl0`).
pub const MODULES: &[&str] = &["veth", "bridge", "ipip", "ip6_tunnel"];

/// One `[[kernel]]` of the pin file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// What `--kernel` takes, e.g. `6.1`.
    pub name: String,
    /// The exact Debian package, e.g. `linux-image-6.1.0-56-cloud-amd64`.
    pub package: String,
    /// The exact Debian version, e.g. `6.1.192-2`.
    pub version: String,
    /// sha256 of the .deb, lower-case hex.
    pub sha256: String,
}

impl Pin {
    /// `6.1 (linux-image-6.1.0-56-cloud-amd64 6.1.192-2)`.
    pub fn describe(&self) -> String {
        format!("{} ({} {})", self.name, self.package, self.version)
    }

    /// The file `apt-get download` writes (`:` in a version becomes `%3a`).
    fn deb_name(&self) -> String {
        format!(
            "{}_{}_amd64.deb",
            self.package,
            self.version.replace(':', "%3a")
        )
    }

    /// The folder of this kernel in the cache.
    pub fn cache_dir(&self) -> Result<PathBuf> {
        Ok(vm_cache_dir()?.join(format!(
            "{}_{}",
            self.package,
            self.version.replace(':', "%3a")
        )))
    }
}

/// `<cache>/vm`.
pub fn vm_cache_dir() -> Result<PathBuf> {
    Ok(bpf_linker::cache_dir()?.join("vm"))
}

/// Reads the pin file of the workspace.
pub fn read_pins() -> Result<Vec<Pin>> {
    let path = workspace::root().join(PIN_FILE);
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_pins(&text).with_context(|| format!("in {}", path.display()))
}

/// Parses the subset of TOML the pin file uses: `[[kernel]]` tables of `key = "string"`.
fn parse_pins(text: &str) -> Result<Vec<Pin>> {
    const KEYS: [&str; 4] = ["name", "package", "version", "sha256"];
    let mut tables: Vec<(usize, BTreeMap<String, String>)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line == "[[kernel]]" {
            tables.push((line_no, BTreeMap::new()));
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            bail!("line {line_no}: expected `[[kernel]]` or `key = \"value\"`, got `{line}`");
        };
        let key = key.trim();
        let value = value.trim();
        let Some(value) = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .filter(|v| !v.contains(['"', '\\']))
        else {
            bail!("line {line_no}: the value of `{key}` must be a plain \"string\"");
        };
        ensure!(
            KEYS.contains(&key),
            "line {line_no}: unknown key `{key}` (a [[kernel]] has {})",
            KEYS.join(", ")
        );
        let Some((_, table)) = tables.last_mut() else {
            bail!("line {line_no}: `{key}` outside a [[kernel]] table");
        };
        ensure!(
            table.insert(key.to_owned(), value.to_owned()).is_none(),
            "line {line_no}: `{key}` given twice in one [[kernel]]"
        );
    }
    let mut pins: Vec<Pin> = Vec::new();
    for (line_no, mut table) in tables {
        let mut take = |key: &str| {
            table
                .remove(key)
                .with_context(|| format!("the [[kernel]] of line {line_no} has no `{key}`"))
        };
        let pin = Pin {
            name: take("name")?,
            package: take("package")?,
            version: take("version")?,
            sha256: take("sha256")?,
        };
        ensure!(
            pin.sha256.len() == 64 && pin.sha256.bytes().all(|b| b.is_ascii_hexdigit()),
            "kernel {}: sha256 must be 64 hex digits",
            pin.name
        );
        ensure!(
            pin.name != "all" && !pins.iter().any(|p| p.name == pin.name),
            "kernel name `{}` is reserved or used twice",
            pin.name
        );
        pins.push(Pin {
            sha256: pin.sha256.to_ascii_lowercase(),
            ..pin
        });
    }
    ensure!(!pins.is_empty(), "no [[kernel]] pinned");
    Ok(pins)
}

/// The pins `--kernel` selects: `all`, or names and package names from the pin file.
pub fn select(pins: &[Pin], wanted: &[String]) -> Result<Vec<Pin>> {
    if wanted.is_empty() || wanted.iter().any(|w| w == "all") {
        return Ok(pins.to_vec());
    }
    let mut chosen: Vec<Pin> = Vec::new();
    for w in wanted {
        let Some(pin) = pins.iter().find(|p| &p.name == w || &p.package == w) else {
            bail!(
                "no kernel `{w}` in {PIN_FILE}; pinned: {} (or `all`)",
                pins.iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        if !chosen.contains(pin) {
            chosen.push(pin.clone());
        }
    }
    Ok(chosen)
}

/// A kernel ready to boot: everything in its cache folder.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub pin: Pin,
    pub dir: PathBuf,
    pub vmlinuz: PathBuf,
    /// The kernel release (`uname -r` in the guest), e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    /// Decompressed modules, in load order (dependencies first).
    pub modules: Vec<(String, PathBuf)>,
}

/// Makes `pin` ready: downloads and checks the package unless cached, then unpacks the
/// kernel and its module closure unless already done. Offline once cached.
pub fn prepare(pin: &Pin) -> Result<Kernel> {
    let dir = pin.cache_dir()?;
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Two xtask runs at once must not unpack into the same folder together.
    let _lock = crate::process::lock_file(&dir.join("lock"))?;

    let deb = dir.join(pin.deb_name());
    if deb.is_file() {
        match sha256(&deb)? {
            sum if sum == pin.sha256 => {
                println!("-- kernel {}: cached in {}", pin.describe(), dir.display());
            }
            sum => {
                println!(
                    "-- kernel {}: the cached .deb has sha256 {sum}, not the pinned {}; \
                     fetching it again",
                    pin.describe(),
                    pin.sha256
                );
                fs::remove_file(&deb).with_context(|| format!("removing {}", deb.display()))?;
                download(pin, &dir, &deb)?;
            }
        }
    } else {
        println!(
            "-- kernel {}: not cached, fetching it with apt-get download",
            pin.describe()
        );
        download(pin, &dir, &deb)?;
    }

    let prepared = dir.join("prepared");
    if fs::read_to_string(&prepared).ok().as_deref() != Some(pin.sha256.as_str()) {
        let _ = fs::remove_file(&prepared);
        unpack(pin, &deb, &dir)?;
        fs::write(&prepared, &pin.sha256)
            .with_context(|| format!("writing {}", prepared.display()))?;
    }
    load(pin, &dir)
}

/// Reads what [`unpack`] left in `dir`.
fn load(pin: &Pin, dir: &Path) -> Result<Kernel> {
    let release = fs::read_to_string(dir.join("release"))
        .context("reading the unpacked kernel's release")?
        .trim()
        .to_owned();
    let order = fs::read_to_string(dir.join("modules/order"))
        .context("reading the unpacked kernel's module order")?;
    let modules = order
        .lines()
        .filter(|l| !l.is_empty())
        .map(|name| {
            (
                name.to_owned(),
                dir.join("modules").join(format!("{name}.ko")),
            )
        })
        .collect();
    Ok(Kernel {
        pin: pin.clone(),
        vmlinuz: dir.join("vmlinuz"),
        dir: dir.to_owned(),
        release,
        modules,
    })
}

/// `sha256sum FILE`, lower-case hex.
pub fn sha256(file: &Path) -> Result<String> {
    let out = process::stdout(Command::new("sha256sum").arg(file))?;
    out.split_whitespace()
        .next()
        .map(str::to_owned)
        .with_context(|| format!("sha256sum printed nothing for {}", file.display()))
}

/// `apt-get download PACKAGE=VERSION` into a fresh folder, checked, then moved to `deb`.
fn download(pin: &Pin, dir: &Path, deb: &Path) -> Result<()> {
    let tmp = dir.join(format!("download.{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let result = download_into(pin, &tmp, deb);
    let _ = fs::remove_dir_all(&tmp);
    result
}

fn download_into(pin: &Pin, tmp: &Path, deb: &Path) -> Result<()> {
    let spec = format!("{}={}", pin.package, pin.version);
    let apt_download = || {
        let mut cmd = Command::new("apt-get");
        cmd.current_dir(tmp)
            .stdin(Stdio::null())
            .env("DEBIAN_FRONTEND", "noninteractive");
        if process::is_root() {
            // Root's apt would hand the download to the `_apt` user, which cannot write
            // into a folder of root's home; it then warns and downloads as root anyway.
            cmd.args(["-o", "APT::Sandbox::User=root"]);
        }
        cmd.args(["-q", "download", &spec]);
        cmd
    };
    if process::run(&mut apt_download()).is_err() {
        // A machine whose package lists were never fetched (or are stale) knows no
        // such version yet: refresh them once, when allowed to.
        if !process::is_root() {
            bail!(
                "`apt-get download {spec}` failed. If the package lists are stale, run \
                 `sudo apt-get update` and try again. Debian's security archive keeps only \
                 the newest kernels: if {spec} is gone (`apt-cache policy {}`), pin a newer \
                 version with its sha256 in {PIN_FILE}",
                pin.package
            );
        }
        println!("   apt-get download failed; refreshing the package lists and retrying");
        let mut update = Command::new("apt-get");
        update
            .args(["-q", "update"])
            .stdin(Stdio::null())
            .env("DEBIAN_FRONTEND", "noninteractive");
        process::run(&mut update)
            .context("`apt-get update` failed: check network access to the Debian mirrors")?;
        process::run(&mut apt_download()).with_context(|| {
            format!(
                "could not download {spec}. Debian's security archive keeps only the newest \
                 kernels: if `apt-cache policy {}` no longer lists {}, pin a version it lists \
                 (package, version and the sha256 of its .deb) in {PIN_FILE}",
                pin.package, pin.version
            )
        })?;
    }
    let fetched = tmp.join(pin.deb_name());
    ensure!(
        fetched.is_file(),
        "apt-get download {spec} did not write {}",
        fetched.display()
    );
    let sum = sha256(&fetched)?;
    ensure!(
        sum == pin.sha256,
        "{} has sha256 {sum}, but {PIN_FILE} pins {} for kernel {}. Refusing to use it: \
         if the pin is what is wrong, put the new hash there on purpose",
        pin.deb_name(),
        pin.sha256,
        pin.name
    );
    fs::rename(&fetched, deb)
        .with_context(|| format!("moving the download to {}", deb.display()))?;
    println!("   {} verified (sha256 {sum})", pin.deb_name());
    Ok(())
}

/// Unpacks the package into a scratch folder and keeps vmlinuz, the release and the
/// module closure of [`MODULES`] (decompressed, in load order).
fn unpack(pin: &Pin, deb: &Path, dir: &Path) -> Result<()> {
    println!("   unpacking {} and its module closure", pin.deb_name());
    let tree = dir.join("tree");
    let _ = fs::remove_dir_all(&tree);
    process::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tree))
        .context("unpacking the kernel package (dpkg-deb comes with dpkg)")?;
    let result = keep_from_tree(&tree, dir);
    let _ = fs::remove_dir_all(&tree);
    result
}

fn keep_from_tree(tree: &Path, dir: &Path) -> Result<()> {
    let modules_root = tree.join("lib/modules");
    let releases: Vec<String> = fs::read_dir(&modules_root)
        .with_context(|| format!("the package has no {}", modules_root.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let [release] = releases.as_slice() else {
        bail!("expected one kernel release in the package, found {releases:?}");
    };
    let vmlinuz = tree.join("boot").join(format!("vmlinuz-{release}"));
    fs::copy(&vmlinuz, dir.join("vmlinuz"))
        .with_context(|| format!("copying {}", vmlinuz.display()))?;

    // The package ships no modules.dep and Debian hosts have no depmod unless kmod is
    // installed: busybox's depmod writes it (it lists each module's dependencies whole).
    process::stdout(
        Command::new("busybox")
            .args(["depmod", "-b"])
            .arg(tree)
            .arg(release),
    )
    .context("running `busybox depmod` on the kernel's modules")?;
    let kdir = modules_root.join(release);
    let deps = fs::read_to_string(kdir.join("modules.dep")).context("reading modules.dep")?;
    let builtin = fs::read_to_string(kdir.join("modules.builtin")).unwrap_or_default();
    let order = closure(&parse_modules_dep(&deps), &builtin_names(&builtin), MODULES)
        .with_context(|| format!("kernel {release}"))?;

    let out = dir.join("modules");
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut names = Vec::new();
    for rel in &order {
        let name = module_name(rel);
        decompress(&kdir.join(rel), &out.join(format!("{name}.ko")))?;
        names.push(name);
    }
    println!("   modules, in load order: {}", names.join(" "));
    fs::write(out.join("order"), names.join("\n") + "\n").context("writing the module order")?;
    fs::write(dir.join("release"), format!("{release}\n")).context("writing the release")?;
    Ok(())
}

/// Writes the plain module `to`, from `from` as shipped (`.ko`, `.ko.xz` or `.ko.gz`).
fn decompress(from: &Path, to: &Path) -> Result<()> {
    let name = from.to_string_lossy();
    let tool = if name.ends_with(".ko") {
        fs::copy(from, to).with_context(|| format!("copying {name}"))?;
        return Ok(());
    } else if name.ends_with(".ko.xz") {
        "xzcat"
    } else if name.ends_with(".ko.gz") {
        "zcat"
    } else {
        bail!("{name}: unsupported module compression (xtask reads .ko, .ko.xz and .ko.gz)");
    };
    let file = File::create(to).with_context(|| format!("creating {}", to.display()))?;
    let status = Command::new("busybox")
        .arg(tool)
        .arg(from)
        .stdout(file)
        .status()
        .with_context(|| format!("running busybox {tool}"))?;
    ensure!(status.success(), "busybox {tool} {name} failed ({status})");
    Ok(())
}

/// modules.dep: each module's path (relative to the release folder) and its dependencies.
fn parse_modules_dep(text: &str) -> BTreeMap<String, Vec<String>> {
    text.lines()
        .filter_map(|line| {
            let (module, deps) = line.split_once(':')?;
            Some((
                module.trim().to_owned(),
                deps.split_whitespace().map(str::to_owned).collect(),
            ))
        })
        .collect()
}

/// The module name of a path: `kernel/net/ipv6/ip6_tunnel.ko.xz` -> `ip6_tunnel`
/// (dashes read as underscores, as the kernel does).
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

fn builtin_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(module_name)
        .collect()
}

/// The paths of `wanted` and everything they depend on, dependencies first. A wanted module
/// built into the kernel needs nothing; one that is neither built in nor shipped is an error.
fn closure(
    deps: &BTreeMap<String, Vec<String>>,
    builtin: &BTreeSet<String>,
    wanted: &[&str],
) -> Result<Vec<String>> {
    let by_name: BTreeMap<String, &String> = deps.keys().map(|p| (module_name(p), p)).collect();
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        path: &str,
        deps: &BTreeMap<String, Vec<String>>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> Result<()> {
        if !seen.insert(path.to_owned()) {
            return Ok(());
        }
        let Some(needs) = deps.get(path) else {
            bail!("modules.dep names {path} but has no line for it");
        };
        for dep in needs {
            visit(dep, deps, seen, order)?;
        }
        order.push(path.to_owned());
        Ok(())
    }
    for want in wanted {
        let name = want.replace('-', "_");
        match by_name.get(&name) {
            Some(path) => visit(path, deps, &mut seen, &mut order)?,
            None if builtin.contains(&name) => {}
            None => bail!("the kernel has no module {want}: neither built in nor shipped"),
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_checked_in_pin_file() {
        let pins = read_pins().expect("xtask/kernels.toml parses");
        let names: Vec<&str> = pins.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["6.1", "6.12"]);
        assert_eq!(pins[0].package, "linux-image-6.1.0-56-cloud-amd64");
        assert_eq!(
            pins[1].deb_name(),
            "linux-image-6.12.117+deb12-cloud-amd64_6.12.117-1~deb12u1_amd64.deb"
        );
    }

    #[test]
    fn pin_file_errors_name_the_line() {
        let bad = [
            ("name = \"x\"\n", "outside a [[kernel]]"),
            ("[[kernel]]\nname = x\n", "plain \"string\""),
            ("[[kernel]]\nflavour = \"cloud\"\n", "unknown key `flavour`"),
            ("[[kernel]]\nname = \"a\"\n", "has no `package`"),
            ("", "no [[kernel]]"),
        ];
        for (text, expected) in bad {
            let err = format!("{:#}", parse_pins(text).unwrap_err());
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn selects_by_name_package_or_all() {
        let pins = read_pins().unwrap();
        assert_eq!(select(&pins, &[]).unwrap().len(), 2);
        assert_eq!(select(&pins, &["all".into()]).unwrap().len(), 2);
        let one = select(&pins, &["linux-image-6.1.0-56-cloud-amd64".into()]).unwrap();
        assert_eq!(one[0].name, "6.1");
        let err = select(&pins, &["5.10".into()]).unwrap_err().to_string();
        assert!(err.contains("6.1, 6.12"), "{err}");
    }

    #[test]
    fn module_closure_puts_dependencies_first() {
        let deps = parse_modules_dep(
            "kernel/net/bridge/bridge.ko.xz: kernel/net/802/stp.ko.xz kernel/net/llc/llc.ko.xz\n\
             kernel/net/802/stp.ko.xz: kernel/net/llc/llc.ko.xz\n\
             kernel/net/llc/llc.ko.xz:\n\
             kernel/drivers/net/veth.ko.xz:\n",
        );
        let builtin = builtin_names("kernel/net/ipv6/ipv6.ko\n");
        let order = closure(&deps, &builtin, &["bridge", "veth", "ipv6"]).unwrap();
        let names: Vec<String> = order.iter().map(|p| module_name(p)).collect();
        assert_eq!(names, ["llc", "stp", "bridge", "veth"]);
        let err = closure(&deps, &builtin, &["ipip"]).unwrap_err().to_string();
        assert!(err.contains("no module ipip"), "{err}");
    }
}
