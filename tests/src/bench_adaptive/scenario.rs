//! The four scenarios of the proof and the three weighting policies each runs under.

use serde::{Deserialize, Serialize};

/// Port of the benchmark's VIP, and of each capacity server on its backend's own address
/// (where the health checks probe). Not 80: the test network's plain test servers hold that.
pub const PORT: u16 = 8080;
/// Port of each capacity server's control endpoint, on its backend's own address only.
pub const ADMIN_PORT: u16 = 8081;
/// Per-request limit of the load generator.
pub const REQUEST_TIMEOUT_MS: u64 = 2000;
/// Seconds at the start of every run left out of the percentiles (still plotted): every
/// policy starts cold (empty queues; adaptive knows nothing yet).
pub const WARMUP_S: f64 = 10.0;

/// How the VIP's weights are set, and how its backends are health-checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Every backend weight 1, fixed, with a TCP-connect health check: liveness only, as
    /// static L4 balancers are usually run. An overloaded backend still accepts connections
    /// (its kernel does), so it stays in.
    StaticEqual,
    /// Every backend weight 1, fixed, with the same HTTP health check as the others: its
    /// probes wait in the backend's queue and time out when it is overloaded, so the check
    /// takes an overloaded backend out for a while, a crude load signal of its own.
    StaticEqualHttp,
    /// Weights equal to the true capacities, and changed the moment a capacity changes (a
    /// dead backend is drained the moment it dies, and taken back when it starts): the best
    /// a static operator with perfect knowledge could do.
    Oracle,
    /// Weights 1 as caps, and `lbx vip adaptive` moving them.
    Adaptive,
}

impl Policy {
    pub const ALL: [Policy; 4] = [
        Policy::StaticEqual,
        Policy::StaticEqualHttp,
        Policy::Oracle,
        Policy::Adaptive,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Policy::StaticEqual => "static-equal",
            Policy::StaticEqualHttp => "static-equal-http",
            Policy::Oracle => "oracle",
            Policy::Adaptive => "adaptive",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == s)
    }
}

/// Something that happens to a backend during a run (backends are 1-based).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Change {
    /// Its server's capacity changes (`/admin/capacity?rps=N`).
    Capacity { backend: usize, rps: u32 },
    /// Its server is stopped: connections to it are refused, probes fail.
    Stop { backend: usize },
    /// Its server starts again.
    Start { backend: usize },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at_s: f64,
    #[serde(flatten)]
    pub change: Change,
}

impl Event {
    pub fn describe(&self) -> String {
        match self.change {
            Change::Capacity { backend, rps } => {
                format!("backend-{backend} capacity {rps}/s")
            }
            Change::Stop { backend } => format!("backend-{backend} stopped"),
            Change::Start { backend } => format!("backend-{backend} started"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scenario {
    /// 1 to 4, as in the issue.
    pub number: u32,
    /// Short name, used in file names: `heterogeneous`, `degradation`, `failure`, `surge`.
    pub name: String,
    /// Capacity of backend 1, 2, 3 at the start, requests per second.
    pub capacities: Vec<u32>,
    /// Offered load: `(from_s, requests per second)` steps.
    pub rate: Vec<(f64, f64)>,
    pub duration_s: f64,
    pub events: Vec<Event>,
    /// The backend the scenario is about (the slow, degraded, dead one), whose share of the
    /// table the plots show.
    pub focus: usize,
    /// Seed of the arrival times: every policy gets the same requests at the same moments.
    pub seed: u64,
}

impl Scenario {
    /// The four scenarios. Loads are chosen so that with the right weights no backend is ever
    /// more than about 70% busy (which leaves room for the host's own hiccups), while equal
    /// weights overload the slow backend in scenarios 1, 2 and 4, and the survivors of
    /// scenario 3 carry the dead backend's load at 70%.
    pub fn all() -> Vec<Scenario> {
        vec![
            Scenario {
                number: 1,
                name: "heterogeneous".into(),
                capacities: vec![300, 300, 100],
                rate: vec![(0.0, 490.0)],
                duration_s: 40.0,
                events: vec![],
                focus: 3,
                seed: 1,
            },
            Scenario {
                number: 2,
                name: "degradation".into(),
                capacities: vec![300, 300, 300],
                rate: vec![(0.0, 540.0)],
                duration_s: 40.0,
                events: vec![
                    Event {
                        at_s: 15.0,
                        change: Change::Capacity {
                            backend: 1,
                            rps: 150,
                        },
                    },
                    Event {
                        at_s: 27.0,
                        change: Change::Capacity {
                            backend: 1,
                            rps: 300,
                        },
                    },
                ],
                focus: 1,
                seed: 2,
            },
            Scenario {
                number: 3,
                name: "failure".into(),
                capacities: vec![300, 300, 300],
                rate: vec![(0.0, 420.0)],
                duration_s: 40.0,
                events: vec![
                    Event {
                        at_s: 15.0,
                        change: Change::Stop { backend: 3 },
                    },
                    Event {
                        at_s: 27.0,
                        change: Change::Start { backend: 3 },
                    },
                ],
                focus: 3,
                seed: 3,
            },
            Scenario {
                number: 4,
                name: "surge".into(),
                capacities: vec![300, 300, 150],
                rate: vec![(0.0, 260.0), (15.0, 520.0), (27.0, 260.0)],
                duration_s: 40.0,
                events: vec![],
                focus: 3,
                seed: 4,
            },
        ]
    }

    /// What the scenario is: `1 heterogeneous: capacities 300/300/100 req/s; offered 490 req/s
    /// (70%)`, with the offered load's changes.
    pub fn headline(&self) -> String {
        let total: u32 = self.capacities.iter().sum();
        let caps: Vec<String> = self.capacities.iter().map(u32::to_string).collect();
        let rates: Vec<String> = self
            .rate
            .iter()
            .map(|&(at, rate)| {
                let share = 100.0 * rate / f64::from(total.max(1));
                if at == 0.0 {
                    format!("{rate:.0} req/s ({share:.0}%)")
                } else {
                    format!("{rate:.0} ({share:.0}%) from {at:.0} s")
                }
            })
            .collect();
        format!(
            "{} {}: capacities {} req/s; offered {}",
            self.number,
            self.name,
            caps.join("/"),
            rates.join(", ")
        )
    }

    /// What happens to the backends, and when: `backend-3 stopped at 15 s; ...`.
    pub fn timeline(&self) -> String {
        let events: Vec<String> = self
            .events
            .iter()
            .map(|e| format!("{} at {:.0} s", e.describe(), e.at_s))
            .collect();
        events.join("; ")
    }

    /// [`Scenario::headline`] and [`Scenario::timeline`] on one line.
    pub fn title(&self) -> String {
        match self.timeline() {
            t if t.is_empty() => self.headline(),
            t => format!("{}; {t}", self.headline()),
        }
    }

    /// The same scenario with every time multiplied by `f` (a quicker smoke run).
    pub fn scaled(mut self, f: f64) -> Self {
        self.duration_s *= f;
        for step in &mut self.rate {
            step.0 *= f;
        }
        for e in &mut self.events {
            e.at_s *= f;
        }
        self
    }

    /// The rate steps in the load generator's `FROM_S:RATE,...` form.
    pub fn rate_arg(&self) -> String {
        super::schedule::Steps(self.rate.clone()).to_string()
    }

    /// When the focus backend died, and when it came back (scenario 3).
    pub fn death(&self) -> Option<(f64, f64)> {
        let stop = self
            .events
            .iter()
            .find(|e| matches!(e.change, Change::Stop { .. }))?;
        let start = self
            .events
            .iter()
            .find(|e| matches!(e.change, Change::Start { .. }) && e.at_s > stop.at_s)
            .map_or(self.duration_s, |e| e.at_s);
        Some((stop.at_s, start))
    }

    /// Initial weights under `policy`.
    pub fn weights(&self, policy: Policy) -> Vec<u32> {
        match policy {
            Policy::Oracle => self.capacities.clone(),
            Policy::StaticEqual | Policy::StaticEqualHttp | Policy::Adaptive => {
                vec![1; self.capacities.len()]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_are_consistent() {
        let all = Scenario::all();
        assert_eq!(all.len(), 4);
        for s in &all {
            assert_eq!(s.capacities.len(), 3, "{}", s.name);
            assert!((1..=3).contains(&s.focus), "{}", s.name);
            assert!(s.events.iter().all(|e| e.at_s < s.duration_s), "{}", s.name);
            assert!(WARMUP_S < s.duration_s);
            crate::bench_adaptive::schedule::Schedule::new(s.rate.clone(), s.duration_s)
                .expect("a valid schedule");
        }
        assert_eq!(all[2].death(), Some((15.0, 27.0)));
        assert_eq!(all[0].death(), None);
        assert_eq!(all[0].weights(Policy::Oracle), vec![300, 300, 100]);
        let quick = all[2].clone().scaled(0.5);
        assert_eq!(quick.death(), Some((7.5, 13.5)));
        assert_eq!(Policy::parse("oracle"), Some(Policy::Oracle));
        assert_eq!(
            Policy::parse("static-equal-http"),
            Some(Policy::StaticEqualHttp)
        );
        assert_eq!(
            all[3].title(),
            "4 surge: capacities 300/300/150 req/s; offered 260 req/s (35%), 520 (69%) from \
             15 s, 260 (35%) from 27 s"
        );
        assert!(
            all[1]
                .title()
                .ends_with("backend-1 capacity 150/s at 15 s; backend-1 capacity 300/s at 27 s")
        );
    }
}
