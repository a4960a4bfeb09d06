//! Health probes: one TCP connect or HTTP GET to a backend, and the prober that runs them
//! at each check's interval for the backends the configuration names.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::{mpsc, watch},
    task::JoinHandle,
    time::timeout,
};

use crate::config::{CheckKind, HealthCheck, VipId};

/// A backend to probe, and how.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub vip: VipId,
    pub backend: IpAddr,
    pub addr: SocketAddr,
    pub check: HealthCheck,
}

/// A probe's result, as the prober hands it to whoever runs the state machines.
#[derive(Clone, Debug)]
pub struct Probed {
    pub vip: VipId,
    pub backend: IpAddr,
    pub result: ProbeResult,
}

/// What one probe found.
#[derive(Clone, Debug)]
pub struct ProbeResult {
    pub ok: bool,
    /// When it was sent: the agent may handle the result a little later.
    pub sent: Instant,
    /// Time to the answer (or to the failure).
    pub latency: Duration,
    /// Why it failed, for logs and `lbx status`.
    pub detail: String,
    /// It failed by getting no answer in time (a queue longer than the timeout, or a
    /// backend gone silent), as opposed to a refusal or a wrong answer.
    pub timed_out: bool,
}

/// Probes `target` once as `check` says, within its timeout.
pub async fn probe(target: SocketAddr, check: &HealthCheck) -> ProbeResult {
    let start = Instant::now();
    let limit = Duration::from_millis(check.timeout_ms);
    let (outcome, timed_out) = match timeout(limit, probe_inner(target, check)).await {
        Ok(r) => (r, false),
        Err(_) => (
            Err(format!("no answer within {} ms", check.timeout_ms)),
            true,
        ),
    };
    ProbeResult {
        ok: outcome.is_ok(),
        sent: start,
        latency: start.elapsed(),
        detail: outcome.err().unwrap_or_default(),
        timed_out,
    }
}

async fn probe_inner(target: SocketAddr, check: &HealthCheck) -> Result<(), String> {
    let mut stream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect to {target}: {e}"))?;
    if check.kind == CheckKind::Tcp {
        return Ok(());
    }
    let host = match target {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lbx-health\r\nConnection: close\r\n\r\n",
        check.path
    );
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    // Bounded read: a health page is small; 64 KiB is plenty to find status and text.
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    while buf.len() < 64 * 1024 {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if check.body_contains.is_none() && buf.windows(2).any(|w| w == b"\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let status: u16 = text
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            format!(
                "not an HTTP answer: {:?}",
                text.lines().next().unwrap_or("")
            )
        })?;
    if status != check.expect_status {
        return Err(format!(
            "HTTP status {status}, expected {}",
            check.expect_status
        ));
    }
    if let Some(want) = &check.body_contains
        && !text.contains(want.as_str())
    {
        return Err(format!("body does not contain {want:?}"));
    }
    Ok(())
}

/// Probes every target at its interval and sends the results to the agent, following the
/// target list as the configuration changes. Returns when the agent is gone.
pub async fn run_probes<E>(mut targets: watch::Receiver<Vec<Target>>, events: mpsc::Sender<E>)
where
    E: From<Probed> + Send + 'static,
{
    let mut probers: HashMap<(VipId, IpAddr), (Target, JoinHandle<()>)> = HashMap::new();
    loop {
        let wanted: Vec<Target> = targets.borrow_and_update().clone();
        probers.retain(|key, (t, handle)| {
            let keep = wanted.iter().any(|w| (w.vip, w.backend) == *key && w == t);
            if !keep {
                handle.abort();
            }
            keep
        });
        for t in wanted {
            let key = (t.vip, t.backend);
            if probers.contains_key(&key) {
                continue;
            }
            let events = events.clone();
            let target = t.clone();
            let handle = tokio::spawn(async move {
                let mut every =
                    tokio::time::interval(Duration::from_millis(target.check.interval_ms));
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    let r = probe(target.addr, &target.check).await;
                    let probed = Probed {
                        vip: target.vip,
                        backend: target.backend,
                        result: r,
                    };
                    if events.send(E::from(probed)).await.is_err() {
                        return;
                    }
                }
            });
            probers.insert(key, (t, handle));
        }
        if targets.changed().await.is_err() {
            break;
        }
    }
    for (_, (_, h)) in probers {
        h.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn probes_a_real_listener() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            for _ in 0..2 {
                let (mut s, _) = l.accept().await.unwrap();
                let mut b = [0u8; 512];
                let _ = s.read(&mut b).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            }
        });
        let tcp = probe(addr, &HealthCheck::default()).await;
        assert!(tcp.ok, "{}", tcp.detail);
        let http = HealthCheck {
            kind: CheckKind::Http,
            body_contains: Some("ok".into()),
            ..Default::default()
        };
        let r = probe(addr, &http).await;
        assert!(r.ok, "{}", r.detail);
        // Nothing listens on the port any more once the listener task ends.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = closed.local_addr().unwrap();
        drop(closed);
        let r = probe(dead, &HealthCheck::default()).await;
        assert!(!r.ok && r.detail.contains("connect"), "{}", r.detail);
        assert!(!r.timed_out, "a refusal is not a timeout");
        // A listener that accepts and never answers: the HTTP probe times out.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let quiet = HealthCheck {
            kind: CheckKind::Http,
            timeout_ms: 50,
            ..Default::default()
        };
        let r = probe(silent.local_addr().unwrap(), &quiet).await;
        assert!(!r.ok && r.timed_out, "{r:?}");
    }
}
