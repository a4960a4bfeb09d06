//! What the load generator records for every request, and the CSV it writes them to.

use std::fmt;
use std::str::FromStr;

use anyhow::{Context as _, bail};

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// Answered with 200.
    Ok,
    /// No whole answer within the request timeout.
    Timeout,
    /// The connection was refused (nothing listens: a dead server).
    Refused,
    /// The connection was reset, or closed before a whole answer.
    Reset,
    /// Answered with another status (503: the server's queue was full).
    Http(u16),
    /// Any other socket error.
    Io,
    /// Not sent: the generator already had its maximum of requests in flight.
    ClientBusy,
}

impl Outcome {
    /// A failure of the connection itself rather than of a slow or full server: what a table
    /// change that sent a flow to the wrong place, or a dead backend, would cause.
    pub fn is_connection_error(self) -> bool {
        matches!(self, Outcome::Refused | Outcome::Reset | Outcome::Io)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok => f.write_str("ok"),
            Outcome::Timeout => f.write_str("timeout"),
            Outcome::Refused => f.write_str("refused"),
            Outcome::Reset => f.write_str("reset"),
            Outcome::Http(code) => write!(f, "http_{code}"),
            Outcome::Io => f.write_str("io"),
            Outcome::ClientBusy => f.write_str("client_busy"),
        }
    }
}

impl FromStr for Outcome {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "ok" => Outcome::Ok,
            "timeout" => Outcome::Timeout,
            "refused" => Outcome::Refused,
            "reset" => Outcome::Reset,
            "io" => Outcome::Io,
            "client_busy" => Outcome::ClientBusy,
            other => match other.strip_prefix("http_").map(str::parse) {
                Some(Ok(code)) => Outcome::Http(code),
                _ => bail!("unknown outcome {other:?}"),
            },
        })
    }
}

/// One request.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// When it was due, in seconds from the start of the run (open loop: the schedule's time,
    /// whatever happened to earlier requests).
    pub at_s: f64,
    /// How late the generator actually started it (a busy generator shows here).
    pub lateness_ms: f64,
    /// From when it was due to the whole answer or the failure. Counting from the due time
    /// rather than the actual start keeps a late generator from hiding latency.
    pub latency_ms: f64,
    /// The backend that answered; empty when none did.
    pub backend: String,
    pub outcome: Outcome,
}

pub const CSV_HEADER: &str = "at_s,lateness_ms,latency_ms,backend,outcome";

impl Record {
    pub fn to_csv(&self) -> String {
        format!(
            "{:.6},{:.3},{:.3},{},{}",
            self.at_s, self.lateness_ms, self.latency_ms, self.backend, self.outcome
        )
    }

    pub fn from_csv(line: &str) -> anyhow::Result<Self> {
        let fields: Vec<&str> = line.split(',').collect();
        let [at, late, latency, backend, outcome] = fields[..] else {
            bail!("{line:?} does not have the 5 fields of {CSV_HEADER}");
        };
        let num = |s: &str| -> anyhow::Result<f64> {
            s.parse()
                .with_context(|| format!("bad number {s:?} in {line:?}"))
        };
        Ok(Self {
            at_s: num(at)?,
            lateness_ms: num(late)?,
            latency_ms: num(latency)?,
            backend: backend.to_owned(),
            outcome: outcome.parse()?,
        })
    }
}

/// Writes records as CSV, header first.
pub fn to_csv(records: &[Record]) -> String {
    let mut out = String::with_capacity(records.len() * 48 + CSV_HEADER.len() + 1);
    out.push_str(CSV_HEADER);
    out.push('\n');
    for r in records {
        out.push_str(&r.to_csv());
        out.push('\n');
    }
    out
}

/// Reads what [`to_csv`] wrote.
pub fn from_csv(text: &str) -> anyhow::Result<Vec<Record>> {
    let mut lines = text.lines();
    if lines.next() != Some(CSV_HEADER) {
        bail!("not a load generator CSV: the first line is not {CSV_HEADER:?}");
    }
    lines
        .filter(|l| !l.is_empty())
        .map(Record::from_csv)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_csv() {
        let records = vec![
            Record {
                at_s: 0.5,
                lateness_ms: 0.1,
                latency_ms: 4.25,
                backend: "backend-1".into(),
                outcome: Outcome::Ok,
            },
            Record {
                at_s: 1.0,
                lateness_ms: 0.0,
                latency_ms: 2000.0,
                backend: String::new(),
                outcome: Outcome::Timeout,
            },
            Record {
                at_s: 1.5,
                lateness_ms: 0.0,
                latency_ms: 3.0,
                backend: "backend-3".into(),
                outcome: Outcome::Http(503),
            },
        ];
        assert_eq!(from_csv(&to_csv(&records)).unwrap(), records);
        assert!(from_csv("x\n").is_err());
        assert!("http_abc".parse::<Outcome>().is_err());
        assert!(Outcome::Refused.is_connection_error() && !Outcome::Timeout.is_connection_error());
    }
}
