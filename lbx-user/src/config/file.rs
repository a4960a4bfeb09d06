//! The configuration as a TOML file: parsing with the place of a mistake, and saving back
//! atomically after a change.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use super::error::io_error;
use super::{Config, ConfigError};

/// Distinguishes temporary files of concurrent saves from one process.
static SAVE_COUNTER: AtomicU32 = AtomicU32::new(0);

impl Config {
    /// Parses and validates.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::parse(text, None)
    }

    fn parse(text: &str, path: Option<&Path>) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = match e.span() {
                Some(span) => {
                    let (l, c) = line_column(text, span.start);
                    (Some(l), Some(c))
                }
                None => (None, None),
            };
            ConfigError::Parse {
                path: path.map(Path::to_owned),
                line,
                column,
                message: one_line(e.message()),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a Config always serializes: only strings, integers, tables")
    }

    /// Reads, parses and validates `path`. A missing file is [`ConfigError::NotFound`].
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ConfigError::NotFound {
                    path: path.to_owned(),
                });
            }
            Err(e) => return Err(io_error("read", path)(e)),
        };
        Self::parse(&text, Some(path))
    }

    /// Writes the config to `path` atomically: a reader sees the old file or the new one,
    /// never a mix, even across a crash. Creates the parent directory if missing; the file
    /// is mode 0600. Does not validate.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), ConfigError> {
        let path = path.as_ref();
        let name = path.file_name().ok_or_else(|| ConfigError::Io {
            action: "write",
            path: path.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a file name"),
        })?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;

        // Same directory as the target, so the rename cannot cross filesystems.
        let n = SAVE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(
            ".{}.tmp.{}.{n}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let result = write_synced(&tmp, self.to_toml().as_bytes())
            .and_then(|()| fs::rename(&tmp, path).map_err(io_error("rename into place", path)));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result?;
        // Persist the rename itself. Best effort: some filesystems refuse fsync on a
        // directory, and the file is already complete on disk either way.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// Creates `path` (mode 0600), writes `bytes` and fsyncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ConfigError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error("create", path))?;
    // A leftover temp file keeps its old mode; `mode` only applies on creation.
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io_error("set permissions of", path))?;
    f.write_all(bytes).map_err(io_error("write", path))?;
    f.sync_all().map_err(io_error("sync", path))
}

/// toml's messages span lines ("invalid array\nexpected `]`"); keep ours on one.
fn one_line(message: &str) -> String {
    let joined = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if joined.is_empty() {
        "invalid TOML syntax".to_owned()
    } else {
        joined
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fixtures::*;

    #[test]
    fn example_parses() {
        let c = Config::from_toml(EXAMPLE).unwrap();
        assert_eq!(c.seed, 0);
        assert_eq!(c.table_size, 65537);
        assert_eq!(c.mtu, None);
        assert_eq!(c.encap, Encap::default());
        assert_eq!(c.vips.len(), 1);
        let v = &c.vips[0];
        assert_eq!(v.id(), vid("10.0.0.100:80/tcp"));
        assert_eq!(
            v.backends,
            [BackendConfig {
                address: ip("10.0.0.11"),
                weight: 100,
                mac: Some(MacAddr([2, 0, 0, 0, 0, 0x11])),
                drain: false
            }]
        );
    }

    #[test]
    fn round_trip() {
        let mut c = sample();
        c.seed = 0xdead_beef;
        c.table_size = 257;
        c.mtu = Some(9000);
        c.encap.source_v4 = "192.168.0.0/24".parse().unwrap();
        let text = c.to_toml();
        assert_eq!(Config::from_toml(&text).unwrap(), c);
        // Optional fields are left out when they hold their default.
        assert!(text.contains("drain = true"));
        assert_eq!(text.matches("drain").count(), 1);
        assert_eq!(text.matches("mac").count(), 1);
        assert!(text.contains("[[vip.backend]]"));
        let d = Config::default().to_toml();
        assert!(!d.contains("mtu") && !d.contains("vip"), "{d}");
        assert_eq!(Config::from_toml(&d).unwrap(), Config::default());
    }

    #[test]
    fn parse_errors_locate_the_problem() {
        let e = Config::from_toml("seed = 1\nbogus = 2\n").unwrap_err();
        let ConfigError::Parse {
            path: None,
            line: Some(2),
            column: Some(1),
            ref message,
        } = e
        else {
            panic!("{e:?}");
        };
        assert!(message.contains("bogus"), "{message}");
        assert!(
            e.to_string()
                .starts_with("configuration: line 2, column 1: "),
            "{e}"
        );

        for (text, what) in [
            (
                "[[vip]]\naddress = \"10.0.0.1\"\nport = 1\nprotocol = \"sctp\"\n",
                "sctp",
            ),
            (
                "[[vip]]\naddress = \"10.0.0.300\"\nport = 1\nprotocol = \"tcp\"\n",
                "address",
            ),
            ("[encap]\nsource_v4 = \"172.16.0.0/40\"\n", "172.16.0.0/40"),
            (
                "[[vip]]\naddress = \"10.0.0.1\"\nport = 1\nprotocol = \"tcp\"\n[[vip.backend]]\naddress = \"10.0.0.2\"\nmac = \"02:00\"\n",
                "02:00",
            ),
            (
                "[[vip]]\naddress = \"10.0.0.1\"\nport = 70000\nprotocol = \"tcp\"\n",
                "70000",
            ),
            ("table_size = ", "line 1, column 14: invalid TOML syntax"),
            ("a = [", "line 1, column 6: invalid array; expected `]`"),
        ] {
            let e = Config::from_toml(text).unwrap_err();
            assert!(matches!(e, ConfigError::Parse { .. }), "{e:?}");
            assert!(e.to_string().contains(what), "{what}: {e}");
        }
    }

    #[test]
    fn load_and_save() {
        let dir = std::env::temp_dir().join(format!("lbx-config-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("sub/lbx.toml");

        let e = Config::load(&path).unwrap_err();
        assert!(
            matches!(&e, ConfigError::NotFound { path: p } if p == &path),
            "{e:?}"
        );
        assert!(e.to_string().contains("sub/lbx.toml"), "{e}");

        let c = sample();
        c.save(&path).unwrap(); // creates sub/
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(Config::load(&path).unwrap(), c);

        // Overwrite; no temporary files left behind.
        let mut c2 = c.clone();
        c2.seed = 9;
        c2.save(&path).unwrap();
        assert_eq!(Config::load(&path).unwrap(), c2);
        let names: Vec<_> = fs::read_dir(dir.join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["lbx.toml"]);

        // Parse errors carry the path; validation errors come through load too.
        fs::write(&path, "seed = \"x\"\n").unwrap();
        let e = Config::load(&path).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Parse { path: Some(p), line: Some(1), .. } if p == &path),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .starts_with(&format!("{}: line 1, column 8: ", path.display())),
            "{e}"
        );
        fs::write(&path, "table_size = 1000\n").unwrap();
        assert!(matches!(
            Config::load(&path),
            Err(ConfigError::TableSizeNotPrime { size: 1000 })
        ));

        // A directory in the way: an I/O error naming the path, nothing half-written.
        let e = Config::default().save(&dir).unwrap_err();
        assert!(matches!(e, ConfigError::Io { .. }), "{e:?}");
        assert!(e.to_string().contains(&dir.display().to_string()), "{e}");
        let e = Config::load(&dir).unwrap_err();
        assert!(matches!(e, ConfigError::Io { action: "read", .. }), "{e:?}");

        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn line_columns() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("é\nx", 3), (2, 1));
    }
}
