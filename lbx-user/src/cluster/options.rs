//! Where the cluster's store is and who this node is in it: `lbx run --cluster ...`, or
//! the `[cluster]` table of the node's own file, a flag in place of the table's key.

use std::{
    fmt, fs,
    ops::RangeInclusive,
    path::{Path, PathBuf},
    time::Duration,
};

/// How long a request to etcd may take before the agent treats the store as unavailable:
/// a write that cannot reach a quorum hangs until then.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// etcd's client endpoints, `host:port` each.
    pub endpoints: Vec<String>,
    /// The cluster's name: its keys live under `/lbx/<name>/`.
    pub name: String,
    /// This node's name, unique in the cluster.
    pub node: String,
    pub tls: Option<TlsFiles>,
    pub auth: Option<Credentials>,
    /// How long start-up waits for etcd to answer.
    pub wait: Duration,
    /// TTL of the node's lease: its reports and its leadership end this long after it
    /// stops renewing them.
    pub lease_ttl: Duration,
}

/// PEM files for etcd over TLS with a client certificate.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    /// A client certificate and its key, for etcd's `--client-cert-auth`.
    pub identity: Option<(PathBuf, PathBuf)>,
}

#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    // The password stays out of logs and error messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials {{ user: {:?} }}", self.user)
    }
}

/// The cluster's name when neither `--cluster-name` nor `[cluster] name` gives one.
pub const DEFAULT_NAME: &str = "default";
pub const DEFAULT_WAIT_S: u64 = 10;
/// Seconds start-up may wait for etcd.
pub const WAIT_S: RangeInclusive<u64> = 1..=600;
pub const DEFAULT_LEASE_TTL_S: u64 = 5;
/// Seconds a node's lease may live.
pub const LEASE_TTL_S: RangeInclusive<u64> = 2..=300;

/// A setting's flag and its key in `[cluster]`.
#[derive(Clone, Copy)]
struct Key {
    flag: &'static str,
    file: &'static str,
}

const ENDPOINTS: Key = Key::new("--cluster", "endpoints");
const NAME: Key = Key::new("--cluster-name", "name");
const NODE: Key = Key::new("--node", "node");
const CA: Key = Key::new("--etcd-ca", "etcd_ca");
const CERT: Key = Key::new("--etcd-cert", "etcd_cert");
const CERT_KEY: Key = Key::new("--etcd-key", "etcd_key");
const USER: Key = Key::new("--etcd-user", "etcd_user");
const PASSWORD_FILE: Key = Key::new("--etcd-password-file", "etcd_password_file");
const WAIT: Key = Key::new("--cluster-wait-s", "wait_s");
const LEASE_TTL: Key = Key::new("--cluster-lease-ttl-s", "lease_ttl_s");
const KEYS: [Key; 10] = [
    ENDPOINTS,
    NAME,
    NODE,
    CA,
    CERT,
    CERT_KEY,
    USER,
    PASSWORD_FILE,
    WAIT,
    LEASE_TTL,
];

impl Key {
    const fn new(flag: &'static str, file: &'static str) -> Key {
        Key { flag, file }
    }

    fn in_file(self) -> String {
        format!("[cluster] {}", self.file)
    }

    fn either(self) -> String {
        format!("{} or {}", self.flag, self.in_file())
    }
}

/// The cluster settings one source gives: `lbx run`'s flags, or the `[cluster]` table of
/// the node's own file. [`ClusterOptions::resolve`] puts the two together.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub endpoints: Option<Vec<String>>,
    pub name: Option<String>,
    pub node: Option<String>,
    pub etcd_ca: Option<PathBuf>,
    pub etcd_cert: Option<PathBuf>,
    pub etcd_key: Option<PathBuf>,
    pub etcd_user: Option<String>,
    pub etcd_password_file: Option<PathBuf>,
    pub wait_s: Option<u64>,
    pub lease_ttl_s: Option<u64>,
}

impl Settings {
    /// The settings of a `[cluster]` table. Relative paths are taken from `dir`, the
    /// file's directory. Endpoints and numbers are checked here as the flags' are; an
    /// error names the key.
    pub fn from_table(table: &toml::Table, dir: &Path) -> Result<Settings, String> {
        let mut s = Settings::default();
        for (key, value) in table {
            let at = |m: String| format!("[cluster] {key}: {m}");
            let text = || {
                value
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| at(format!("a string, not {}", value.type_str())))
            };
            let path = || text().map(|t| dir.join(t));
            let secs = |range: RangeInclusive<u64>| {
                let n = value
                    .as_integer()
                    .ok_or_else(|| at(format!("a number of seconds, not {}", value.type_str())))?;
                u64::try_from(n)
                    .ok()
                    .filter(|n| range.contains(n))
                    .ok_or_else(|| at(format!("{n} is not in {}..={}", range.start(), range.end())))
            };
            match key.as_str() {
                "endpoints" => s.endpoints = Some(parse_endpoints(&text()?).map_err(at)?),
                "name" => s.name = Some(text()?),
                "node" => s.node = Some(text()?),
                "etcd_ca" => s.etcd_ca = Some(path()?),
                "etcd_cert" => s.etcd_cert = Some(path()?),
                "etcd_key" => s.etcd_key = Some(path()?),
                "etcd_user" => s.etcd_user = Some(text()?),
                "etcd_password_file" => s.etcd_password_file = Some(path()?),
                "wait_s" => s.wait_s = Some(secs(WAIT_S)?),
                "lease_ttl_s" => s.lease_ttl_s = Some(secs(LEASE_TTL_S)?),
                _ => {
                    let known: Vec<&str> = KEYS.iter().map(|k| k.file).collect();
                    return Err(at(format!(
                        "unknown key; [cluster] holds {}",
                        known.join(", ")
                    )));
                }
            }
        }
        Ok(s)
    }
}

/// A setting and how the operator gave it: `--node` or `[cluster] node`.
struct Given<T> {
    value: T,
    key: String,
}

/// The flag's value if given, else the file's.
fn pick<T>(key: Key, flag: Option<T>, file: Option<T>) -> Option<Given<T>> {
    match (flag, file) {
        (Some(value), _) => Some(Given {
            value,
            key: key.flag.to_owned(),
        }),
        (None, Some(value)) => Some(Given {
            value,
            key: key.in_file(),
        }),
        (None, None) => None,
    }
}

impl ClusterOptions {
    /// The options the flags and the file's `[cluster]` table give together, each flag in
    /// place of its key; none when neither names etcd's endpoints (a single node). `node`
    /// defaults to `hostname`'s answer.
    pub fn resolve(
        flags: Settings,
        file: Settings,
        hostname: impl FnOnce() -> Result<String, String>,
    ) -> Result<Option<ClusterOptions>, String> {
        let endpoints = pick(ENDPOINTS, flags.endpoints, file.endpoints);
        let name = pick(NAME, flags.name, file.name);
        let node = pick(NODE, flags.node, file.node);
        let ca = pick(CA, flags.etcd_ca, file.etcd_ca);
        let cert = pick(CERT, flags.etcd_cert, file.etcd_cert);
        let cert_key = pick(CERT_KEY, flags.etcd_key, file.etcd_key);
        let user = pick(USER, flags.etcd_user, file.etcd_user);
        let password = pick(
            PASSWORD_FILE,
            flags.etcd_password_file,
            file.etcd_password_file,
        );
        let wait = pick(WAIT, flags.wait_s, file.wait_s);
        let lease_ttl = pick(LEASE_TTL, flags.lease_ttl_s, file.lease_ttl_s);
        let Some(endpoints) = endpoints else {
            let given = [
                name.as_ref().map(|g| &g.key),
                node.as_ref().map(|g| &g.key),
                ca.as_ref().map(|g| &g.key),
                cert.as_ref().map(|g| &g.key),
                cert_key.as_ref().map(|g| &g.key),
                user.as_ref().map(|g| &g.key),
                password.as_ref().map(|g| &g.key),
                wait.as_ref().map(|g| &g.key),
                lease_ttl.as_ref().map(|g| &g.key),
            ];
            return match given.into_iter().flatten().next() {
                Some(key) => Err(format!(
                    "{key}: needs {}, the cluster to join (without it the node serves its \
                     own file alone)",
                    ENDPOINTS.either()
                )),
                None => Ok(None),
            };
        };
        let name = match name {
            Some(Given { value, key }) => {
                check_name(&key, &value)?;
                value
            }
            None => DEFAULT_NAME.to_owned(),
        };
        let node = match node {
            Some(Given { value, key }) => {
                check_name(&key, &value)?;
                value
            }
            None => {
                let host = hostname().map_err(|e| {
                    format!("{} not given and no host name to take: {e}", NODE.either())
                })?;
                check_name("the host name, this node's name,", &host)?;
                host
            }
        };
        let needs = |given: &Option<Given<PathBuf>>, other: &Option<Given<PathBuf>>, k: Key| match (
            given, other,
        ) {
            (Some(g), None) => Err(format!("{}: needs {}", g.key, k.either())),
            _ => Ok(()),
        };
        needs(&cert, &ca, CA)?;
        needs(&cert, &cert_key, CERT_KEY)?;
        needs(&cert_key, &cert, CERT)?;
        let tls = ca.map(|ca| TlsFiles {
            ca: ca.value,
            identity: cert.zip(cert_key).map(|(c, k)| (c.value, k.value)),
        });
        let auth = match (user, password) {
            (Some(user), Some(file)) => Some(Credentials {
                user: user.value,
                password: read_password(&file)?,
            }),
            (Some(user), None) => {
                return Err(format!("{}: needs {}", user.key, PASSWORD_FILE.either()));
            }
            (None, Some(file)) => return Err(format!("{}: needs {}", file.key, USER.either())),
            (None, None) => None,
        };
        let secs =
            |g: Option<Given<u64>>, default| Duration::from_secs(g.map_or(default, |g| g.value));
        Ok(Some(ClusterOptions {
            endpoints: endpoints.value,
            name,
            node,
            tls,
            auth,
            wait: secs(wait, DEFAULT_WAIT_S),
            lease_ttl: secs(lease_ttl, DEFAULT_LEASE_TTL_S),
        }))
    }
}

/// The password in the first line of the password file.
fn read_password(file: &Given<PathBuf>) -> Result<String, String> {
    let path = file.value.display();
    let text = fs::read_to_string(&file.value).map_err(|e| format!("{} {path}: {e}", file.key))?;
    match text.lines().next().filter(|l| !l.is_empty()) {
        Some(password) => Ok(password.to_owned()),
        None => Err(format!("{} {path}: the file is empty", file.key)),
    }
}

/// Parses `etcd://H:P[,H:P...]` into `host:port` endpoints.
pub fn parse_endpoints(s: &str) -> Result<Vec<String>, String> {
    let rest = s
        .strip_prefix("etcd://")
        .ok_or_else(|| format!("{s:?}: a cluster is named as etcd://HOST:PORT[,HOST:PORT...]"))?;
    let mut out = Vec::new();
    for part in rest.split(',') {
        let part = part.trim();
        let (host, port) = part
            .rsplit_once(':')
            .ok_or_else(|| format!("{part:?} in {s:?}: an endpoint is HOST:PORT"))?;
        if host.is_empty() {
            return Err(format!("{part:?} in {s:?}: the host is missing"));
        }
        port.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{part:?} in {s:?}: {port:?} is not a port"))?;
        out.push(part.to_owned());
    }
    Ok(out)
}

/// A cluster or node name: it becomes part of etcd keys, so no `/` and nothing odd.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {name:?}: 1 to 64 letters, digits, '-', '_' or '.'"
        ))
    }
}

impl ClusterOptions {
    /// The URL of each endpoint, `https` with TLS.
    pub fn urls(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        self.endpoints
            .iter()
            .map(|e| format!("{scheme}://{e}"))
            .collect()
    }

    /// The endpoints as the operator gave them, for messages.
    pub fn describe(&self) -> String {
        format!("etcd://{}", self.endpoints.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            parse_endpoints("etcd://10.0.0.1:2379,[fd00::1]:2379").unwrap(),
            ["10.0.0.1:2379", "[fd00::1]:2379"]
        );
        for bad in [
            "10.0.0.1:2379",
            "etcd://",
            "etcd://h",
            "etcd://h:0",
            "etcd://:1",
            "etcd://h:x",
        ] {
            assert!(parse_endpoints(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("node", "lb-1.a_b").is_ok());
        for bad in ["", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name("node", bad).is_err(), "{bad:?}");
        }
    }

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    fn file(text: &str) -> Result<Settings, String> {
        Settings::from_table(&table(text), Path::new("/etc/lbx"))
    }

    fn host() -> Result<String, String> {
        Ok("host-1".to_owned())
    }

    #[test]
    fn a_table_gives_every_setting() {
        let s = file(
            "endpoints = \"etcd://10.0.0.1:2379,10.0.0.2:2379\"\nname = \"prod\"\n\
             node = \"lb-1\"\netcd_ca = \"tls/ca.pem\"\netcd_cert = \"/tls/c.pem\"\n\
             etcd_key = \"/tls/c.key\"\nwait_s = 30\nlease_ttl_s = 8\n",
        )
        .unwrap();
        let o = ClusterOptions::resolve(Settings::default(), s, host)
            .unwrap()
            .unwrap();
        assert_eq!(o.endpoints, ["10.0.0.1:2379", "10.0.0.2:2379"]);
        assert_eq!((o.name.as_str(), o.node.as_str()), ("prod", "lb-1"));
        let tls = o.tls.unwrap();
        // Relative paths are the file's directory's.
        assert_eq!(tls.ca, Path::new("/etc/lbx/tls/ca.pem"));
        assert_eq!(
            tls.identity,
            Some(("/tls/c.pem".into(), "/tls/c.key".into()))
        );
        assert_eq!(o.wait, Duration::from_secs(30));
        assert_eq!(o.lease_ttl, Duration::from_secs(8));
    }

    #[test]
    fn defaults_are_the_flags_defaults() {
        let s = file("endpoints = \"etcd://h:1\"\n").unwrap();
        let o = ClusterOptions::resolve(Settings::default(), s, host)
            .unwrap()
            .unwrap();
        assert_eq!((o.name.as_str(), o.node.as_str()), ("default", "host-1"));
        assert!(o.tls.is_none() && o.auth.is_none());
        assert_eq!(o.wait, Duration::from_secs(DEFAULT_WAIT_S));
        assert_eq!(o.lease_ttl, Duration::from_secs(DEFAULT_LEASE_TTL_S));
        // Neither source names etcd: a single node.
        let none = ClusterOptions::resolve(Settings::default(), Settings::default(), host);
        assert!(none.unwrap().is_none());
    }

    #[test]
    fn flags_win_setting_by_setting() {
        let s = file(
            "endpoints = \"etcd://file:1\"\nname = \"file\"\nnode = \"file\"\nwait_s = 30\n\
             etcd_ca = \"/ca\"\netcd_cert = \"/cert\"\netcd_key = \"/key\"\n",
        )
        .unwrap();
        let flags = Settings {
            endpoints: Some(vec!["flag:2".to_owned()]),
            node: Some("flag".to_owned()),
            etcd_key: Some("/flag.key".into()),
            ..Settings::default()
        };
        let o = ClusterOptions::resolve(flags, s, host).unwrap().unwrap();
        assert_eq!(o.endpoints, ["flag:2"]);
        assert_eq!((o.name.as_str(), o.node.as_str()), ("file", "flag"));
        assert_eq!(o.wait, Duration::from_secs(30));
        let identity = o.tls.unwrap().identity.unwrap();
        assert_eq!(identity, ("/cert".into(), "/flag.key".into()));
        // A flag completes what the file leaves out, and the other way round.
        let s = file("endpoints = \"etcd://h:1\"\netcd_user = \"lbx\"\n").unwrap();
        let flags = Settings {
            etcd_password_file: Some("/nonexistent/password".into()),
            ..Settings::default()
        };
        let e = ClusterOptions::resolve(flags, s, host).unwrap_err();
        assert!(
            e.starts_with("--etcd-password-file /nonexistent/password: "),
            "{e}"
        );
    }

    #[test]
    fn bad_tables_name_the_key() {
        for (text, want) in [
            (
                "bogus = 1",
                "[cluster] bogus: unknown key; [cluster] holds endpoints, name,",
            ),
            (
                "endpoint = \"etcd://h:1\"",
                "[cluster] endpoint: unknown key",
            ),
            (
                "endpoints = \"h:1\"",
                "[cluster] endpoints: \"h:1\": a cluster is named as etcd://HOST:PORT",
            ),
            (
                "endpoints = [\"h:1\"]",
                "[cluster] endpoints: a string, not array",
            ),
            ("node = 3", "[cluster] node: a string, not integer"),
            ("wait_s = 0", "[cluster] wait_s: 0 is not in 1..=600"),
            ("wait_s = -1", "[cluster] wait_s: -1 is not in 1..=600"),
            (
                "lease_ttl_s = 301",
                "[cluster] lease_ttl_s: 301 is not in 2..=300",
            ),
            (
                "lease_ttl_s = \"5\"",
                "[cluster] lease_ttl_s: a number of seconds, not string",
            ),
        ] {
            let e = file(text).unwrap_err();
            assert!(e.starts_with(want), "{text}: {e}");
        }
    }

    #[test]
    fn settings_that_do_not_go_together_are_refused() {
        let resolve = |text: &str| {
            ClusterOptions::resolve(Settings::default(), file(text).unwrap(), host).unwrap_err()
        };
        for (text, want) in [
            (
                "name = \"a/b\"\nendpoints = \"etcd://h:1\"",
                "[cluster] name \"a/b\": 1 to 64 letters",
            ),
            (
                "node = \"\"\nendpoints = \"etcd://h:1\"",
                "[cluster] node \"\": 1 to 64 letters",
            ),
            (
                "endpoints = \"etcd://h:1\"\netcd_ca = \"/ca\"\netcd_cert = \"/c\"",
                "[cluster] etcd_cert: needs --etcd-key or [cluster] etcd_key",
            ),
            (
                "endpoints = \"etcd://h:1\"\netcd_cert = \"/c\"\netcd_key = \"/k\"",
                "[cluster] etcd_cert: needs --etcd-ca or [cluster] etcd_ca",
            ),
            (
                "endpoints = \"etcd://h:1\"\netcd_ca = \"/ca\"\netcd_key = \"/k\"",
                "[cluster] etcd_key: needs --etcd-cert or [cluster] etcd_cert",
            ),
            (
                "endpoints = \"etcd://h:1\"\netcd_user = \"u\"",
                "[cluster] etcd_user: needs --etcd-password-file or [cluster] etcd_password_file",
            ),
            (
                "endpoints = \"etcd://h:1\"\netcd_password_file = \"/p\"",
                "[cluster] etcd_password_file: needs --etcd-user or [cluster] etcd_user",
            ),
            (
                "node = \"lb-1\"",
                "[cluster] node: needs --cluster or [cluster] endpoints",
            ),
        ] {
            let e = resolve(text);
            assert!(e.starts_with(want), "{text}: {e}");
        }
        // Flags alone are held to the same.
        let flags = Settings {
            node: Some("lb-1".to_owned()),
            ..Settings::default()
        };
        let e = ClusterOptions::resolve(flags, Settings::default(), host).unwrap_err();
        assert!(
            e.starts_with("--node: needs --cluster or [cluster] endpoints"),
            "{e}"
        );
        let no_host = || Err("no such file".to_owned());
        let s = file("endpoints = \"etcd://h:1\"").unwrap();
        let e = ClusterOptions::resolve(Settings::default(), s, no_host).unwrap_err();
        assert!(e.contains("--node or [cluster] node not given"), "{e}");
    }

    #[test]
    fn the_password_is_the_files_first_line() {
        let dir = std::env::temp_dir().join(format!("lbx-password-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("pw"), "secret\nignored\n").unwrap();
        fs::write(dir.join("empty"), "").unwrap();
        let text = "endpoints = \"etcd://h:1\"\netcd_user = \"lbx\"\netcd_password_file = \"pw\"";
        let s = Settings::from_table(&table(text), &dir).unwrap();
        let o = ClusterOptions::resolve(Settings::default(), s, host)
            .unwrap()
            .unwrap();
        let auth = o.auth.unwrap();
        assert_eq!(
            (auth.user.as_str(), auth.password.as_str()),
            ("lbx", "secret")
        );
        let s = Settings::from_table(&table(&text.replace("\"pw\"", "\"empty\"")), &dir).unwrap();
        let e = ClusterOptions::resolve(Settings::default(), s, host).unwrap_err();
        assert!(
            e.starts_with("[cluster] etcd_password_file ")
                && e.ends_with("empty: the file is empty"),
            "{e}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
