//! The XDP programs' object: the one built into this binary, or another build of lbx-ebpf
//! read from a file (`lbx run --xdp-object`), checked to hold what lbx loads before
//! anything is attached.

use std::{
    borrow::Cow,
    path::{Path, PathBuf},
};

use aya_obj::ProgramSection;
use lbx_common::programs;

use super::{error::DataPlaneError, pins::BALANCER_MAPS};

/// The XDP programs, built by build.rs from lbx-ebpf.
static BUILTIN: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lbx-xdp"));

const EM_BPF: u16 = 247;

/// A build of lbx-ebpf's programs.
pub struct Object {
    bytes: Cow<'static, [u8]>,
    /// The file it was read from; none for the built-in one.
    path: Option<PathBuf>,
}

impl Object {
    /// The programs this binary was built with.
    pub fn builtin() -> Self {
        Self {
            bytes: Cow::Borrowed(BUILTIN),
            path: None,
        }
    }

    /// Bytes of another build, not checked (`lbx-bench --baseline`'s, a saved build).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self {
            bytes: Cow::Owned(bytes.to_vec()),
            path: None,
        }
    }

    /// Reads the object at `path` and checks that it is a BPF object with the balancer
    /// program and every map the balancer uses: a file that is not refuses here, with its
    /// name, rather than half-way through a start.
    pub fn read(path: &Path) -> Result<Self, DataPlaneError> {
        let bytes = std::fs::read(path).map_err(|error| DataPlaneError::ObjectRead {
            path: path.to_path_buf(),
            error,
        })?;
        check(&bytes).map_err(|problem| DataPlaneError::ObjectInvalid {
            path: path.to_path_buf(),
            problem,
        })?;
        Ok(Self {
            bytes: Cow::Owned(bytes),
            path: Some(path.to_path_buf()),
        })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The file it was read from; none for the built-in one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

/// What keeps `bytes` from being a build of lbx-ebpf's balancer, in words that follow the
/// file's name.
fn check(bytes: &[u8]) -> Result<(), String> {
    if bytes.get(..4) != Some(b"\x7fELF") {
        return Err("is not an ELF file".to_owned());
    }
    // e_ident[EI_DATA]: 1 little-endian, 2 big-endian; e_machine follows at offset 18.
    let little = match bytes.get(5) {
        Some(1) => true,
        Some(2) => false,
        _ => return Err("is not a well-formed ELF file (no byte order)".to_owned()),
    };
    let machine = bytes
        .get(18..20)
        .map(|b| {
            let b = [b[0], b[1]];
            if little {
                u16::from_le_bytes(b)
            } else {
                u16::from_be_bytes(b)
            }
        })
        .ok_or_else(|| "is a truncated ELF file".to_owned())?;
    if machine != EM_BPF {
        return Err(format!(
            "is an ELF file for another machine (e_machine {machine}), not a BPF object"
        ));
    }
    if little != cfg!(target_endian = "little") {
        return Err(format!(
            "is a BPF object of the other byte order: this machine needs {}",
            if cfg!(target_endian = "little") {
                "bpfel"
            } else {
                "bpfeb"
            }
        ));
    }
    let obj = aya_obj::Object::parse(bytes)
        .map_err(|e| format!("does not parse as a BPF object: {e}"))?;
    match obj.programs.get(programs::BALANCER) {
        None => {
            let mut have: Vec<&str> = obj.programs.keys().map(String::as_str).collect();
            have.sort_unstable();
            return Err(format!(
                "has no program {} (it has: {})",
                programs::BALANCER,
                if have.is_empty() {
                    "none".to_owned()
                } else {
                    have.join(", ")
                }
            ));
        }
        Some(p) if !matches!(p.section, ProgramSection::Xdp { .. }) => {
            return Err(format!(
                "has {} but not as an XDP program",
                programs::BALANCER
            ));
        }
        Some(_) => {}
    }
    let missing: Vec<&str> = BALANCER_MAPS
        .iter()
        .copied()
        .filter(|m| !obj.maps.contains_key(*m))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "lacks the balancer's map{} {}",
            if missing.len() == 1 { "" } else { "s" },
            missing.join(", ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `BUILTIN` with every `from` (of the same length) in it replaced by `to`.
    fn renamed(from: &[u8], to: &[u8]) -> Vec<u8> {
        assert_eq!(from.len(), to.len());
        let mut bytes = BUILTIN.to_vec();
        let mut n = 0;
        let mut at = 0;
        while let Some(i) = bytes[at..].windows(from.len()).position(|w| w == from) {
            bytes[at + i..at + i + to.len()].copy_from_slice(to);
            at += i + to.len();
            n += 1;
        }
        assert!(n > 0, "{from:?} is not in the object");
        bytes
    }

    #[test]
    fn the_builtin_object_holds_what_the_balancer_loads() {
        assert_eq!(check(BUILTIN), Ok(()));
    }

    #[test]
    fn files_that_are_not_a_balancer_object_are_told_apart() {
        assert_eq!(
            check(b"not an object\n"),
            Err("is not an ELF file".to_owned())
        );
        assert_eq!(check(b""), Err("is not an ELF file".to_owned()));
        let host = std::fs::read("/proc/self/exe").expect("this test's executable");
        let why = check(&host).unwrap_err();
        assert!(
            why.starts_with("is an ELF file for another machine"),
            "{why}"
        );
        let why = check(&BUILTIN[..64]).unwrap_err();
        assert!(why.starts_with("does not parse as a BPF object"), "{why}");
    }

    #[test]
    fn an_object_without_the_balancer_or_one_of_its_maps_is_refused() {
        let why = check(&renamed(b"lbx_balancer\0", b"lbx_balancex\0")).unwrap_err();
        assert!(
            why.starts_with("has no program lbx_balancer (it has: "),
            "{why}"
        );
        assert!(why.contains("lbx_balancex"), "{why}");
        let why = check(&renamed(b"BACKEND_STATS\0", b"BACKEND_STATZ\0")).unwrap_err();
        assert_eq!(why, "lacks the balancer's map BACKEND_STATS");
    }
}
