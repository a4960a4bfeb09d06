//! The backend-side load report (`lbx report`) and the agent's reader of it: one line per
//! connection, `utilisation=0.42 inflight=17`, in the spirit of HAProxy's agent-check.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result};

/// What a backend says about itself.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Report {
    /// Busy share of its CPUs over the last second, 0..1.
    pub utilisation: f64,
    /// Established connections to its service port (requests in flight).
    pub inflight: u64,
}

impl Report {
    pub fn parse(line: &str) -> Option<Report> {
        let mut utilisation = None;
        let mut inflight = None;
        for field in line.split_whitespace() {
            match field.split_once('=') {
                Some(("utilisation", v)) => utilisation = v.parse().ok(),
                Some(("inflight", v)) => inflight = v.parse().ok(),
                _ => {}
            }
        }
        Some(Report {
            utilisation: utilisation?,
            inflight: inflight?,
        })
    }
}

/// (busy, total) jiffies from the first line of /proc/stat.
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3)? + v.get(4).unwrap_or(&0);
    Some((total - idle, total))
}

/// Established TCP connections whose local port is `port`.
fn established(port: u16) -> u64 {
    let mut n = 0;
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            // State 01 is ESTABLISHED.
            if local_port == Some(port) && f.get(3) == Some(&"01") {
                n += 1;
            }
        }
    }
    n
}

/// Serves reports on `listen` until killed. `service_port` names the port whose
/// connections count as in flight.
pub fn serve(listen: SocketAddr, service_port: Option<u16>) -> Result<()> {
    let listener =
        TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let busy_permille = Arc::new(AtomicU64::new(0));
    let sampler = busy_permille.clone();
    std::thread::spawn(move || {
        let mut last = cpu_times();
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let now = cpu_times();
            if let (Some((b0, t0)), Some((b1, t1))) = (last, now)
                && t1 > t0
            {
                sampler.store((b1 - b0) * 1000 / (t1 - t0), Ordering::Relaxed);
            }
            last = now;
        }
    });
    crate::say!("lbx report listening on {listen}");
    for stream in listener.incoming() {
        let Ok(mut s) = stream else { continue };
        let u = busy_permille.load(Ordering::Relaxed) as f64 / 1000.0;
        let inflight = service_port.map_or(0, established);
        let _ = writeln!(s, "utilisation={u:.3} inflight={inflight}");
    }
    Ok(())
}

/// Asks a backend's reporter, within `timeout`.
pub fn fetch(addr: SocketAddr, timeout: Duration) -> Option<Report> {
    let s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    Report::parse(&line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_reports() {
        assert_eq!(
            Report::parse("utilisation=0.420 inflight=17\n"),
            Some(Report {
                utilisation: 0.42,
                inflight: 17
            })
        );
        assert_eq!(Report::parse("inflight=3"), None);
        assert_eq!(Report::parse("garbage"), None);
    }

    #[test]
    fn serves_and_fetches_on_loopback() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        std::thread::spawn(move || serve(addr, Some(addr.port())));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let report = loop {
            if let Some(r) = fetch(addr, Duration::from_millis(200)) {
                break r;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no report from {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!((0.0..=1.0).contains(&report.utilisation), "{report:?}");
    }
}
