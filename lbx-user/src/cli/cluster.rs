//! `lbx run`'s cluster flags: where etcd is, this node's name, TLS and credentials.

use std::{fs, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::cluster::{
    ClusterOptions, Credentials, TlsFiles,
    options::{check_name, parse_endpoints},
};

#[derive(Args)]
#[command(next_help_heading = "Cluster (opt-in; without --cluster the agent serves its own file)")]
pub struct ClusterArgs {
    /// Join a cluster whose configuration lives in etcd, e.g.
    /// `etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379`. The cluster's document is then
    /// the configuration (`--config` only seeds an empty cluster), every change is written
    /// there, and every node serves each new revision.
    #[arg(long, value_name = "etcd://HOST:PORT[,...]", value_parser = endpoints)]
    pub cluster: Option<Endpoints>,
    /// The cluster's name: its keys live under `/lbx/NAME/` in etcd.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "default",
        requires = "cluster"
    )]
    pub cluster_name: String,
    /// This node's name in the cluster (default: the host name).
    #[arg(long, value_name = "NAME", requires = "cluster")]
    pub node: Option<String>,
    /// CA certificate (PEM) that signed etcd's server certificates: talk TLS to etcd.
    #[arg(long, value_name = "FILE", requires = "cluster")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's `--client-cert-auth`; needs --etcd-key.
    #[arg(long, value_name = "FILE", requires_all = ["etcd_ca", "etcd_key"])]
    pub etcd_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user, for a cluster with authentication enabled; needs --etcd-password-file.
    #[arg(long, value_name = "USER", requires_all = ["cluster", "etcd_password_file"])]
    pub etcd_user: Option<String>,
    /// File holding the etcd user's password (its first line), kept off the command line.
    #[arg(long, value_name = "FILE", requires = "etcd_user")]
    pub etcd_password_file: Option<PathBuf>,
    /// How long start-up waits for etcd to answer before giving up.
    #[arg(long, value_name = "SECS", default_value_t = 10, requires = "cluster",
          value_parser = clap::value_parser!(u64).range(1..=600))]
    pub cluster_wait_s: u64,
    /// TTL of this node's lease in etcd: a dead node's reports, and its leadership of the
    /// weights, end this long after its last renewal.
    #[arg(long, value_name = "SECS", default_value_t = 5, requires = "cluster",
          value_parser = clap::value_parser!(u64).range(2..=300))]
    pub cluster_lease_ttl_s: u64,
}

/// etcd's endpoints, `host:port` each, as `--cluster` names them.
#[derive(Clone, Debug)]
pub struct Endpoints(Vec<String>);

fn endpoints(s: &str) -> Result<Endpoints, String> {
    parse_endpoints(s).map(Endpoints)
}

impl ClusterArgs {
    /// The cluster options, or none without `--cluster`.
    pub fn options(self) -> Result<Option<ClusterOptions>> {
        let Some(Endpoints(endpoints)) = self.cluster else {
            return Ok(None);
        };
        check_name("--cluster-name", &self.cluster_name).map_err(anyhow::Error::msg)?;
        let node = match self.node {
            Some(n) => n,
            None => hostname().context("--node not given and no host name to take")?,
        };
        check_name("--node", &node).map_err(anyhow::Error::msg)?;
        let tls = self.etcd_ca.map(|ca| TlsFiles {
            ca,
            identity: self.etcd_cert.zip(self.etcd_key),
        });
        let auth = match (self.etcd_user, self.etcd_password_file) {
            (Some(user), Some(file)) => {
                let text = fs::read_to_string(&file)
                    .with_context(|| format!("--etcd-password-file {}", file.display()))?;
                let Some(password) = text.lines().next().filter(|l| !l.is_empty()) else {
                    bail!("--etcd-password-file {}: the file is empty", file.display());
                };
                Some(Credentials {
                    user,
                    password: password.to_owned(),
                })
            }
            _ => None,
        };
        Ok(Some(ClusterOptions {
            endpoints,
            name: self.cluster_name,
            node,
            tls,
            auth,
            wait: Duration::from_secs(self.cluster_wait_s),
            lease_ttl: Duration::from_secs(self.cluster_lease_ttl_s),
        }))
    }
}

fn hostname() -> Result<String> {
    let name = fs::read_to_string("/proc/sys/kernel/hostname")?;
    Ok(name.trim().to_owned())
}
