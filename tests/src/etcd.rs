//! A real etcd cluster for the cluster tests: Debian's `etcd` (3.4), one member per network
//! namespace on a control network of its own, optionally with TLS and client certificates
//! ([`Tls`]) and with authentication ([`EtcdCluster::enable_auth`]).
//!
//! ```text
//!   control ns: br0, 10.78.0.254/24 (etcdctl runs here)
//!      |             |             |             |
//!   etcd-1        etcd-2        etcd-3        joined namespaces (lb nodes, ...)
//!   10.78.0.11    10.78.0.12    10.78.0.13    addresses of the caller's choice in 10.78.0.0/24
//!   client :2379 (http or https), peer :2380 (http)
//! ```
//!
//! Dropping the cluster kills its members, removes their data directories and deletes the
//! namespaces. Only addresses inside these namespaces are ever sent to.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

use crate::netns::{self, Netns};
use crate::process::{Process, run_bounded, stdout_of};
use crate::topology::patience;
use crate::wiring::{self, Veth, add_addr, make_bridge, make_temp_dir, one_based, plug};

/// Debian's etcd-server and etcd-client (`cargo xtask bootstrap` installs them).
pub const ETCD: &str = "/usr/bin/etcd";
pub const ETCDCTL: &str = "/usr/bin/etcdctl";
/// The control network: 10.78.0.0/24, apart from the data network's 10.77.0.0/16.
pub const CONTROL_PREFIX_LEN: u8 = 24;
/// The control switch's own address, from which etcdctl runs.
pub const CONTROL_SWITCH_V4: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 254);
/// Most members a cluster may have: their addresses are 10.78.0.11 to 10.78.0.19.
pub const MAX_MEMBERS: usize = 9;
pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;

/// The bridge in the control namespace, and the members' interface on it.
const BRIDGE: &str = "br0";
const MEMBER_IFACE: &str = "ctl0";
const MTU: u16 = 1500;
/// Raft timings for a test network whose round trips take microseconds: a heartbeat every
/// 100 ms and an election after 1 s without one (etcd's defaults, 100 ms and 1 s, are the
/// same; said here because the tests count on them: a new leader within about 1-2 s of a
/// member's death, a first leader within about a second of start-up).
const HEARTBEAT_MS: &str = "100";
const ELECTION_MS: &str = "1000";
/// Limit for the whole cluster to answer as healthy after a start (times [`patience`]).
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(15);
/// Limit for one etcdctl command (times [`patience`]); its own dial and command timeouts
/// are shorter, so that a command against a cluster without quorum fails rather than hangs.
const ETCDCTL_TIMEOUT: Duration = Duration::from_secs(20);
const ETCDCTL_COMMAND_TIMEOUT: &str = "3s";
const ETCDCTL_DIAL_TIMEOUT: &str = "1s";
/// Limit for a healed link to come back up (times [`patience`]).
const HEAL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often start-up waits poll.
const POLL: Duration = Duration::from_millis(50);

/// The address of member `i` (1-based): 10.78.0.1i.
pub fn member_v4(i: usize) -> Ipv4Addr {
    assert!(
        (1..=MAX_MEMBERS).contains(&i),
        "etcd member index {i} out of 1..={MAX_MEMBERS}"
    );
    Ipv4Addr::new(10, 78, 0, 10 + u8::try_from(i).expect("checked above"))
}

/// A CA and the certificates signed by it, as PEM files: a server certificate (for every
/// member: its SANs are the members' addresses and 127.0.0.1) and a client certificate.
#[derive(Debug)]
pub struct Tls {
    dir: PathBuf,
    /// Whether dropping this removes `dir` (made by [`Tls::for_members`]).
    owns_dir: bool,
}

impl Clone for Tls {
    /// The same files; only the original removes a directory it made.
    fn clone(&self) -> Self {
        Self {
            dir: self.dir.clone(),
            owns_dir: false,
        }
    }
}

impl Drop for Tls {
    fn drop(&mut self) {
        if self.owns_dir
            && let Some(kept) = wiring::remove_temp_dir(&self.dir)
        {
            eprintln!("{kept}");
        }
    }
}

impl Tls {
    /// Makes a fresh CA, server and client certificate and writes them under `dir` (made if
    /// missing; the keys mode 0600): ca.pem, server.pem, server-key.pem, client.pem and
    /// client-key.pem.
    pub fn generate(dir: &Path, member_ips: &[IpAddr]) -> anyhow::Result<Self> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose, SanType,
        };
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let tls = Self {
            dir: dir.to_owned(),
            owns_dir: false,
        };
        let mut ca = CertificateParams::default();
        ca.distinguished_name
            .push(DnType::CommonName, "lbx test etcd CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().context("generate the CA's key")?;
        let ca_cert = ca.self_signed(&ca_key).context("sign the CA certificate")?;
        let issuer = Issuer::new(ca, ca_key);

        let mut server = CertificateParams::default();
        server
            .distinguished_name
            .push(DnType::CommonName, "lbx test etcd member");
        server.subject_alt_names = member_ips
            .iter()
            .copied()
            .chain([IpAddr::V4(Ipv4Addr::LOCALHOST)])
            .map(SanType::IpAddress)
            .collect();
        // etcd presents its server certificate to the other members too.
        server.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        server.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let server_key = KeyPair::generate().context("generate the server's key")?;
        let server_cert = server
            .signed_by(&server_key, &issuer)
            .context("sign the server certificate")?;

        let mut client = CertificateParams::default();
        client
            .distinguished_name
            .push(DnType::CommonName, "lbx test etcd client");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let client_key = KeyPair::generate().context("generate the client's key")?;
        let client_cert = client
            .signed_by(&client_key, &issuer)
            .context("sign the client certificate")?;

        write_private(&tls.ca(), &ca_cert.pem(), 0o644)?;
        write_private(&tls.server_cert(), &server_cert.pem(), 0o644)?;
        write_private(&tls.server_key(), &server_key.serialize_pem(), 0o600)?;
        write_private(&tls.client_cert(), &client_cert.pem(), 0o644)?;
        write_private(&tls.client_key(), &client_key.serialize_pem(), 0o600)?;
        Ok(tls)
    }

    /// Certificates for a cluster of `n` members ([`member_v4`]), in a temporary directory
    /// of their own that is removed when this is dropped.
    pub fn for_members(n: usize) -> anyhow::Result<Self> {
        let ips: Vec<IpAddr> = (1..=n).map(|i| member_v4(i).into()).collect();
        let dir = make_temp_dir()?;
        let mut tls = match Self::generate(&dir, &ips) {
            Ok(tls) => tls,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        tls.owns_dir = true;
        Ok(tls)
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server-key.pem")
    }

    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.pem")
    }

    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client-key.pem")
    }
}

fn write_private(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// One member: its namespace, address and data directory, and its process while it runs.
#[derive(Debug)]
struct Member {
    name: String,
    netns: Netns,
    addr: Ipv4Addr,
    data_dir: PathBuf,
    process: Option<Process>,
    /// How many times it was started (the logs of each start are numbered).
    starts: usize,
}

/// A namespace joined to the control network by [`EtcdCluster::join`].
#[derive(Debug, Clone)]
pub struct ControlPort {
    /// The joined namespace's name and its interface on the control network.
    pub netns: String,
    pub iface: String,
    pub addr: Ipv4Addr,
    /// The veth's end in the control namespace, a port of its bridge.
    switch_port: String,
}

/// A running etcd cluster; see the module's documentation.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    /// The control network's switch, where etcdctl runs.
    control: Netns,
    dir: PathBuf,
    tls: Option<Tls>,
    /// Members' processes that were killed, kept for their logs.
    retired: Vec<Process>,
    /// root's password once [`EtcdCluster::enable_auth`] ran: etcdctl then logs in as root.
    root_password: Option<String>,
}

impl EtcdCluster {
    /// Starts an `n`-member cluster (1 to [`MAX_MEMBERS`]), with TLS on the client URLs when
    /// `tls` is given (certificates from [`Tls::generate`] with the members' addresses,
    /// [`member_v4`]), and waits until every member answers as healthy.
    pub fn start(n: usize, tls: Option<&Tls>) -> anyhow::Result<Self> {
        ensure!(
            crate::is_root(),
            "the etcd tests must run as root (they create network namespaces)"
        );
        ensure!(
            (1..=MAX_MEMBERS).contains(&n),
            "an etcd cluster has 1 to {MAX_MEMBERS} members, not {n}"
        );
        for (bin, package) in [(ETCD, "etcd-server"), (ETCDCTL, "etcd-client")] {
            ensure!(
                Path::new(bin).is_file(),
                "{bin} is missing: install Debian's {package} (`cargo xtask bootstrap` does)"
            );
        }
        netns::remove_stale_namespaces();
        let control = Netns::create("ctl")?;
        make_bridge(&control, BRIDGE, MTU)?;
        add_addr(
            &control,
            BRIDGE,
            CONTROL_SWITCH_V4.into(),
            CONTROL_PREFIX_LEN,
        )?;
        let mut members = Vec::new();
        for i in 1..=n {
            let netns = Netns::create(&format!("etcd{i}"))?;
            netns.ip(&["link", "set", "lo", "up"])?;
            members.push(Member {
                name: format!("etcd-{i}"),
                netns,
                addr: member_v4(i),
                data_dir: PathBuf::new(),
                process: None,
                starts: 0,
            });
        }
        let dir = make_temp_dir()?;
        // From here on a failure drops `cluster`, which cleans up everything made so far.
        let mut cluster = Self {
            members,
            control,
            dir,
            tls: tls.cloned(),
            retired: Vec::new(),
            root_password: None,
        };
        for i in 0..n {
            let m = &cluster.members[i];
            let port = format!("c-etcd{}", i + 1);
            cluster.plug(&m.netns, &port, MEMBER_IFACE, m.addr)?;
            let data_dir = cluster.dir.join(&m.name);
            cluster.members[i].data_dir = data_dir;
        }
        for i in 1..=n {
            cluster.spawn_member(i)?;
        }
        cluster.wait_healthy()?;
        Ok(cluster)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// Every member's client address (running or not), in member order.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.members
            .iter()
            .map(|m| SocketAddr::new(m.addr.into(), CLIENT_PORT))
            .collect()
    }

    /// The cluster as lbx's `--cluster` takes it: `etcd://H:P,H:P,H:P`.
    pub fn cluster_arg(&self) -> String {
        let list: Vec<String> = self.endpoints().iter().map(ToString::to_string).collect();
        format!("etcd://{}", list.join(","))
    }

    /// The certificates the cluster was started with, if TLS is on.
    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
    }

    /// The control network's namespace (its switch), e.g. for commands that must reach the
    /// members from outside them.
    pub fn control_netns(&self) -> &Netns {
        &self.control
    }

    /// Whether member `i` (1-based) runs.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.member_mut(i)
            .process
            .as_mut()
            .is_some_and(Process::is_running)
    }

    /// Kills member `i` (1-based) with SIGKILL, as a crash would; its data directory stays.
    pub fn kill_member(&mut self, i: usize) -> anyhow::Result<()> {
        let m = self.member_mut(i);
        let mut process = m
            .process
            .take()
            .with_context(|| format!("{} is not running", m.name))?;
        process.kill();
        self.retired.push(process);
        Ok(())
    }

    /// Starts member `i` (1-based) again on its data directory: it rejoins the cluster as
    /// the member it was. Waits until it listens, and, when enough members run for a quorum,
    /// until every running member answers as healthy.
    pub fn start_member(&mut self, i: usize) -> anyhow::Result<()> {
        ensure!(!self.is_running(i), "{} runs already", self.member(i).name);
        self.spawn_member(i)?;
        let running = (1..=self.len()).filter(|&j| self.is_running(j)).count();
        if running > self.len() / 2 {
            self.wait_healthy()?;
        }
        Ok(())
    }

    fn member(&self, i: usize) -> &Member {
        &self.members[one_based(i, self.members.len(), "etcd member")]
    }

    fn member_mut(&mut self, i: usize) -> &mut Member {
        let at = one_based(i, self.members.len(), "etcd member");
        &mut self.members[at]
    }

    /// Starts member `i`'s etcd and waits until its client port accepts connections.
    fn spawn_member(&mut self, i: usize) -> anyhow::Result<()> {
        let scheme = self.scheme();
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://{}:{PEER_PORT}", m.name, m.addr))
            .collect();
        let m = self.member(i);
        let client_url = format!("{scheme}://{}:{CLIENT_PORT}", m.addr);
        let peer_url = format!("http://{}:{PEER_PORT}", m.addr);
        let mut cmd = m.netns.command(Path::new(ETCD));
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-state", "new"])
            // A token of this cluster's own: members of another test's cluster never join.
            .args(["--initial-cluster-token", &self.token()])
            .args(["--heartbeat-interval", HEARTBEAT_MS])
            .args(["--election-timeout", ELECTION_MS])
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(tls.server_cert())
                .arg("--key-file")
                .arg(tls.server_key())
                .arg("--trusted-ca-file")
                .arg(tls.ca())
                .arg("--client-cert-auth");
        }
        let addr = SocketAddr::new(m.addr.into(), CLIENT_PORT);
        let label = format!("{}-{}", m.name, m.starts + 1);
        let mut process = Process::spawn(&label, cmd, &self.dir)?;
        let listening = process.wait_until(
            &format!("its client port {addr} open"),
            patience(HEALTHY_TIMEOUT),
            || {
                self.control
                    .run(|| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())
                    .unwrap_or(false)
            },
        );
        let m = self.member_mut(i);
        m.starts += 1;
        m.process = Some(process);
        listening
    }

    /// This cluster's `--initial-cluster-token`: the name of its control namespace.
    fn token(&self) -> String {
        self.control.name().to_owned()
    }

    /// Waits until every running member answers `etcdctl endpoint health` (a read through
    /// raft: it needs a leader and a quorum).
    pub fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let limit = patience(HEALTHY_TIMEOUT);
        let deadline = Instant::now() + limit;
        let mut last;
        loop {
            let endpoints = self.running_endpoints();
            ensure!(!endpoints.is_empty(), "no etcd member runs");
            match self.etcdctl_at(&endpoints, &["endpoint", "health"]) {
                Ok(_) => return Ok(()),
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                bail!(
                    "the etcd cluster was not healthy within {limit:?}: {last:#}\n{}",
                    self.log_tails()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Runs `etcdctl ARGS` against the running members (with the TLS flags when TLS is on,
    /// as root once authentication is on); returns stdout, or an error with etcdctl's stderr.
    pub fn etcdctl(&mut self, args: &[&str]) -> anyhow::Result<String> {
        let endpoints = self.running_endpoints();
        ensure!(!endpoints.is_empty(), "no etcd member runs");
        self.etcdctl_at(&endpoints, args)
    }

    /// The client addresses of the members that run.
    pub fn running_endpoints(&mut self) -> Vec<SocketAddr> {
        let all = self.endpoints();
        (1..=self.len())
            .filter(|&i| self.is_running(i))
            .map(|i| all[i - 1])
            .collect()
    }

    /// `etcdctl ARGS` as `user` with `password` (after [`EtcdCluster::enable_auth`]); the
    /// output whatever the exit status, for checking what a wrong login is told.
    pub fn etcdctl_as(
        &mut self,
        user: &str,
        password: &str,
        args: &[&str],
    ) -> anyhow::Result<std::process::Output> {
        let endpoints = self.running_endpoints();
        let login = format!("--user={user}:{password}");
        let mut full = vec![login.as_str()];
        full.extend_from_slice(args);
        let mut cmd = self.etcdctl_command(&endpoints, &[]);
        // The last --user wins: this one, not root's.
        cmd.args(&full);
        run_bounded(cmd, patience(ETCDCTL_TIMEOUT))
            .with_context(|| format!("etcdctl as {user} {}", args.join(" ")))
    }

    /// `etcdctl ARGS` against `endpoints`, not yet run, with TLS flags and root's login as
    /// [`EtcdCluster::etcdctl`] has them.
    pub fn etcdctl_command(&self, endpoints: &[SocketAddr], args: &[&str]) -> Command {
        let urls: Vec<String> = endpoints
            .iter()
            .map(|e| format!("{}://{e}", self.scheme()))
            .collect();
        let mut cmd = self.control.command(Path::new(ETCDCTL));
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", urls.join(",")))
            .arg(format!("--dial-timeout={ETCDCTL_DIAL_TIMEOUT}"))
            .arg(format!("--command-timeout={ETCDCTL_COMMAND_TIMEOUT}"));
        if let Some(tls) = &self.tls {
            cmd.arg("--cacert")
                .arg(tls.ca())
                .arg("--cert")
                .arg(tls.client_cert())
                .arg("--key")
                .arg(tls.client_key());
        }
        if let Some(password) = &self.root_password {
            cmd.arg(format!("--user=root:{password}"));
        }
        cmd.args(args);
        cmd
    }

    fn etcdctl_at(&self, endpoints: &[SocketAddr], args: &[&str]) -> anyhow::Result<String> {
        let cmd = self.etcdctl_command(endpoints, args);
        let what = format!("etcdctl {}", args.join(" "));
        let out = run_bounded(cmd, patience(ETCDCTL_TIMEOUT)).with_context(|| what.clone())?;
        stdout_of(out, &what)
    }

    /// `etcdctl put KEY VALUE`.
    pub fn put(&mut self, key: &str, value: &str) -> anyhow::Result<()> {
        self.etcdctl(&["put", key, value]).map(drop)
    }

    /// `etcdctl get KEY --print-value-only`: the value, None if the key does not exist.
    pub fn get(&mut self, key: &str) -> anyhow::Result<Option<String>> {
        let out = self.etcdctl(&["get", key, "--print-value-only"])?;
        Ok(out.strip_suffix('\n').map(str::to_owned))
    }

    /// Turns authentication on: a `root` user with `root_password` and the root role (etcd
    /// wants both before `auth enable`), and `user` with `password` and a role that may read
    /// and write every key under `/lbx/`. etcdctl logs in as root from then on.
    pub fn enable_auth(
        &mut self,
        root_password: &str,
        user: &str,
        password: &str,
    ) -> anyhow::Result<()> {
        let role = format!("{user}-rw");
        self.etcdctl(&["user", "add", &format!("root:{root_password}")])?;
        self.etcdctl(&["user", "grant-role", "root", "root"])?;
        self.etcdctl(&["role", "add", &role])?;
        self.etcdctl(&[
            "role",
            "grant-permission",
            &role,
            "--prefix=true",
            "readwrite",
            "/lbx/",
        ])?;
        self.etcdctl(&["user", "add", &format!("{user}:{password}")])?;
        self.etcdctl(&["user", "grant-role", user, &role])?;
        self.etcdctl(&["auth", "enable"])?;
        self.root_password = Some(root_password.to_owned());
        Ok(())
    }

    /// Joins `netns` to the control network: a veth from its `iface` to the control bridge,
    /// with `addr`/24 (an address of 10.78.0.0/24 that no member and no other joined
    /// namespace has: below .11 or from .20 to .253).
    pub fn join(&self, netns: &Netns, iface: &str, addr: Ipv4Addr) -> anyhow::Result<ControlPort> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        ensure!(
            addr != CONTROL_SWITCH_V4 && !self.members.iter().any(|m| m.addr == addr),
            "{addr} is taken on the control network"
        );
        let port = format!("c-j{}", NEXT.fetch_add(1, Ordering::Relaxed));
        self.plug(netns, &port, iface, addr)?;
        Ok(ControlPort {
            netns: netns.name().to_owned(),
            iface: iface.to_owned(),
            addr,
            switch_port: port,
        })
    }

    fn plug(&self, netns: &Netns, port: &str, iface: &str, addr: Ipv4Addr) -> anyhow::Result<()> {
        let veth = Veth {
            switch_port: port,
            iface,
            mac: None,
            mtu: MTU,
        };
        plug(&self.control, BRIDGE, MTU, netns, veth)?;
        add_addr(netns, iface, addr.into(), CONTROL_PREFIX_LEN)
    }

    /// Cuts a joined namespace off etcd: its port on the control bridge goes down, so nothing
    /// passes either way (its own interface and address stay as they are).
    pub fn cut(&self, port: &ControlPort) -> anyhow::Result<()> {
        self.control
            .ip(&["link", "set", &port.switch_port, "down"])
            .map(drop)
    }

    /// Undoes [`EtcdCluster::cut`], and waits until the joined namespace's interface is up
    /// again: the kernel brings a link whose carrier returns back into service (its queue
    /// discipline) only when its link watch runs, up to a second later, and drops what is
    /// sent before. Then the namespace's neighbour entries on it are flushed: those it tried
    /// to resolve while cut off would otherwise retry only a second apart.
    pub fn heal(&self, port: &ControlPort) -> anyhow::Result<()> {
        self.control.ip(&["link", "set", &port.switch_port, "up"])?;
        let limit = patience(HEAL_TIMEOUT);
        let deadline = Instant::now() + limit;
        loop {
            let out = netns::ip(&["-n", &port.netns, "-j", "link", "show", "dev", &port.iface])?;
            let links: serde_json::Value =
                serde_json::from_str(&out).context("`ip -j link` printed invalid JSON")?;
            if links[0]["operstate"] == "UP" {
                netns::ip(&["-n", &port.netns, "neigh", "flush", "dev", &port.iface])?;
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{} of {} is not up {limit:?} after the heal: {out}",
                port.iface,
                port.netns
            );
            std::thread::sleep(POLL);
        }
    }

    /// Process ids of the running members.
    pub fn pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter_map(|m| m.process.as_ref())
            .map(Process::pid)
            .collect()
    }

    /// The last lines of every member's log, for failure reports.
    pub fn log_tails(&self) -> String {
        let mut out = format!("etcd data and logs in {}\n", self.dir.display());
        let running = self.members.iter().filter_map(|m| m.process.as_ref());
        for p in self.retired.iter().chain(running) {
            out.push_str(&p.tail(crate::topology::TAIL_LINES));
        }
        out
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails());
        }
        // Killed, not stopped: nothing of an etcd member's state outlives the test.
        for m in &mut self.members {
            if let Some(mut p) = m.process.take() {
                p.kill();
            }
        }
        self.retired.clear();
        if let Some(kept) = wiring::remove_temp_dir(&self.dir) {
            eprintln!("{kept}");
        }
        // The namespaces are fields, deleted after this with their interfaces.
    }
}
