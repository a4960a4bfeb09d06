//! Faults `vm-test` can inject on purpose, to show that a broken guest fails the run with a
//! clear report (`vm-test --fault`, LBX_VM_FAULT), and the self-check of the vm tier that
//! relies on them.
//!
//! `verifier` is made on the host: the XDP balancer embedded in each staged binary (`lbx`
//! and the test binaries, which link lbx's library) gets a first instruction that reads
//! past the end of the XDP context, which every kernel's verifier rejects. The others happen
//! in the guest ([`crate::vm_guest`]): `panic` crashes its kernel, `hang` stops the runner
//! forever, `exit` ends it without its final marker.

use anyhow::{Result, bail, ensure};

/// What a deliberately broken guest does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// The balancer program is rejected by the verifier: every test that loads it fails.
    Verifier,
    /// The guest kernel panics once the first test has started.
    Panic,
    /// The runner stops answering once the first test has started.
    Hang,
    /// The runner exits without its final marker once the first test has started.
    Exit,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::Verifier => "verifier",
            Fault::Panic => "panic",
            Fault::Hang => "hang",
            Fault::Exit => "exit",
        }
    }
}

/// The program [`break_programs`] breaks.
pub const BROKEN_PROGRAM: &str = "lbx_balancer";

/// `ldxw r0, [r1 + 4096]`: a 4-byte load from the XDP context (`struct xdp_md`, 24 bytes) at
/// offset 4096. The verifier refuses it ("invalid bpf_context access") on every kernel.
const BAD_INSN: [u8; 8] = [0x61, 0x10, 0x00, 0x10, 0, 0, 0, 0];
/// The first byte of a 16-byte `ld_imm64`, which must not be cut in half.
const LD_IMM64: u8 = 0x18;

const EM_BPF: u16 = 247;
const SHT_SYMTAB: u32 = 2;
const SHT_REL: u32 = 9;
const STT_FUNC: u8 = 2;

/// Replaces the first instruction of [`BROKEN_PROGRAM`] in every BPF object embedded in
/// `binary` (an executable's bytes) with [`BAD_INSN`]; returns how many it changed.
pub fn break_programs(binary: &mut [u8]) -> Result<usize> {
    let mut changed = 0;
    let mut at = 0;
    while let Some(found) = find(&binary[at..], b"\x7fELF\x02\x01\x01") {
        let start = at + found;
        at = start + 1;
        if read_u16(binary, start + 18) != Some(EM_BPF) {
            continue;
        }
        if let Some(insn) = program_start(&binary[start..], BROKEN_PROGRAM)? {
            let insn = start + insn;
            binary[insn..insn + BAD_INSN.len()].copy_from_slice(&BAD_INSN);
            changed += 1;
        }
    }
    Ok(changed)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// One section header of a 64-bit ELF.
struct Section {
    kind: u32,
    offset: usize,
    size: usize,
    link: usize,
    info: usize,
    entsize: usize,
}

/// The offset, from the start of the BPF object `elf`, of the first instruction of the
/// function symbol `name`; `None` if the object has no such function.
fn program_start(elf: &[u8], name: &str) -> Result<Option<usize>> {
    let bad = || anyhow::anyhow!("an embedded BPF object with an unreadable ELF header");
    let shoff = read_u64(elf, 0x28).ok_or_else(bad)? as usize;
    let shentsize = usize::from(read_u16(elf, 0x3a).ok_or_else(bad)?);
    let shnum = usize::from(read_u16(elf, 0x3c).ok_or_else(bad)?);
    ensure!(
        shentsize >= 64,
        "an embedded BPF object with {shentsize}-byte section headers"
    );
    let mut sections = Vec::with_capacity(shnum);
    for i in 0..shnum {
        let h = shoff + i * shentsize;
        let word = |off: usize| read_u64(elf, h + off).map(|v| v as usize).ok_or_else(bad);
        sections.push(Section {
            kind: read_u32(elf, h + 4).ok_or_else(bad)?,
            offset: word(0x18)?,
            size: word(0x20)?,
            link: read_u32(elf, h + 0x28).ok_or_else(bad)? as usize,
            info: read_u32(elf, h + 0x2c).ok_or_else(bad)? as usize,
            entsize: word(0x38)?,
        });
    }
    let Some(symtab) = sections.iter().find(|s| s.kind == SHT_SYMTAB) else {
        return Ok(None);
    };
    let strtab = sections.get(symtab.link).ok_or_else(bad)?;
    let entsize = symtab.entsize.max(24);
    for i in 0..symtab.size / entsize {
        let sym = symtab.offset + i * entsize;
        let name_at = strtab.offset + read_u32(elf, sym).ok_or_else(bad)? as usize;
        let sym_name = elf
            .get(name_at..)
            .and_then(|s| s.split(|&b| b == 0).next())
            .ok_or_else(bad)?;
        let info = *elf.get(sym + 4).ok_or_else(bad)?;
        if sym_name != name.as_bytes() || info & 0xf != STT_FUNC {
            continue;
        }
        let shndx = usize::from(read_u16(elf, sym + 6).ok_or_else(bad)?);
        let value = read_u64(elf, sym + 8).ok_or_else(bad)? as usize;
        let section = sections.get(shndx).ok_or_else(bad)?;
        let insn = section.offset + value;
        ensure!(
            insn + 16 <= elf.len() && value + 8 <= section.size,
            "{name} lies outside its section"
        );
        if elf[insn] == LD_IMM64 {
            bail!("{name} starts with a 16-byte instruction: it cannot be broken this way");
        }
        // A relocated instruction would be rewritten by the loader, or make it fail first.
        for rel in sections
            .iter()
            .filter(|s| s.kind == SHT_REL && s.info == shndx)
        {
            for r in 0..rel.size / rel.entsize.max(16) {
                if read_u64(elf, rel.offset + r * rel.entsize.max(16)) == Some(value as u64) {
                    bail!("{name}'s first instruction is relocated: it cannot be broken this way");
                }
            }
        }
        return Ok(Some(insn));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal BPF object: sections null, `xdp` (two instructions), `.symtab` (null and
    /// one function), `.strtab`.
    fn object(first_insn: [u8; 8]) -> Vec<u8> {
        let mut code = first_insn.to_vec();
        code.extend_from_slice(&[0x95, 0, 0, 0, 0, 0, 0, 0]); // exit
        let strtab = b"\0lbx_balancer\0".to_vec();
        let mut symtab = vec![0u8; 24];
        let mut sym = vec![0u8; 24];
        sym[0..4].copy_from_slice(&1u32.to_le_bytes()); // name
        sym[4] = 0x10 | STT_FUNC; // global function
        sym[6..8].copy_from_slice(&1u16.to_le_bytes()); // section `xdp`
        sym[16..24].copy_from_slice(&16u64.to_le_bytes()); // size
        symtab.extend_from_slice(&sym);

        let mut elf = vec![0u8; 64];
        elf[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
        elf[18..20].copy_from_slice(&EM_BPF.to_le_bytes());
        let code_at = elf.len();
        elf.extend_from_slice(&code);
        let symtab_at = elf.len();
        elf.extend_from_slice(&symtab);
        let strtab_at = elf.len();
        elf.extend_from_slice(&strtab);
        let shoff = elf.len();
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&4u16.to_le_bytes());
        let header = |kind: u32, offset: usize, size: usize, link: u32, entsize: u64| {
            let mut h = vec![0u8; 64];
            h[4..8].copy_from_slice(&kind.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(offset as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            h[0x28..0x2c].copy_from_slice(&link.to_le_bytes());
            h[0x38..0x40].copy_from_slice(&entsize.to_le_bytes());
            h
        };
        elf.extend(header(0, 0, 0, 0, 0));
        elf.extend(header(1, code_at, code.len(), 0, 0));
        elf.extend(header(SHT_SYMTAB, symtab_at, symtab.len(), 3, 24));
        elf.extend(header(3, strtab_at, strtab.len(), 0, 0));
        elf
    }

    #[test]
    fn the_balancer_of_every_embedded_object_is_broken() {
        let mov_r9_2 = [0xb7, 0x09, 0, 0, 2, 0, 0, 0];
        let obj = object(mov_r9_2);
        // Two copies inside an "executable", at unaligned places, among other bytes.
        let mut binary = b"\x7fELF\x02\x01\x01 the host executable's own header".to_vec();
        let copies = [binary.len(), binary.len() + obj.len() + 3];
        binary.extend_from_slice(&obj);
        binary.extend_from_slice(b"...");
        binary.extend_from_slice(&obj);
        let before = binary.clone();
        assert_eq!(break_programs(&mut binary).unwrap(), 2);
        // The object's code starts right after its 64-byte ELF header.
        let broken: Vec<std::ops::Range<usize>> = copies.iter().map(|c| c + 64..c + 72).collect();
        for r in &broken {
            assert_eq!(&binary[r.clone()], &BAD_INSN);
        }
        for i in 0..binary.len() {
            if !broken.iter().any(|r| r.contains(&i)) {
                assert_eq!(binary[i], before[i], "byte {i} changed");
            }
        }
    }

    #[test]
    fn an_ld_imm64_is_not_cut_in_half() {
        let mut obj = object([LD_IMM64, 0x01, 0, 0, 0, 0, 0, 0]);
        let err = break_programs(&mut obj).unwrap_err();
        assert!(err.to_string().contains("16-byte"), "{err}");
    }

    #[test]
    fn a_binary_without_the_program_is_left_alone() {
        let mut obj = object([0xb7, 0x09, 0, 0, 2, 0, 0, 0]);
        // Rename the function.
        let at = find(&obj, b"lbx_balancer").unwrap();
        obj[at] = b'X';
        let before = obj.clone();
        assert_eq!(break_programs(&mut obj).unwrap(), 0);
        assert_eq!(obj, before);
    }
}
