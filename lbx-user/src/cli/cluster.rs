//! `lbx run`'s cluster flags: where etcd is, this node's name, TLS and credentials. Each
//! has a key in the `[cluster]` table of the node's own file; a flag given wins over it.

use std::{fs, path::Path, path::PathBuf};

use anyhow::Result;
use clap::Args;

use crate::cluster::{
    ClusterOptions,
    options::{LEASE_TTL_S, Settings, WAIT_S, parse_endpoints},
};

#[derive(Args)]
#[command(
    next_help_heading = "Cluster (opt-in: --cluster, or a [cluster] table in the --config file, \
                         whose keys each flag overrides; without either the agent serves its own \
                         file)"
)]
pub struct ClusterArgs {
    /// Join a cluster whose configuration lives in etcd, e.g.
    /// `etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379`. The cluster's document is then
    /// the configuration (`--config` only seeds an empty cluster), every change is written
    /// there, and every node serves each new revision. File: `[cluster] endpoints`.
    #[arg(long, value_name = "etcd://HOST:PORT[,...]", value_parser = endpoints)]
    pub cluster: Option<Endpoints>,
    /// The cluster's name: its keys live under `/lbx/NAME/` in etcd (default: default).
    /// File: `[cluster] name`.
    #[arg(long, value_name = "NAME")]
    pub cluster_name: Option<String>,
    /// This node's name in the cluster (default: the host name). File: `[cluster] node`.
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// CA certificate (PEM) that signed etcd's server certificates: talk TLS to etcd.
    /// File: `[cluster] etcd_ca`.
    #[arg(long, value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's `--client-cert-auth`; needs --etcd-ca and
    /// --etcd-key. File: `[cluster] etcd_cert`.
    #[arg(long, value_name = "FILE")]
    pub etcd_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM). File: `[cluster] etcd_key`.
    #[arg(long, value_name = "FILE")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user, for a cluster with authentication enabled; needs --etcd-password-file.
    /// File: `[cluster] etcd_user`.
    #[arg(long, value_name = "USER")]
    pub etcd_user: Option<String>,
    /// File holding the etcd user's password (its first line), kept off the command line.
    /// File: `[cluster] etcd_password_file`.
    #[arg(long, value_name = "FILE")]
    pub etcd_password_file: Option<PathBuf>,
    /// How long start-up waits for etcd to answer before giving up (default: 10).
    /// File: `[cluster] wait_s`.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(WAIT_S))]
    pub cluster_wait_s: Option<u64>,
    /// TTL of this node's lease in etcd: a dead node's reports, and its leadership of the
    /// weights, end this long after its last renewal (default: 5). File:
    /// `[cluster] lease_ttl_s`.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(LEASE_TTL_S))]
    pub cluster_lease_ttl_s: Option<u64>,
}

/// etcd's endpoints, `host:port` each, as `--cluster` names them.
#[derive(Clone, Debug)]
pub struct Endpoints(Vec<String>);

fn endpoints(s: &str) -> Result<Endpoints, String> {
    parse_endpoints(s).map(Endpoints)
}

impl ClusterArgs {
    /// The cluster options of the flags over those of `table`, the `[cluster]` table of
    /// the file at `config`; none without endpoints in either.
    pub fn options(
        self,
        table: Option<&toml::Table>,
        config: &Path,
    ) -> Result<Option<ClusterOptions>> {
        let dir = config.parent().unwrap_or(Path::new(""));
        let file = match table {
            Some(t) => Settings::from_table(t, dir)
                .map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?,
            None => Settings::default(),
        };
        let flags = Settings {
            endpoints: self.cluster.map(|Endpoints(e)| e),
            name: self.cluster_name,
            node: self.node,
            etcd_ca: self.etcd_ca,
            etcd_cert: self.etcd_cert,
            etcd_key: self.etcd_key,
            etcd_user: self.etcd_user,
            etcd_password_file: self.etcd_password_file,
            wait_s: self.cluster_wait_s,
            lease_ttl_s: self.cluster_lease_ttl_s,
        };
        ClusterOptions::resolve(flags, file, hostname).map_err(anyhow::Error::msg)
    }
}

fn hostname() -> Result<String, String> {
    let name = fs::read_to_string("/proc/sys/kernel/hostname").map_err(|e| e.to_string())?;
    Ok(name.trim().to_owned())
}
