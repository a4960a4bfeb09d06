//! The benchmark's report: the JSON document, the table on the terminal (and in Markdown for
//! the README), and the targets, each judged met or not met from the numbers.

use serde::{Deserialize, Serialize};

use super::harness::{self, RunResult};
use super::scenario::{Policy, REQUEST_TIMEOUT_MS, Scenario, WARMUP_S};

/// Other programs' mean CPU share above which a run counts as disturbed.
pub const DISTURBED_PCT: f64 = 15.0;

/// Everything `adaptive.json` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// Seconds since the Unix epoch when the run ended.
    pub finished_unix_s: u64,
    pub settings: Settings,
    pub scenarios: Vec<Scenario>,
    pub runs: Vec<RunResult>,
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Settings {
    /// How many lb nodes balanced: 1, or a cluster of that many behind an ECMP router.
    #[serde(default = "one")]
    pub lb_nodes: usize,
    /// The network, in words.
    #[serde(default)]
    pub network: String,
    pub health_check: String,
    pub request_timeout_ms: u64,
    pub warmup_s: f64,
    pub percentiles: String,
    pub oracle: String,
    pub adaptive: String,
}

fn one() -> usize {
    1
}

impl Settings {
    pub fn current(adaptive_available: bool, lb_nodes: usize) -> Self {
        Self {
            lb_nodes,
            network: if lb_nodes > 1 {
                format!(
                    "cluster: {lb_nodes} lb nodes in cluster mode behind an ECMP router (each \
                     sees about 1/{lb_nodes} of the flows), one configuration and one set of \
                     weights through a 3-member etcd; changes made on node 1, status read on \
                     node 1"
                )
            } else {
                "one lb".into()
            },
            health_check: format!(
                "http GET /health on the backend's own address, interval {} ms, timeout {} ms, \
                 fall {}, rise {}",
                harness::HEALTH_INTERVAL_MS,
                harness::HEALTH_TIMEOUT_MS,
                harness::HEALTH_FALL,
                harness::HEALTH_RISE
            ),
            request_timeout_ms: REQUEST_TIMEOUT_MS,
            warmup_s: WARMUP_S,
            percentiles: format!(
                "of answered requests due after the first {WARMUP_S} s; failures (timeouts, \
                 refusals, 503s) count in the error rate"
            ),
            oracle: "weights = true capacities, updated the moment a capacity changes; a dead \
                     backend drained from its death to its restart"
                .into(),
            adaptive: if adaptive_available {
                "`lbx vip adaptive VIP` with its defaults, operator weights 1 (caps)".into()
            } else {
                "not run: this lbx has no `lbx vip adaptive`".into()
            },
        }
    }
}

/// One of the targets, judged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    pub scenario: String,
    pub what: String,
    /// The measured value and the limit it is held to (ms or s, as `what` says).
    pub value: Option<f64>,
    pub limit: Option<f64>,
    /// `None` when it could not be judged (a run missing).
    pub met: Option<bool>,
}

impl Report {
    pub fn run(&self, scenario: &str, policy: Policy) -> Option<&RunResult> {
        self.runs
            .iter()
            .find(|r| r.scenario == scenario && r.policy == policy.name())
    }

    /// Judges the targets on the runs.
    pub fn judge(&mut self) {
        let mut targets = Vec::new();
        let p99 = |s: &str, p: Policy| self.run(s, p)?.summary.as_ref()?.p99_ms;
        for s in ["heterogeneous", "degradation"] {
            if !self.scenarios.iter().any(|x| x.name == s) {
                continue;
            }
            let adaptive = p99(s, Policy::Adaptive);
            for (base, factor, what) in [
                (
                    Policy::StaticEqual,
                    0.5,
                    "adaptive p99 <= 0.5 x static-equal p99 (ms)",
                ),
                (
                    Policy::StaticEqualHttp,
                    0.5,
                    "adaptive p99 <= 0.5 x static-equal-http p99 (ms)",
                ),
                (Policy::Oracle, 1.2, "adaptive p99 <= 1.2 x oracle p99 (ms)"),
            ] {
                let limit = p99(s, base).map(|v| v * factor);
                targets.push(Target {
                    scenario: s.into(),
                    what: what.into(),
                    value: adaptive,
                    limit,
                    met: adaptive.zip(limit).map(|(a, l)| a <= l),
                });
            }
        }
        if self.scenarios.iter().any(|x| x.name == "failure") {
            for p in Policy::ALL {
                let removal = self
                    .run("failure", p)
                    .and_then(|r| r.removal.as_ref())
                    .map(|r| r.last_request_after_s);
                let limit = harness::fall_time_s();
                targets.push(Target {
                    scenario: "failure".into(),
                    what: format!(
                        "{}: no new request reaches the dead backend after the health \
                         check's fall time (s)",
                        p.name()
                    ),
                    value: removal,
                    limit: Some(limit),
                    met: removal.map(|r| r <= limit),
                });
            }
        }
        for s in &self.scenarios {
            let errors = self
                .run(&s.name, Policy::Adaptive)
                .and_then(|r| r.unexplained_connection_errors)
                .map(|e| e as f64);
            targets.push(Target {
                scenario: s.name.clone(),
                what: "adaptive: connection errors not caused by a dead backend \
                       (table changes)"
                    .into(),
                value: errors,
                limit: Some(0.0),
                met: errors.map(|e| e == 0.0),
            });
        }
        self.targets = targets;
    }

    /// The results table, plain text.
    pub fn table(&self) -> String {
        let mut out = self.network_line();
        out.push_str(&format!(
            "{:<14} {:<13} {:>8} {:>8} {:>9} {:>8} {:>7} {:>17} {:>6} {:>15} {:>9}\n",
            "SCENARIO",
            "POLICY",
            "P50 ms",
            "P99 ms",
            "P99.9 ms",
            "ERRORS",
            "REQS",
            "SHARE b1/b2/b3 %",
            "DOWN s",
            "CPU all/other %",
            "GEN LATE"
        ));
        for r in &self.runs {
            let head = format!("{:<14} {:<13}", r.scenario, r.policy);
            if let Some(why) = r.skipped.as_ref().or(r.error.as_ref()) {
                let kind = if r.skipped.is_some() {
                    "skipped"
                } else {
                    "FAILED"
                };
                out.push_str(&format!("{head} {kind}: {}\n", one_line(why)));
                continue;
            }
            let Some(s) = &r.summary else { continue };
            out.push_str(&format!(
                "{head} {:>8} {:>8} {:>9} {:>7.2}% {:>7} {:>17} {:>6} {:>15} {:>9}\n",
                ms(s.p50_ms),
                ms(s.p99_ms),
                ms(s.p999_ms),
                100.0 * s.error_rate,
                s.requests,
                shares(s),
                format!("{:.1}", r.live_down_s),
                cpu(r),
                ms(s.generator_late_p99_ms),
            ));
        }
        for r in &self.runs {
            if let Some(rem) = &r.removal {
                out.push_str(&format!(
                    "failure/{}: last request to the dead backend {:.3} s after its death \
                     ({} requests reached it)\n",
                    r.policy, rem.last_request_after_s, rem.failed_requests
                ));
            }
        }
        out.push_str(
            "\nERRORS: failed share of requests; SHARE: answers per backend; DOWN s: seconds live \
             backends were out of the table (health checks on overloaded ones); CPU: host busy, and \
             the part programs other than the benchmark's used, mean %; GEN LATE: the load \
             generator's p99 lateness, ms\n",
        );
        let disturbed: Vec<String> = self
            .runs
            .iter()
            .filter(|r| others_cpu_pct(r).is_some_and(|o| o > DISTURBED_PCT))
            .map(|r| format!("{}/{}", r.scenario, r.policy))
            .collect();
        if !disturbed.is_empty() {
            out.push_str(&format!(
                "WARNING: other programs used more than {DISTURBED_PCT}% of the host's CPU \
                 during {}: those numbers are disturbed; rerun on a quiet host\n",
                disturbed.join(", ")
            ));
        }
        out.push_str("\nTARGETS (from the issue)\n");
        for t in &self.targets {
            out.push_str(&format!(
                "  [{}] {}: {} (measured {}, limit {})\n",
                match t.met {
                    Some(true) => "met",
                    Some(false) => "NOT MET",
                    None => "not judged",
                },
                t.scenario,
                t.what,
                t.value.map_or("-".into(), |v| format!("{v:.3}")),
                t.limit.map_or("-".into(), |v| format!("{v:.3}")),
            ));
        }
        out
    }

    /// A cluster run's first line: what balanced (nothing for a single lb).
    fn network_line(&self) -> String {
        if self.settings.lb_nodes > 1 {
            format!("CLUSTER RUN: {}\n\n", self.settings.network)
        } else {
            String::new()
        }
    }

    /// The results table in Markdown, for the README.
    pub fn markdown(&self) -> String {
        let mut out = self.network_line();
        out.push_str(
            "| scenario | policy | p50 ms | p99 ms | p99.9 ms | errors | share b1/b2/b3 % | \
             host CPU used by others |\n|---|---|---:|---:|---:|---:|---|---:|\n",
        );
        for r in &self.runs {
            if let Some(why) = r.skipped.as_ref().or(r.error.as_ref()) {
                out.push_str(&format!(
                    "| {} | {} | {} ||||||\n",
                    r.scenario,
                    r.policy,
                    one_line(why)
                ));
                continue;
            }
            let Some(s) = &r.summary else { continue };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {:.2}% | {} | {} |\n",
                r.scenario,
                r.policy,
                ms(s.p50_ms),
                ms(s.p99_ms),
                ms(s.p999_ms),
                100.0 * s.error_rate,
                shares(s),
                others_cpu_pct(r).map_or("-".into(), |o| format!("{o:.0}%"))
            ));
        }
        out.push('\n');
        for r in &self.runs {
            if let Some(rem) = &r.removal {
                out.push_str(&format!(
                    "- failure, {}: the last request reached the dead backend {:.3} s after \
                     its death ({} requests reached it)\n",
                    r.policy, rem.last_request_after_s, rem.failed_requests
                ));
            }
        }
        for t in &self.targets {
            out.push_str(&format!(
                "- {}: {}: {} (measured {}, limit {})\n",
                t.scenario,
                t.what,
                match t.met {
                    Some(true) => "**met**",
                    Some(false) => "**not met**",
                    None => "not judged",
                },
                t.value.map_or("-".into(), |v| format!("{v:.3}")),
                t.limit.map_or("-".into(), |v| format!("{v:.3}")),
            ));
        }
        out
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

fn shares(s: &super::stats::Summary) -> String {
    let total: u64 = s.answered_by.values().sum();
    if total == 0 {
        return "-".into();
    }
    (1..=3)
        .map(|i| {
            let n = s
                .answered_by
                .get(&crate::backend_name(i))
                .copied()
                .unwrap_or(0);
            format!("{:.0}", 100.0 * n as f64 / total as f64)
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Mean host CPU busy, and the part other programs used: `95/60`.
fn cpu(r: &RunResult) -> String {
    match (mean(&r.cpu_busy_pct), mean(&r.cpu_ours_pct)) {
        (Some(all), Some(ours)) => format!("{all:.0}/{:.0}", (all - ours).max(0.0)),
        _ => "-".into(),
    }
}

/// Mean share of the host's CPU that programs other than the run's own used.
pub fn others_cpu_pct(r: &RunResult) -> Option<f64> {
    Some((mean(&r.cpu_busy_pct)? - mean(&r.cpu_ours_pct)?).max(0.0))
}

fn one_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default();
    if line.chars().count() > 100 {
        format!("{}...", line.chars().take(100).collect::<String>())
    } else {
        line.to_owned()
    }
}
