//! Where the cluster's store is and who this node is in it: `lbx run --cluster ...`.

use std::{fmt, path::PathBuf, time::Duration};

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
}
