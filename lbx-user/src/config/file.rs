//! The configuration as a TOML file: parsing with the place of a mistake, and saving back
//! atomically after a change. A node's own file may also hold its `[cluster]` table, which
//! is the node's alone: it is split off before the configuration is parsed, never part of
//! a shared document, and written back as it was.

use std::fs;
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use super::error::io_error;
use super::{Config, ConfigError, VipConfig};

/// Distinguishes temporary files of concurrent saves from one process.
static SAVE_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The table of a node's own file that holds its cluster settings.
pub const LOCAL_TABLE: &str = "cluster";

/// What a node's own file holds besides the configuration: its `[cluster]` table. This
/// area only keeps it apart and writes it back; the cluster area reads what it says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Local {
    /// The table, and its text as the file has it (comments and all), to save back.
    cluster: Option<(toml::Table, String)>,
}

impl Local {
    /// The `[cluster]` table, if the file has one.
    pub fn cluster(&self) -> Option<&toml::Table> {
        self.cluster.as_ref().map(|(t, _)| t)
    }

    /// The local part of the file at `path`, the configuration left unread (and unchecked).
    /// A missing file has none.
    pub fn read(path: impl AsRef<Path>) -> Result<Local, ConfigError> {
        let path = path.as_ref();
        match read(path) {
            Ok(text) => split(&text)
                .map(|(_, local)| local)
                .map_err(|(span, m)| parse_error(&text, Some(path), span, &m)),
            Err(ConfigError::NotFound { .. }) => Ok(Local::default()),
            Err(e) => Err(e),
        }
    }
}

impl Config {
    /// Parses and validates a shared document: one with a `[cluster]` table is refused, as
    /// that table is a node's own.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::parse(text, None).map_err(|e| {
            let local =
                toml::from_str::<toml::Table>(text).is_ok_and(|t| t.contains_key(LOCAL_TABLE));
            if local { ConfigError::LocalInShared } else { e }
        })
    }

    fn parse(text: &str, path: Option<&Path>) -> Result<Config, ConfigError> {
        let config: Config =
            toml::from_str(text).map_err(|e| parse_error(text, path, e.span(), e.message()))?;
        config.validate()?;
        Ok(config)
    }

    /// The configuration as TOML. VIPs without health checks or adaptive weights and all
    /// backends, most of a large file, are written here line by line (their fields are
    /// addresses, numbers and flags, nothing to escape); the rest by the `toml` crate, a
    /// VIP at a time, so each VIP's own tables come before its backends. Serializing
    /// 1,024 VIPs of 16 backends through `toml` alone took 60 ms.
    pub fn to_toml(&self) -> String {
        use std::fmt::Write as _;
        let top = Config {
            vips: Vec::new(),
            ..self.clone()
        };
        let mut out = ser(&top);
        for vip in &self.vips {
            out.push('\n');
            if vip.health.is_none() && vip.adaptive.is_none() {
                let port = match vip.port {
                    super::ALL_PORTS => "\"*\"".to_owned(),
                    p => p.to_string(),
                };
                let _ = write!(
                    out,
                    "[[vip]]\naddress = \"{}\"\nport = {port}\nprotocol = \"{}\"\n",
                    vip.address, vip.protocol
                );
                if let Some(size) = vip.table_size {
                    let _ = writeln!(out, "table_size = {size}");
                }
            } else {
                let header = OneVip {
                    vip: [VipConfig {
                        backends: Vec::new(),
                        ..vip.clone()
                    }],
                };
                out.push_str(&ser(&header));
            }
            for b in &vip.backends {
                let _ = write!(
                    out,
                    "\n[[vip.backend]]\naddress = \"{}\"\nweight = {}\n",
                    b.address, b.weight
                );
                if let Some(mac) = b.mac {
                    let _ = writeln!(out, "mac = \"{mac}\"");
                }
                if b.drain {
                    out.push_str("drain = true\n");
                }
            }
        }
        out
    }

    /// Reads, parses and validates a node's own file at `path`, with its local part. A
    /// missing file is [`ConfigError::NotFound`].
    pub fn load(path: impl AsRef<Path>) -> Result<(Config, Local), ConfigError> {
        let path = path.as_ref();
        let text = read(path)?;
        let (shared, local) =
            split(&text).map_err(|(span, m)| parse_error(&text, Some(path), span, &m))?;
        Ok((Self::parse(&shared, Some(path))?, local))
    }

    /// Writes the config to `path` atomically: a reader sees the old file or the new one,
    /// never a mix, even across a crash. Creates the parent directory if missing; the file
    /// is mode 0600. The file's local part, `local`, is written after the configuration as it
    /// was read. Does not validate.
    pub fn save(&self, path: impl AsRef<Path>, local: &Local) -> Result<(), ConfigError> {
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
        let mut text = self.to_toml();
        if let Some((_, table)) = &local.cluster {
            text.push('\n');
            text.push_str(table);
        }
        let result = write_synced(&tmp, text.as_bytes())
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

fn ser<T: serde::Serialize>(value: &T) -> String {
    toml::to_string(value).expect("a Config always serializes: only strings, integers, tables")
}

/// One VIP without its backends, as `[[vip]]` with its tables under `vip.`.
#[derive(serde::Serialize)]
struct OneVip {
    vip: [VipConfig; 1],
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

fn read(path: &Path) -> Result<String, ConfigError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ConfigError::NotFound {
            path: path.to_owned(),
        }),
        Err(e) => Err(io_error("read", path)(e)),
    }
}

fn parse_error(
    text: &str,
    path: Option<&Path>,
    span: Option<Range<usize>>,
    message: &str,
) -> ConfigError {
    let (line, column) = match span {
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
        message: one_line(message),
    }
}

/// A parse error's message and the place it is about, if known.
type Located = (Option<Range<usize>>, String);

/// Splits a node's file into the configuration's text, where the `[cluster]` table's
/// characters are blanked (its lines kept, so a mistake elsewhere keeps its line and
/// column), and the local part. The table may be written `[cluster]` or as an inline
/// table; its keys hold values, not tables. An error has the place of the problem.
fn split(text: &str) -> Result<(String, Local), Located> {
    let doc = toml_edit::ImDocument::parse(text).map_err(|e| (e.span(), e.message().to_owned()))?;
    let Some((key, item)) = doc.as_table().get_key_value(LOCAL_TABLE) else {
        return Ok((text.to_owned(), Local::default()));
    };
    let form = || {
        (
            key.span(),
            format!("{LOCAL_TABLE}: write the node's cluster settings as a [{LOCAL_TABLE}] table"),
        )
    };
    let (start, end, inline) = match item {
        toml_edit::Item::Table(t) if !t.is_dotted() => {
            let header = t.span().ok_or_else(form)?;
            let mut end = header.end;
            for (k, v) in t.iter() {
                let span = match v {
                    toml_edit::Item::Value(v) => v.span(),
                    _ => None,
                };
                let span = span.ok_or_else(|| {
                    let at = t.key(k).and_then(toml_edit::Key::span);
                    (
                        at,
                        format!("[{LOCAL_TABLE}] {k}: a setting is a value, not a table"),
                    )
                })?;
                end = end.max(span.end);
            }
            (header.start, end, false)
        }
        toml_edit::Item::Value(v @ toml_edit::Value::InlineTable(_)) => {
            let (Some(k), Some(v)) = (key.span(), v.span()) else {
                return Err(form());
            };
            (k.start, v.end, true)
        }
        _ => return Err(form()),
    };
    // Whatever follows on the table's last line is a comment.
    let end = text[end..].find('\n').map_or(text.len(), |n| end + n);
    let raw = &text[start..end];
    let table = toml::from_str::<toml::Table>(raw)
        .ok()
        .and_then(|mut t| match t.remove(LOCAL_TABLE) {
            Some(toml::Value::Table(t)) => Some(t),
            _ => None,
        })
        .ok_or_else(form)?;
    let kept = if inline {
        // Saved after the configuration's tables, an inline table would join the last one.
        let mut wrap = toml::Table::new();
        wrap.insert(LOCAL_TABLE.to_owned(), toml::Value::Table(table.clone()));
        ser(&wrap)
    } else {
        format!("{raw}\n")
    };
    let blank: String = raw
        .chars()
        .map(|c| if c == '\n' { '\n' } else { ' ' })
        .collect();
    let shared = format!("{}{blank}{}", &text[..start], &text[end..]);
    Ok((
        shared,
        Local {
            cluster: Some((table, kept)),
        },
    ))
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

    /// Every field a VIP or backend may have, at a size where the backends are written
    /// line by line: the text parses back to the same configuration, and to what the
    /// `toml` crate alone writes.
    #[test]
    fn a_large_configuration_round_trips() {
        let mut c = sample();
        c.icmp_echo = false;
        for i in 0..40u32 {
            let address = if i % 2 == 0 {
                format!("192.0.2.{}", i + 1)
            } else {
                format!("[2001:db8::{i:x}]")
            };
            let id = vid(&format!("{address}:{}/udp", 1000 + i));
            c.add_vip(id).unwrap();
            if i % 3 == 0 {
                c.set_vip_table_size(id, Some(1021)).unwrap();
            }
            if i % 5 == 0 {
                c.vips.last_mut().unwrap().health = Some(HealthCheck::default());
            }
            for b in 0..20u32 {
                let mut backend = BackendConfig::new(if i % 2 == 0 {
                    ip(&format!("10.2.{i}.{}", b + 1))
                } else {
                    ip(&format!("fd00::{i:x}:{:x}", b + 1))
                });
                backend.weight = 1 + b * 97;
                backend.drain = b % 7 == 0;
                backend.mac = (b % 2 == 0).then_some(MacAddr([2, 0, 0, i as u8, b as u8, 9]));
                c.add_backend(id, backend).unwrap();
            }
        }
        let all = vid("192.0.2.200:*/tcp");
        c.add_vip(all).unwrap();
        c.add_backend(all, BackendConfig::new(ip("10.3.0.1")))
            .unwrap();
        let text = c.to_toml();
        assert!(text.contains("port = \"*\""), "{text}");
        assert_eq!(Config::from_toml(&text).unwrap(), c, "{text}");
        let by_toml = toml::to_string(&c).unwrap();
        assert_eq!(Config::from_toml(&by_toml).unwrap(), c);
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
        c.save(&path, &Local::default()).unwrap(); // creates sub/
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(Config::load(&path).unwrap(), (c.clone(), Local::default()));

        // Overwrite; no temporary files left behind.
        let mut c2 = c.clone();
        c2.seed = 9;
        c2.save(&path, &Local::default()).unwrap();
        assert_eq!(Config::load(&path).unwrap().0, c2);
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
        let e = Config::default().save(&dir, &Local::default()).unwrap_err();
        assert!(matches!(e, ConfigError::Io { .. }), "{e:?}");
        assert!(e.to_string().contains(&dir.display().to_string()), "{e}");
        let e = Config::load(&dir).unwrap_err();
        assert!(matches!(e, ConfigError::Io { action: "read", .. }), "{e:?}");

        fs::remove_dir_all(&dir).unwrap();
    }

    /// A node's file with its `[cluster]` table between the configuration's tables.
    const WITH_CLUSTER: &str = "seed = 7\n\n[cluster]  # this node's own\nendpoints = \"etcd://10.0.0.1:2379\"\nnode = \"lb-1\"  # unique\n# the rest by default\n\n[[vip]]\naddress = \"10.0.0.100\"\nport = 80\nprotocol = \"tcp\"\n";

    #[test]
    fn the_cluster_table_is_kept_apart_and_saved_back() {
        let dir = std::env::temp_dir().join(format!("lbx-local-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("lbx.toml");
        fs::create_dir_all(&dir).unwrap();
        fs::write(&path, WITH_CLUSTER).unwrap();

        let (c, local) = Config::load(&path).unwrap();
        assert_eq!(c.seed, 7);
        assert_eq!(c.vips.len(), 1);
        let table = local.cluster().unwrap();
        assert_eq!(table["endpoints"].as_str(), Some("etcd://10.0.0.1:2379"));
        assert_eq!(table["node"].as_str(), Some("lb-1"));
        assert_eq!(table.len(), 2);
        assert_eq!(Local::read(&path).unwrap(), local);
        // The shared document never has it.
        assert!(!c.to_toml().contains("cluster"), "{}", c.to_toml());

        // A change saved keeps the table, comments and all.
        let mut c2 = c.clone();
        c2.seed = 9;
        c2.save(&path, &local).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("[cluster]  # this node's own\nendpoints = \"etcd://10.0.0.1:2379\"\nnode = \"lb-1\"  # unique\n"),
            "{text}"
        );
        assert_eq!(Config::load(&path).unwrap(), (c2, local));

        // A mistake after the table is found on its own line.
        fs::write(&path, WITH_CLUSTER.replace("port = 80", "port = 70000")).unwrap();
        let e = Config::load(&path).unwrap_err();
        assert!(
            matches!(e, ConfigError::Parse { line: Some(10), .. }),
            "{e:?}"
        );
        // No file: no local part.
        fs::remove_file(&path).unwrap();
        assert_eq!(Local::read(&path).unwrap(), Local::default());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_inline_cluster_table_is_saved_as_a_table() {
        let text = "cluster = { endpoints = \"etcd://h:1\" }\nseed = 3\n[[vip]]\naddress = \"10.0.0.1\"\nport = 1\nprotocol = \"tcp\"\n";
        let (shared, local) = split(text).unwrap();
        assert_eq!(Config::from_toml(&shared).unwrap().seed, 3);
        assert_eq!(
            local.cluster().unwrap()["endpoints"].as_str(),
            Some("etcd://h:1")
        );
        let (_, kept) = local.cluster.as_ref().unwrap();
        assert_eq!(kept, "[cluster]\nendpoints = \"etcd://h:1\"\n");
    }

    #[test]
    fn a_cluster_table_in_another_form_is_refused_where_it_is() {
        for (text, line, what) in [
            (
                "seed = 1\ncluster.node = \"a\"\n",
                2,
                "as a [cluster] table",
            ),
            ("cluster = 1\n", 1, "as a [cluster] table"),
            (
                "[cluster]\nnode = \"a\"\n[cluster.tls]\nca = \"x\"\n",
                3,
                "[cluster] tls:",
            ),
            (
                "[cluster]\nendpoints = \"etcd://h:1\"\nx.y = 1\n",
                3,
                "[cluster] x:",
            ),
        ] {
            let (span, message) = split(text).unwrap_err();
            let at = line_column(text, span.expect("located").start).0;
            assert_eq!(at, line, "{text}: {message}");
            assert!(message.contains(what), "{text}: {message}");
        }
    }

    #[test]
    fn a_shared_document_with_a_cluster_table_is_refused() {
        let e = Config::from_toml(WITH_CLUSTER).unwrap_err();
        assert!(matches!(e, ConfigError::LocalInShared), "{e:?}");
        assert!(e.to_string().contains("[cluster] table"), "{e}");
        // Another unknown key is reported as before.
        let e = Config::from_toml("clusters = 1\n").unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e:?}");
    }

    #[test]
    fn line_columns() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("é\nx", 3), (2, 1));
    }
}
