//! The history of a node's configuration: one entry per change the agent applied, with
//! what changed and the whole configuration after it, kept in a file beside the
//! configuration (`<config>.history`), one JSON object a line, the last [`KEEP`] entries.
//!
//! Each change appends its line; when the file holds twice the kept window, it is
//! rewritten atomically with the window alone. A line cut short (a crash while
//! appending) or otherwise unreadable is skipped with a warning, and the next change
//! rewrites the file without it: a damaged history never stops the agent.

pub mod utc;

use std::{
    collections::VecDeque,
    fs,
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError};

/// Entries kept, in the file and in memory.
pub const KEEP: usize = 100;
/// Lines of what changed kept in one entry; the rest are counted in a last line.
pub const MAX_CHANGE_LINES: usize = 200;

/// One change of the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Counts the node's changes: 1, 2, ..., going on across restarts.
    pub revision: u64,
    /// When it was applied, in seconds since 1970 (UTC).
    pub time: u64,
    /// The host name of the node that applied it.
    pub node: String,
    /// What changed, one line each ([`crate::config::diff::describe`]), after a line for
    /// why when it was not an operator's edit ("loaded at start", "rollback to revision 3").
    pub changes: Vec<String>,
    /// The whole configuration after the change, as its TOML file.
    pub config: String,
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("the configuration history is empty: no change was recorded yet")]
    Empty,
    #[error(
        "revision {revision} is no longer kept: the history keeps the last {KEEP} changes, \
         the oldest kept is revision {oldest} (`lbx history -n {KEEP}` lists them)"
    )]
    TooOld { revision: u64, oldest: u64 },
    #[error(
        "revision {revision} is not in the history: it holds revisions {oldest} to {newest} \
         (`lbx history` lists them)"
    )]
    Unknown {
        revision: u64,
        oldest: u64,
        newest: u64,
    },
    #[error("the configuration of revision {revision} in the history is refused: {source}")]
    BadEntry {
        revision: u64,
        #[source]
        source: ConfigError,
    },
    #[error("cannot {action} the history file {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The kept window of entries and the file behind it.
pub struct LocalHistory {
    path: PathBuf,
    entries: VecDeque<Entry>,
    /// Lines in the file now, readable or not.
    lines: usize,
    /// The file holds what the window does not (unreadable lines, a line cut short, more
    /// than the window): the next record rewrites it.
    rewrite: bool,
}

impl LocalHistory {
    /// The history file of the configuration at `config`: `<config>.history`.
    pub fn path_for(config: &Path) -> PathBuf {
        let mut name = config.as_os_str().to_owned();
        name.push(".history");
        PathBuf::from(name)
    }

    /// Reads the history at `path`. A missing file is an empty history; what cannot be
    /// read is left out, and said in the warning returned with it.
    pub fn open(path: PathBuf) -> (LocalHistory, Option<String>) {
        let mut h = LocalHistory {
            path,
            entries: VecDeque::new(),
            lines: 0,
            rewrite: false,
        };
        let bytes = match fs::read(&h.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return (h, None),
            Err(e) => {
                h.rewrite = true;
                let warning = format!(
                    "cannot read the history file {} ({e}): starting a fresh history",
                    h.path.display()
                );
                return (h, Some(warning));
            }
        };
        let mut unreadable = Vec::new();
        for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            h.lines += 1;
            match serde_json::from_slice::<Entry>(line) {
                Ok(e) if h.entries.back().is_none_or(|b| b.revision < e.revision) => {
                    h.entries.push_back(e);
                }
                Ok(e) => unreadable.push(format!(
                    "line {}: revision {} out of order",
                    i + 1,
                    e.revision
                )),
                Err(e) => unreadable.push(format!("line {}: {e}", i + 1)),
            }
        }
        while h.entries.len() > KEEP {
            h.entries.pop_front();
        }
        h.rewrite = !unreadable.is_empty()
            || h.lines > h.entries.len()
            || bytes.last().is_some_and(|b| *b != b'\n');
        let warning = (!unreadable.is_empty()).then(|| {
            let fresh = if h.entries.is_empty() {
                "starting a fresh history".to_owned()
            } else {
                format!("kept the {} readable entries", h.entries.len())
            };
            format!(
                "the history file {} has {} unreadable {} ({}): {fresh}",
                h.path.display(),
                unreadable.len(),
                if unreadable.len() == 1 {
                    "line"
                } else {
                    "lines"
                },
                unreadable.join("; ")
            )
        });
        (h, warning)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The kept entries, oldest first.
    pub fn entries(&self) -> impl DoubleEndedIterator<Item = &Entry> + ExactSizeIterator {
        self.entries.iter()
    }

    pub fn last(&self) -> Option<&Entry> {
        self.entries.back()
    }

    /// The configuration of `revision`, read back from its entry.
    pub fn config_of(&self, revision: u64) -> Result<Config, HistoryError> {
        let (Some(oldest), Some(newest)) = (self.entries.front(), self.entries.back()) else {
            return Err(HistoryError::Empty);
        };
        let (oldest, newest) = (oldest.revision, newest.revision);
        let entry = self.entries.iter().find(|e| e.revision == revision).ok_or(
            if revision < oldest && revision > 0 {
                HistoryError::TooOld { revision, oldest }
            } else {
                HistoryError::Unknown {
                    revision,
                    oldest,
                    newest,
                }
            },
        )?;
        Config::from_toml(&entry.config)
            .map_err(|source| HistoryError::BadEntry { revision, source })
    }

    /// Records a change to `config` as the next revision, and returns it. The entry is in
    /// the window even when the file cannot be written (the error says why).
    pub fn record(
        &mut self,
        mut changes: Vec<String>,
        config: &Config,
        time: u64,
        node: &str,
    ) -> Result<u64, HistoryError> {
        if changes.len() > MAX_CHANGE_LINES {
            let more = changes.len() - (MAX_CHANGE_LINES - 1);
            changes.truncate(MAX_CHANGE_LINES - 1);
            changes.push(format!("... and {more} more changes"));
        }
        let entry = Entry {
            revision: self.last().map_or(1, |e| e.revision + 1),
            time,
            node: node.to_owned(),
            changes,
            config: config.to_toml(),
        };
        let revision = entry.revision;
        let line = line_of(&entry);
        self.entries.push_back(entry);
        if self.entries.len() > KEEP {
            self.entries.pop_front();
        }
        if self.rewrite || self.lines >= 2 * KEEP {
            self.rewrite_file()?;
        } else {
            self.append(&line)?;
        }
        Ok(revision)
    }

    fn append(&mut self, line: &str) -> Result<(), HistoryError> {
        let io = |action| {
            let path = self.path.clone();
            move |source| HistoryError::Io {
                action,
                path,
                source,
            }
        };
        let mut f = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(io("open"))?;
        // One write of the whole line: a crash leaves at most this line cut short, which
        // the next open skips.
        let written = f.write_all(line.as_bytes()).and_then(|()| f.sync_data());
        if let Err(e) = written {
            self.rewrite = true;
            return Err(io("append to")(e));
        }
        self.lines += 1;
        Ok(())
    }

    /// Writes the window alone, atomically: a temporary file renamed over the history.
    fn rewrite_file(&mut self) -> Result<(), HistoryError> {
        let text: String = self.entries.iter().map(line_of).collect();
        let mut tmp = self.path.as_os_str().to_owned();
        tmp.push(format!(".tmp.{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let written = (|| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)
        })();
        if let Err(source) = written {
            let _ = fs::remove_file(&tmp);
            return Err(HistoryError::Io {
                action: "rewrite",
                path: self.path.clone(),
                source,
            });
        }
        self.lines = self.entries.len();
        self.rewrite = false;
        Ok(())
    }
}

fn line_of(e: &Entry) -> String {
    let mut line = serde_json::to_string(e).expect("an entry serializes");
    line.push('\n');
    line
}

/// This node's host name, for the entries it records.
pub fn node() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".to_owned();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Seconds since 1970, now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendConfig, VipId};

    /// A scratch directory of its own for each test.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lbx-history-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir.join("lbx.toml.history")
    }

    /// A configuration told apart by its seed.
    fn config(seed: u32) -> Config {
        let mut c = Config {
            seed,
            ..Config::default()
        };
        let vip: VipId = "10.0.0.1:80/tcp".parse().unwrap();
        c.add_vip(vip).unwrap();
        c.add_backend(vip, BackendConfig::new("10.0.1.1".parse().unwrap()))
            .unwrap();
        c
    }

    fn record(h: &mut LocalHistory, seed: u32) -> u64 {
        h.record(
            vec![format!("seed {seed}")],
            &config(seed),
            1000 + u64::from(seed),
            "node-a",
        )
        .unwrap()
    }

    #[test]
    fn path_is_beside_the_configuration() {
        assert_eq!(
            LocalHistory::path_for(Path::new("/etc/lbx/eth0.toml")),
            Path::new("/etc/lbx/eth0.toml.history")
        );
    }

    #[test]
    fn revisions_continue_across_opens() {
        let path = scratch("continue");
        let (mut h, warning) = LocalHistory::open(path.clone());
        assert_eq!((h.entries().len(), warning), (0, None));
        assert_eq!(record(&mut h, 1), 1);
        assert_eq!(record(&mut h, 2), 2);
        let (mut again, warning) = LocalHistory::open(path.clone());
        assert_eq!(warning, None);
        assert_eq!(
            again.entries().collect::<Vec<_>>(),
            h.entries().collect::<Vec<_>>()
        );
        assert_eq!(record(&mut again, 3), 3);
        let (third, _) = LocalHistory::open(path);
        let last = third.last().unwrap();
        assert_eq!(
            (last.revision, last.time, last.node.as_str()),
            (3, 1003, "node-a")
        );
        assert_eq!(last.changes, ["seed 3"]);
        assert_eq!(third.config_of(2).unwrap(), config(2));
    }

    #[test]
    fn the_window_keeps_the_last_entries_and_the_file_stays_bounded() {
        let path = scratch("trim");
        let (mut h, _) = LocalHistory::open(path.clone());
        let total = 2 * KEEP as u32 + 55;
        for seed in 1..=total {
            record(&mut h, seed);
            let lines = fs::read_to_string(&path).unwrap().lines().count();
            assert!(lines <= 2 * KEEP, "{lines} lines after {seed} records");
        }
        let revisions: Vec<u64> = h.entries().map(|e| e.revision).collect();
        let want: Vec<u64> = (u64::from(total) - KEEP as u64 + 1..=u64::from(total)).collect();
        assert_eq!(revisions, want);
        let (reopened, warning) = LocalHistory::open(path);
        assert_eq!(warning, None);
        assert_eq!(
            reopened.entries().map(|e| e.revision).collect::<Vec<_>>(),
            want
        );
        let oldest = want[0];
        let e = reopened.config_of(oldest - 1).unwrap_err();
        assert!(matches!(e, HistoryError::TooOld { .. }), "{e:?}");
        assert!(
            e.to_string()
                .contains(&format!("oldest kept is revision {oldest}")),
            "{e}"
        );
        for never in [0, u64::from(total) + 1] {
            let e = reopened.config_of(never).unwrap_err().to_string();
            assert!(e.contains(&format!("{oldest} to {total}")), "{never}: {e}");
        }
        assert_eq!(reopened.config_of(oldest).unwrap(), config(oldest as u32));
    }

    /// A line cut short (as by a crash while appending) is skipped with a warning; the
    /// next record rewrites the file without it and goes on from the last revision read.
    #[test]
    fn a_line_cut_short_is_skipped_and_cleaned() {
        let path = scratch("torn");
        let (mut h, _) = LocalHistory::open(path.clone());
        record(&mut h, 1);
        record(&mut h, 2);
        let mut text = fs::read_to_string(&path).unwrap();
        let third = line_of(&Entry {
            revision: 3,
            time: 0,
            node: "n".into(),
            changes: vec![],
            config: String::new(),
        });
        text.push_str(&third[..third.len() / 2]);
        fs::write(&path, &text).unwrap();
        let (mut h, warning) = LocalHistory::open(path.clone());
        let warning = warning.expect("a warning for the line cut short");
        assert!(
            warning.contains("line 3") && warning.contains("kept the 2 readable"),
            "{warning}"
        );
        assert_eq!(record(&mut h, 4), 3);
        let (clean, warning) = LocalHistory::open(path);
        assert_eq!(warning, None, "the rewrite dropped the line cut short");
        assert_eq!(
            clean.entries().map(|e| e.revision).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(clean.config_of(3).unwrap(), config(4));
    }

    #[test]
    fn a_corrupt_file_starts_a_fresh_history() {
        let path = scratch("corrupt");
        fs::write(&path, b"\x00\xffnot json at all\n{\"revision\": \"x\"}\n").unwrap();
        let (mut h, warning) = LocalHistory::open(path.clone());
        let warning = warning.expect("a warning");
        assert!(
            warning.contains("2 unreadable lines") && warning.contains("fresh history"),
            "{warning}"
        );
        assert!(matches!(h.config_of(1), Err(HistoryError::Empty)));
        assert_eq!(record(&mut h, 9), 1);
        let (h, warning) = LocalHistory::open(path);
        assert_eq!(warning, None);
        assert_eq!(h.entries().len(), 1);
        // A directory where the file should be: a warning, and the agent goes on.
        let dir = scratch("is-a-dir");
        fs::create_dir_all(&dir).unwrap();
        let (mut h, warning) = LocalHistory::open(dir.clone());
        assert!(warning.is_some_and(|w| w.contains("fresh history")));
        let e = h.record(vec![], &config(1), 0, "n").unwrap_err();
        assert!(e.to_string().contains(&dir.display().to_string()), "{e}");
        assert_eq!(
            h.last().map(|e| e.revision),
            Some(1),
            "kept in memory all the same"
        );
    }

    #[test]
    fn a_stored_configuration_that_no_longer_validates_is_named() {
        let path = scratch("bad-entry");
        let (mut h, _) = LocalHistory::open(path.clone());
        record(&mut h, 1);
        let text = fs::read_to_string(&path)
            .unwrap()
            .replace("table_size = 65537", "table_size = 65536");
        fs::write(&path, text).unwrap();
        let (h, _) = LocalHistory::open(path);
        let e = h.config_of(1).unwrap_err().to_string();
        assert!(e.contains("revision 1") && e.contains("65536"), "{e}");
    }

    #[test]
    fn long_change_lists_are_cut_with_a_count() {
        let (mut h, _) = LocalHistory::open(scratch("long"));
        let changes: Vec<String> = (0..MAX_CHANGE_LINES + 10)
            .map(|i| format!("change {i}"))
            .collect();
        h.record(changes, &config(1), 0, "n").unwrap();
        let kept = &h.last().unwrap().changes;
        assert_eq!(kept.len(), MAX_CHANGE_LINES);
        assert_eq!(kept.last().unwrap(), "... and 11 more changes");
    }
}
