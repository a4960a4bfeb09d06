//! The client host's side of a test: TCP connections to a VIP that ask which backend answers,
//! and ping. Sockets are made on a thread inside the client's namespace (see [`Netns::run`]).

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::netns::Netns;
use crate::topology::patience;

/// Limit for one TCP connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Limit for one read or write on an open connection.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Limit for a whole batch of connections ([`Client::ask_many`], [`Client::open_many`]),
/// times [`patience`]. One connection's own limits above do not scale: that a connection
/// to a VIP is answered within them is part of what the tests check.
pub const BATCH_BUDGET: Duration = Duration::from_secs(120);
/// Limit for one ping's answer.
const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// Most connections one batch may make: a bound on every traffic loop of the tests.
pub const MAX_BATCH: usize = 5000;
/// Largest answer [`Connection::ask_bulk`] may ask for (the test server's limit).
pub const MAX_BULK: usize = 1 << 20;
/// What the test server fills a bulk answer with.
const BULK_FILLER: u8 = b'#';

/// Sends connections and pings from inside one namespace.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    netns: &'a Netns,
}

impl<'a> Client<'a> {
    pub fn new(netns: &'a Netns) -> Self {
        Self { netns }
    }

    /// One connection from source port `src_port` (0: any) to `dst`: sends a line, returns the
    /// name the backend answers with, and closes.
    pub fn ask(&self, dst: SocketAddr, src_port: u16) -> anyhow::Result<String> {
        Ok(self
            .ask_many(dst, &[src_port])?
            .pop()
            .expect("one answer per port"))
    }

    /// One connection per source port, one after the other, returning each answer in order.
    /// Fails at the first connection that fails, naming its source port.
    pub fn ask_many(&self, dst: SocketAddr, src_ports: &[u16]) -> anyhow::Result<Vec<String>> {
        self.ask_many_padded(dst, src_ports, 0)
    }

    /// Like [`Client::ask_many`], each connection sending a line with `padding` extra bytes.
    pub fn ask_many_padded(
        &self,
        dst: SocketAddr,
        src_ports: &[u16],
        padding: usize,
    ) -> anyhow::Result<Vec<String>> {
        check_batch(src_ports)?;
        self.netns.run(|| {
            let started = Instant::now();
            let budget = patience(BATCH_BUDGET);
            let mut names = Vec::with_capacity(src_ports.len());
            for &port in src_ports {
                if started.elapsed() > budget {
                    bail!("connections to {dst} took longer than {budget:?}; gave up");
                }
                names.push(Connection::open(dst, port)?.ask_padded(padding)?);
            }
            Ok(names)
        })?
    }

    /// Opens a connection and keeps it, for asking again later.
    pub fn open(&self, dst: SocketAddr, src_port: u16) -> anyhow::Result<Connection> {
        self.netns.run(|| Connection::open(dst, src_port))?
    }

    /// Opens one connection per source port and asks each once, so each knows its backend.
    pub fn open_many(&self, dst: SocketAddr, src_ports: &[u16]) -> anyhow::Result<Vec<Connection>> {
        check_batch(src_ports)?;
        self.netns.run(|| {
            let started = Instant::now();
            let budget = patience(BATCH_BUDGET);
            let mut conns = Vec::with_capacity(src_ports.len());
            for &port in src_ports {
                if started.elapsed() > budget {
                    bail!("opening connections to {dst} took longer than {budget:?}");
                }
                let mut conn = Connection::open(dst, port)?;
                conn.ask()?;
                conns.push(conn);
            }
            Ok(conns)
        })?
    }

    /// Sends `count` ICMP echo requests to `dst` (at most 100), one at a time, and returns how
    /// many were answered.
    pub fn ping(&self, dst: IpAddr, count: u16) -> anyhow::Result<u16> {
        if count > 100 {
            bail!("ping count {count} is over the limit of 100");
        }
        self.netns.run(|| ping(dst, count))?
    }
}

fn check_batch(src_ports: &[u16]) -> anyhow::Result<()> {
    if src_ports.len() > MAX_BATCH {
        bail!(
            "{} connections asked for; one batch may make at most {MAX_BATCH}",
            src_ports.len()
        );
    }
    Ok(())
}

/// An open TCP connection to a test server. Dropping it resets the connection (SO_LINGER 0)
/// rather than closing it, so no TIME_WAIT keeps its source port from being used again.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    dst: SocketAddr,
    src_port: u16,
    /// The name from the first answer, if asked yet.
    first_answer: Option<String>,
}

impl Connection {
    /// Connects from `src_port` (0: any) to `dst`, in the calling thread's namespace.
    pub fn open(dst: SocketAddr, src_port: u16) -> anyhow::Result<Self> {
        let what = || format!("TCP connection from source port {src_port} to {dst}");
        let socket = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))
            .with_context(what)?;
        socket.set_reuse_address(true).with_context(what)?;
        let local: SocketAddr = match dst {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, src_port).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, src_port).into(),
        };
        socket
            .bind(&local.into())
            .with_context(|| format!("{}: bind", what()))?;
        socket
            .connect_timeout(&dst.into(), CONNECT_TIMEOUT)
            .with_context(|| format!("{}: connect", what()))?;
        socket.set_read_timeout(Some(IO_TIMEOUT))?;
        socket.set_write_timeout(Some(IO_TIMEOUT))?;
        socket.set_tcp_nodelay(true)?;
        let src_port = socket
            .local_addr()?
            .as_socket()
            .map_or(src_port, |a| a.port());
        Ok(Self {
            stream: socket.into(),
            dst,
            src_port,
            first_answer: None,
        })
    }

    pub fn src_port(&self) -> u16 {
        self.src_port
    }

    pub fn dst(&self) -> SocketAddr {
        self.dst
    }

    /// The backend name of the first answer on this connection.
    pub fn first_answer(&self) -> Option<&str> {
        self.first_answer.as_deref()
    }

    /// Sends one line and returns the answering backend's name.
    pub fn ask(&mut self) -> anyhow::Result<String> {
        self.ask_padded(0)
    }

    /// Like [`Connection::ask`], with `padding` extra bytes in the line (at most 4000, the
    /// test server's limit being 4096): a line longer than one segment makes full-size
    /// packets, which must still fit once lbx has encapsulated them.
    pub fn ask_padded(&mut self, padding: usize) -> anyhow::Result<String> {
        if padding > 4000 {
            bail!("padding {padding} is over the limit of 4000 bytes");
        }
        let what = || {
            format!(
                "TCP connection from source port {} to {}",
                self.src_port, self.dst
            )
        };
        let mut line = b"which backend?".to_vec();
        line.resize(line.len() + padding, b'.');
        line.push(b'\n');
        self.stream
            .write_all(&line)
            .with_context(|| format!("{}: send", what()))?;
        let mut answer = Vec::new();
        let mut buf = [0u8; 128];
        while !answer.ends_with(b"\n") {
            let n = self
                .stream
                .read(&mut buf)
                .with_context(|| format!("{}: receive", what()))?;
            if n == 0 {
                bail!("{}: closed by the peer before answering", what());
            }
            answer.extend_from_slice(&buf[..n]);
            if answer.len() > 1024 {
                bail!("{}: answer longer than 1024 bytes", what());
            }
        }
        let name = String::from_utf8_lossy(&answer).trim().to_owned();
        self.first_answer.get_or_insert_with(|| name.clone());
        Ok(name)
    }
}

impl Connection {
    /// Asks for an answer of `size` bytes (`bulk N`: a line naming the backend, then `size`
    /// filler bytes), which the backend sends in full-size segments; returns the backend's
    /// name once every byte has arrived. Fails if the whole answer has not arrived within
    /// `limit`, saying how much had.
    pub fn ask_bulk(&mut self, size: usize, limit: Duration) -> anyhow::Result<String> {
        if size > MAX_BULK {
            bail!("bulk answer of {size} bytes is over the limit of {MAX_BULK}");
        }
        let what = format!(
            "TCP connection from source port {} to {}",
            self.src_port, self.dst
        );
        self.stream
            .write_all(format!("bulk {size}\n").as_bytes())
            .with_context(|| format!("{what}: send"))?;
        let deadline = Instant::now() + limit;
        let mut header = Vec::new();
        let mut body = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        while body < size || !header.ends_with(b"\n") {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{what}: {body} of {size} bytes of the bulk answer arrived within \
                     {limit:?}"
                );
            }
            self.stream.set_read_timeout(Some(left))?;
            let n = match self.stream.read(&mut buf) {
                Ok(0) => bail!("{what}: closed by the peer after {body} of {size} bytes"),
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(e).with_context(|| format!("{what}: receive")),
            };
            let mut chunk = &buf[..n];
            if !header.ends_with(b"\n") {
                let end = chunk.iter().position(|&b| b == b'\n').map_or(n, |i| i + 1);
                header.extend_from_slice(&chunk[..end]);
                chunk = &chunk[end..];
                if header.len() > 1024 {
                    bail!("{what}: bulk answer's first line is longer than 1024 bytes");
                }
            }
            if let Some(bad) = chunk.iter().find(|&&b| b != BULK_FILLER) {
                bail!("{what}: bulk answer has byte {bad:#04x} after {body} good ones");
            }
            body += chunk.len();
            if body > size {
                bail!("{what}: bulk answer is longer than the {size} bytes asked for");
            }
        }
        self.stream.set_read_timeout(Some(IO_TIMEOUT))?;
        let header = String::from_utf8_lossy(&header).trim().to_owned();
        let name = header
            .strip_suffix(&format!(" {size}"))
            .with_context(|| format!("{what}: bulk answer begins {header:?}, not `NAME {size}`"))?
            .to_owned();
        self.first_answer.get_or_insert_with(|| name.clone());
        Ok(name)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
    }
}

/// Pings `dst` from the calling thread's namespace with a raw ICMP socket.
fn ping(dst: IpAddr, count: u16) -> anyhow::Result<u16> {
    static NEXT_ID: AtomicU16 = AtomicU16::new(0);
    // An ICMP identifier is 16 bits; the low bits of the pid are unique enough.
    let pid_bits = u16::try_from(std::process::id() & 0xffff).unwrap_or(0);
    let id = pid_bits ^ NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let (domain, protocol, request_type, reply_type) = match dst {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4, 8u8, 0u8),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6, 128, 129),
    };
    let socket = Socket::new(domain, Type::RAW, Some(protocol)).context("raw ICMP socket")?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let target = SockAddr::from(SocketAddr::new(dst, 0));
    let mut answered = 0;
    for seq in 0..count {
        let mut packet = vec![request_type, 0, 0, 0];
        packet.extend_from_slice(&id.to_be_bytes());
        packet.extend_from_slice(&seq.to_be_bytes());
        packet.extend_from_slice(b"lbx-tests ping..");
        if dst.is_ipv4() {
            // The kernel fills in ICMPv6 checksums itself, but not ICMPv4 ones.
            let sum = internet_checksum(&packet);
            packet[2..4].copy_from_slice(&sum.to_be_bytes());
        }
        socket
            .send_to(&packet, &target)
            .with_context(|| format!("ping {dst}"))?;
        let deadline = Instant::now() + PING_TIMEOUT;
        while Instant::now() < deadline {
            let mut raw = [std::mem::MaybeUninit::<u8>::uninit(); 1500];
            let (n, from) = match socket.recv_from(&mut raw) {
                Ok(r) => r,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(e).context("ping: receive"),
            };
            if from.as_socket().map(|a| a.ip()) != Some(dst) {
                continue;
            }
            // SAFETY: recv_from initialised the first `n` bytes.
            let buf: Vec<u8> = raw[..n]
                .iter()
                .map(|b| unsafe { b.assume_init() })
                .collect();
            // Raw IPv4 sockets deliver the IP header too; IPv6 ones do not.
            let icmp = if dst.is_ipv4() {
                let header = buf.first().map_or(0, |b| usize::from(b & 0x0f) * 4);
                buf.get(header..).unwrap_or_default()
            } else {
                &buf[..]
            };
            if icmp.len() >= 8
                && icmp[0] == reply_type
                && icmp[4..6] == id.to_be_bytes()
                && icmp[6..8] == seq.to_be_bytes()
            {
                answered += 1;
                break;
            }
        }
    }
    Ok(answered)
}

/// RFC 1071 checksum.
fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).expect("folded to 16 bits above")
}
