//! From the load generator's records to the numbers of the report: latency percentiles, error
//! rates, per-second series for the plots, and how long a dead backend kept getting requests.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::records::{Outcome, Record};

/// The nearest-rank percentile `q` (0..=100) of sorted values.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    // The small offset keeps float error (99.9 / 100 * 1000 = 999.0000000000001) from
    // moving the rank up by one.
    let rank = (q / 100.0 * sorted.len() as f64 - 1e-9).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// One run's numbers over its measurement window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Requests due in the window.
    pub requests: u64,
    pub ok: u64,
    /// Share of requests that did not end with 200 (timeouts, refusals, resets, 503s).
    pub error_rate: f64,
    /// Failures by kind (`timeout`, `refused`, `http_503`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Latency percentiles of the answered requests, in ms. Failed requests are in
    /// `error_rate` instead: a refusal after 1 ms is not a fast answer.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Answered requests per backend.
    pub answered_by: BTreeMap<String, u64>,
    /// The generator's own lateness (99th percentile, ms): large values mean the host, not the
    /// backends, was the bottleneck.
    pub generator_late_p99_ms: Option<f64>,
}

impl Summary {
    /// The numbers of the records due within `[from_s, to_s)`.
    pub fn of(records: &[Record], from_s: f64, to_s: f64) -> Self {
        let window: Vec<&Record> = records
            .iter()
            .filter(|r| r.at_s >= from_s && r.at_s < to_s)
            .collect();
        let mut latencies: Vec<f64> = window
            .iter()
            .filter(|r| r.outcome == Outcome::Ok)
            .map(|r| r.latency_ms)
            .collect();
        latencies.sort_by(f64::total_cmp);
        let mut lateness: Vec<f64> = window.iter().map(|r| r.lateness_ms).collect();
        lateness.sort_by(f64::total_cmp);
        let mut errors = BTreeMap::new();
        let mut answered_by = BTreeMap::new();
        for r in &window {
            if r.outcome == Outcome::Ok {
                *answered_by.entry(r.backend.clone()).or_insert(0) += 1;
            } else {
                *errors.entry(r.outcome.to_string()).or_insert(0) += 1;
            }
        }
        let requests = window.len() as u64;
        let ok = latencies.len() as u64;
        Self {
            requests,
            ok,
            error_rate: if requests == 0 {
                0.0
            } else {
                (requests - ok) as f64 / requests as f64
            },
            errors,
            p50_ms: percentile(&latencies, 50.0),
            p99_ms: percentile(&latencies, 99.0),
            p999_ms: percentile(&latencies, 99.9),
            max_ms: latencies.last().copied(),
            answered_by,
            generator_late_p99_ms: percentile(&lateness, 99.0),
        }
    }
}

/// Per-second values over a whole run, for the plots (index `i` is second `[i, i+1)`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub p50_ms: Vec<Option<f64>>,
    pub p99_ms: Vec<Option<f64>>,
    pub requests: Vec<u64>,
    pub errors: Vec<u64>,
    /// Answered requests per second and backend.
    pub answered_by: BTreeMap<String, Vec<u64>>,
}

impl Series {
    pub fn of(records: &[Record], duration_s: f64) -> Self {
        let seconds = duration_s.ceil().max(0.0) as usize;
        let mut buckets: Vec<Vec<f64>> = vec![Vec::new(); seconds];
        let mut s = Series {
            requests: vec![0; seconds],
            errors: vec![0; seconds],
            ..Default::default()
        };
        for r in records {
            let Some(i) = (r.at_s >= 0.0)
                .then_some(r.at_s as usize)
                .filter(|&i| i < seconds)
            else {
                continue;
            };
            s.requests[i] += 1;
            if r.outcome == Outcome::Ok {
                buckets[i].push(r.latency_ms);
                s.answered_by
                    .entry(r.backend.clone())
                    .or_insert_with(|| vec![0; seconds])[i] += 1;
            } else {
                s.errors[i] += 1;
            }
        }
        for b in &mut buckets {
            b.sort_by(f64::total_cmp);
            s.p50_ms.push(percentile(b, 50.0));
            s.p99_ms.push(percentile(b, 99.0));
        }
        s
    }
}

/// How long requests kept going to a backend that died at `death_s`: its server stopped, so a
/// new connection that reaches it is refused, and on a network where only it has no server
/// every refusal is one that reached it. (Resets are not counted: a connection moved by a
/// table change is reset too.) Looks at requests due in `[death_s, until_s)`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Removal {
    /// Seconds from the death to the last request that still reached the dead backend; 0 if
    /// none did.
    pub last_request_after_s: f64,
    /// Requests that reached the dead backend.
    pub failed_requests: u64,
}

impl Removal {
    pub fn of(records: &[Record], death_s: f64, until_s: f64) -> Self {
        let failed: Vec<&Record> = records
            .iter()
            .filter(|r| r.at_s >= death_s && r.at_s < until_s && r.outcome == Outcome::Refused)
            .collect();
        Self {
            last_request_after_s: failed.last().map_or(0.0, |r| r.at_s - death_s),
            failed_requests: failed.len() as u64,
        }
    }
}

/// Connection errors (refused, reset, other socket errors) of requests due outside every one
/// of `windows` (`[from_s, to_s)` each): the windows hold the errors something else explains
/// (a dead server, a backend the health checks took out), so with every server up any error
/// left would come from lbx itself, e.g. a table change that moved an open flow.
pub fn connection_errors_outside(records: &[Record], windows: &[(f64, f64)]) -> u64 {
    records
        .iter()
        .filter(|r| {
            r.outcome.is_connection_error()
                && !windows
                    .iter()
                    .any(|&(from, to)| r.at_s >= from && r.at_s < to)
        })
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(at_s: f64, latency_ms: f64, backend: &str, outcome: Outcome) -> Record {
        Record {
            at_s,
            lateness_ms: 0.0,
            latency_ms,
            backend: backend.into(),
            outcome,
        }
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(500.0));
        assert_eq!(percentile(&v, 99.0), Some(990.0));
        assert_eq!(percentile(&v, 99.9), Some(999.0));
        assert_eq!(percentile(&v, 100.0), Some(1000.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn summary_window_errors_and_backends() {
        let records = vec![
            rec(0.5, 100.0, "b1", Outcome::Ok), // before the window
            rec(1.0, 5.0, "b1", Outcome::Ok),
            rec(1.5, 7.0, "b2", Outcome::Ok),
            rec(2.0, 2000.0, "", Outcome::Timeout),
            rec(2.5, 1.0, "b2", Outcome::Http(503)),
        ];
        let s = Summary::of(&records, 1.0, 3.0);
        assert_eq!((s.requests, s.ok), (4, 2));
        assert_eq!(s.error_rate, 0.5);
        assert_eq!(s.errors["timeout"], 1);
        assert_eq!(s.errors["http_503"], 1);
        assert_eq!(s.p50_ms, Some(5.0));
        assert_eq!(s.p99_ms, Some(7.0));
        assert_eq!(s.answered_by["b1"], 1);
    }

    #[test]
    fn series_buckets_by_due_second() {
        let records = vec![
            rec(0.1, 3.0, "b1", Outcome::Ok),
            rec(0.9, 9.0, "b2", Outcome::Ok),
            rec(1.2, 0.0, "", Outcome::Refused),
            rec(5.0, 1.0, "b1", Outcome::Ok), // past the end
        ];
        let s = Series::of(&records, 2.0);
        assert_eq!(s.requests, vec![2, 1]);
        assert_eq!(s.errors, vec![0, 1]);
        assert_eq!(s.p99_ms, vec![Some(9.0), None]);
        assert_eq!(s.answered_by["b1"], vec![1, 0]);
    }

    #[test]
    fn removal_is_the_last_failure_after_the_death() {
        let records = vec![
            rec(9.0, 1.0, "b3", Outcome::Refused), // before the death: not counted
            rec(10.1, 1.0, "", Outcome::Refused),
            rec(10.2, 4.0, "b1", Outcome::Ok),
            rec(10.35, 1.0, "", Outcome::Refused),
            rec(10.4, 1.0, "", Outcome::Reset), // a moved connection, not a refusal
            rec(10.5, 2000.0, "", Outcome::Timeout), // overload, not the dead backend
            rec(30.0, 1.0, "", Outcome::Refused), // after the window
        ];
        let r = Removal::of(&records, 10.0, 20.0);
        assert_eq!(r.failed_requests, 2);
        assert!((r.last_request_after_s - 0.35).abs() < 1e-9);
        assert_eq!(connection_errors_outside(&records, &[(10.0, 20.0)]), 2);
        assert_eq!(connection_errors_outside(&records, &[]), 5);
        assert_eq!(
            connection_errors_outside(&records, &[(8.0, 10.2), (10.3, 40.0)]),
            0
        );
        assert_eq!(Removal::of(&[], 1.0, 2.0).last_request_after_s, 0.0);
    }
}
