//! A real Prometheus server (Debian's `prometheus`) in one of the test's namespaces,
//! scraping lbx there, and the few HTTP calls the tests make to it and to lbx's endpoint.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

use crate::{netns::Netns, process::Process};

/// Where Debian installs the server and its tool.
pub const PROMETHEUS: &str = "/usr/bin/prometheus";
pub const PROMTOOL: &str = "/usr/bin/promtool";
/// Answers larger than this are cut: no answer of these tests comes near it.
const MAX_ANSWER: u64 = 64 << 20;
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// One HTTP/1.1 exchange with `addr` from inside `netns`: `(status, headers, body)`.
pub fn http(
    netns: &Netns,
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, String, String)> {
    let mut request =
        format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    let raw = netns.run(|| -> anyhow::Result<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
        s.set_read_timeout(Some(HTTP_TIMEOUT))?;
        s.write_all(request.as_bytes())?;
        let mut answer = Vec::new();
        s.take(MAX_ANSWER).read_to_end(&mut answer)?;
        Ok(answer)
    })??;
    let text = String::from_utf8(raw).context("an HTTP answer that is not UTF-8")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no end of headers in {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    // Chunked bodies (Prometheus sends them) are joined back together.
    let chunked = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Ok((status, head.to_owned(), body))
}

fn dechunk(mut rest: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest
            .split_once("\r\n")
            .context("a chunk without its size")?;
        let size = usize::from_str_radix(size.trim(), 16).context("a chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        ensure!(after.len() >= size, "a chunk cut short");
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
}

/// `s` for a URL's query string.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server scraping `targets` every second as job `lbx`, with `rules` loaded;
/// it listens on `listen` inside `netns` and keeps its data under `dir`.
pub struct Prometheus<'a> {
    netns: &'a Netns,
    listen: SocketAddr,
    process: Process,
}

impl<'a> Prometheus<'a> {
    pub fn start(
        netns: &'a Netns,
        dir: &Path,
        listen: SocketAddr,
        targets: &[SocketAddr],
        rules: &Path,
    ) -> anyhow::Result<Self> {
        let config = dir.join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - '{}'\n\
                 scrape_configs:\n  - job_name: lbx\n    static_configs:\n      - targets: [{}]\n",
                rules.display(),
                targets.join(", ")
            ),
        )?;
        let data: PathBuf = dir.join("prometheus-data");
        let mut cmd = netns.command(Path::new(PROMETHEUS));
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address={listen}"))
            .arg("--storage.tsdb.retention.time=1h");
        let mut process = Process::spawn("prometheus", cmd, dir)?;
        let ready = || {
            http(netns, listen, "GET", "/-/ready", &[]).is_ok_and(|(status, _, _)| status == 200)
        };
        process.wait_until("Prometheus ready", Duration::from_secs(30), ready)?;
        Ok(Self {
            netns,
            listen,
            process,
        })
    }

    /// The log's last lines, for a failure message.
    pub fn tail(&self) -> String {
        self.process.tail(20)
    }

    /// `GET path?params` of the HTTP API: its `data`, or the error it answered.
    pub fn api(&self, path: &str, params: &[(&str, &str)]) -> anyhow::Result<Value> {
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{k}={}", url_encode(v)))
            .collect();
        let target = format!("{path}?{}", query.join("&"));
        let (status, _, body) = http(self.netns, self.listen, "GET", &target, &[])?;
        let v: Value = serde_json::from_str(&body)
            .with_context(|| format!("Prometheus answered {status}: {body}"))?;
        if v["status"] != "success" {
            bail!("Prometheus refused {params:?}: {v}");
        }
        Ok(v["data"].clone())
    }

    /// The series an instant query returns now.
    pub fn query(&self, expr: &str) -> anyhow::Result<Vec<Value>> {
        let data = self.api("/api/v1/query", &[("query", expr)])?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The series a range query returns over the last `span`, a point per `step`.
    pub fn query_range(
        &self,
        expr: &str,
        span: Duration,
        step: Duration,
    ) -> anyhow::Result<Vec<Value>> {
        let end = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs_f64();
        let start = end - span.as_secs_f64();
        let data = self.api(
            "/api/v1/query_range",
            &[
                ("query", expr),
                ("start", &format!("{start:.3}")),
                ("end", &format!("{end:.3}")),
                ("step", &format!("{}", step.as_secs_f64())),
            ],
        )?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// Waits until `expr` returns at least one series; returns them.
    pub fn wait_for(&self, expr: &str, timeout: Duration) -> anyhow::Result<Vec<Value>> {
        let start = Instant::now();
        loop {
            let found = self.query(expr)?;
            if !found.is_empty() {
                return Ok(found);
            }
            if start.elapsed() > timeout {
                bail!(
                    "no series for {expr} within {timeout:?}; Prometheus log:\n{}",
                    self.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// One sample of a text exposition: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// The samples of a Prometheus text exposition (comments skipped). Label values may hold
/// escaped quotes and backslashes.
pub fn parse_exposition(text: &str) -> anyhow::Result<Vec<Sample>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, mut rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => bail!("a sample without a value: {line:?}"),
        };
        let mut labels = std::collections::BTreeMap::new();
        if let Some(r) = rest.strip_prefix('{') {
            rest = r;
            loop {
                rest = rest.trim_start_matches([',', ' ']);
                if let Some(r) = rest.strip_prefix('}') {
                    rest = r;
                    break;
                }
                let (key, r) = rest
                    .split_once("=\"")
                    .with_context(|| format!("a label without a value in {line:?}"))?;
                let mut value = String::new();
                let mut chars = r.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c)) => value.push(c),
                            None => bail!("an escape at the end of {line:?}"),
                        },
                        Some((i, '"')) => break i,
                        Some((_, c)) => value.push(c),
                        None => bail!("an unterminated label value in {line:?}"),
                    }
                };
                labels.insert(key.to_owned(), value);
                rest = &r[end + 1..];
            }
        }
        let value = rest
            .split_whitespace()
            .next()
            .with_context(|| format!("a sample without a value: {line:?}"))?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .with_context(|| format!("a value that is not a number in {line:?}"))?,
        };
        out.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(out)
}

/// The value of the one sample of `name` whose labels include `labels`.
pub fn sample_value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = samples.iter().filter(|s| {
        s.name == name
            && labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
    });
    let first = found.next()?;
    found.next().is_none().then_some(first.value)
}

/// The rules Prometheus loaded: `(name, query, health, last error)` of each.
pub fn loaded_rules(rules: &Value) -> Vec<(String, String, String, String)> {
    rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
            (s("name"), s("query"), s("health"), s("lastError"))
        })
        .collect()
}
