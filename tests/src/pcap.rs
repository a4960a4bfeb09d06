//! Writes frames to a pcap file (Ethernet link type) that Wireshark and tcpdump open: a
//! failing packet test saves its input, expected and actual frames there.

use std::{
    fs::File,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};
use pcap_file::pcap::{PcapPacket, PcapWriter};

/// Where the packet tests write their pcap files: `<target>/lbx-packets/`.
pub fn dump_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("the tests crate is in the workspace");
            workspace.join("target")
        });
    target.join("lbx-packets")
}

/// A file name from a description: letters, digits and '-' only.
pub fn file_name(description: &str) -> String {
    let mut name: String = description
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    while name.contains("--") {
        name = name.replace("--", "-");
    }
    name.trim_matches('-').chars().take(100).collect()
}

/// Writes `frames` in order, one second apart (so Wireshark's time column numbers them),
/// to `dump_dir()/<name>.pcap`; returns the path.
pub fn write(name: &str, frames: &[&[u8]]) -> Result<PathBuf> {
    let dir = dump_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let path = dir.join(format!("{}.pcap", file_name(name)));
    let file = File::create(&path).with_context(|| format!("create {}", path.display()))?;
    let mut w = PcapWriter::new(file).context("write the pcap header")?;
    for (i, f) in frames.iter().enumerate() {
        let len = u32::try_from(f.len()).context("frame too long for pcap")?;
        w.write_packet(&PcapPacket::new(Duration::from_secs(i as u64 + 1), len, f))
            .with_context(|| format!("write to {}", path.display()))?;
    }
    Ok(path)
}
