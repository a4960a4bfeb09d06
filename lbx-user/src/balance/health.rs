//! The health state machine of one backend: probe results in, up/down decisions out,
//! damped against flapping, with a slow start after recovery.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::probe::ProbeResult;
use crate::config::HealthCheck;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Up,
    Down,
}

/// Flap damping: every fall adds a penalty that halves every `PENALTY_HALF_LIFE`; while
/// it is above `SUPPRESS`, the backend stays out even if probes succeed, until it decays
/// below `REUSE`.
const PENALTY_PER_FALL: f64 = 1000.0;
const SUPPRESS: f64 = 2500.0;
const REUSE: f64 = 800.0;
const PENALTY_HALF_LIFE: Duration = Duration::from_secs(30);

const PROBES_SUCCEED: &str = "probes succeed";

/// Probe latencies kept for the high percentile.
const LATENCY_WINDOW: usize = 32;
/// Probes kept for the load model between two control intervals (a few intervals' worth
/// at the shortest probe interval, so an agent that falls behind loses the oldest).
const PROBES_KEPT: usize = 64;
/// The latest probes, whatever interval they fell in, for the reaction to an overload.
const RECENT_PROBES: usize = 8;

/// A probe as the load model sees it: one that was answered, or timed out (waiting in a
/// queue longer than the timeout, most likely); a refusal says nothing about load.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Probe {
    pub sent: Instant,
    /// Seconds to the answer, or to the timeout.
    pub latency: f64,
    pub timed_out: bool,
}

/// A change of state, with the reason.
#[derive(Clone, Debug)]
pub struct Transition {
    pub to: State,
    pub reason: String,
}

/// What the agent knows about one backend's health.
#[derive(Clone, Debug)]
pub struct Health {
    pub state: State,
    ok_run: u32,
    fail_run: u32,
    pub since: Instant,
    pub reason: String,
    penalty: f64,
    penalty_at: Instant,
    suppressed: bool,
    /// When the last recovery happened (slow start runs from here).
    recovered_at: Option<Instant>,
    /// Exponentially smoothed probe latency (seconds), and the recent samples.
    pub latency_ewma: Option<f64>,
    latencies: VecDeque<f64>,
    /// Probes since the load model last took them.
    probes: VecDeque<Probe>,
    /// The latest probes, taken or not.
    recent: VecDeque<Probe>,
}

impl Health {
    /// A backend starts up: traffic flows at once, and `fall` failed probes take it out.
    pub fn new(now: Instant) -> Self {
        Health {
            state: State::Up,
            ok_run: 0,
            fail_run: 0,
            since: now,
            reason: "not probed yet".into(),
            penalty: 0.0,
            penalty_at: now,
            suppressed: false,
            recovered_at: None,
            latency_ewma: None,
            latencies: VecDeque::with_capacity(LATENCY_WINDOW),
            probes: VecDeque::with_capacity(PROBES_KEPT),
            recent: VecDeque::with_capacity(RECENT_PROBES),
        }
    }

    /// A backend the agent before this one had taken out: it stays out until `rise`
    /// probes succeed, as if this agent had seen it fall, so a restart does not send new
    /// flows to a backend known dead.
    pub fn inherited_down(now: Instant) -> Self {
        Health {
            state: State::Down,
            reason: "down when the previous agent stopped".into(),
            ..Health::new(now)
        }
    }

    fn decayed_penalty(&self, now: Instant) -> f64 {
        let dt = now.saturating_duration_since(self.penalty_at).as_secs_f64();
        self.penalty * 0.5f64.powf(dt / PENALTY_HALF_LIFE.as_secs_f64())
    }

    /// Takes one probe result; returns the transition it caused, if any.
    pub fn observe(
        &mut self,
        r: &ProbeResult,
        check: &HealthCheck,
        now: Instant,
    ) -> Option<Transition> {
        if r.ok || r.timed_out {
            if self.probes.len() == PROBES_KEPT {
                self.probes.pop_front();
            }
            let p = Probe {
                sent: r.sent,
                latency: r.latency.as_secs_f64(),
                timed_out: r.timed_out,
            };
            self.probes.push_back(p);
            if self.recent.len() == RECENT_PROBES {
                self.recent.pop_front();
            }
            self.recent.push_back(p);
        }
        if r.ok {
            let s = r.latency.as_secs_f64();
            self.latency_ewma = Some(match self.latency_ewma {
                Some(e) => 0.8 * e + 0.2 * s,
                None => s,
            });
            if self.latencies.len() == LATENCY_WINDOW {
                self.latencies.pop_front();
            }
            self.latencies.push_back(s);
            self.ok_run += 1;
            self.fail_run = 0;
        } else {
            self.fail_run += 1;
            self.ok_run = 0;
        }
        match self.state {
            State::Up if !r.ok && self.fail_run >= check.fall => {
                self.penalty = self.decayed_penalty(now) + PENALTY_PER_FALL;
                self.penalty_at = now;
                self.suppressed = self.penalty > SUPPRESS;
                // Its latency is measured afresh when it answers again: the old figures
                // remember whatever took it down (a queue, most often).
                self.latency_ewma = None;
                self.latencies.clear();
                Some(self.change(
                    State::Down,
                    format!("{} failed probes: {}", self.fail_run, r.detail),
                    now,
                ))
            }
            State::Down if r.ok && self.ok_run >= check.rise => {
                if self.suppressed {
                    if self.decayed_penalty(now) > REUSE {
                        self.reason =
                            "flapping: held down until it has been stable for a while".into();
                        return None;
                    }
                    self.suppressed = false;
                }
                self.recovered_at = Some(now);
                Some(self.change(State::Up, format!("{} successful probes", self.ok_run), now))
            }
            State::Up => {
                // Keep the reason current for `lbx status`, without allocating every probe.
                if r.ok && self.fail_run == 0 && self.reason != PROBES_SUCCEED {
                    self.reason = PROBES_SUCCEED.to_owned();
                } else if !r.ok {
                    self.reason = format!(
                        "{} of {} failed probes: {}",
                        self.fail_run, check.fall, r.detail
                    );
                }
                None
            }
            State::Down => None,
        }
    }

    fn change(&mut self, to: State, reason: String, now: Instant) -> Transition {
        self.state = to;
        self.since = now;
        self.reason = reason.clone();
        Transition { to, reason }
    }

    /// Share of its weight the backend gets now: 0 when down, ramping from 10% to 100%
    /// during the slow start after a recovery, else 1.
    pub fn weight_factor(&self, check: &HealthCheck, now: Instant) -> f64 {
        if self.state == State::Down {
            return 0.0;
        }
        match self.recovered_at {
            Some(t) if check.slow_start_s > 0 => {
                let done =
                    now.saturating_duration_since(t).as_secs_f64() / check.slow_start_s as f64;
                if done >= 1.0 { 1.0 } else { 0.1 + 0.9 * done }
            }
            _ => 1.0,
        }
    }

    /// The probes answered (or timed out) since the last call, oldest first.
    pub fn take_probes(&mut self) -> Vec<Probe> {
        self.probes.drain(..).collect()
    }

    /// The latest probes (answered or timed out), oldest first, whether taken or not.
    pub fn recent_probes(&self) -> Vec<Probe> {
        self.recent.iter().copied().collect()
    }

    /// The 90th percentile of recent probe latencies, in seconds.
    pub fn latency_p90(&self) -> Option<f64> {
        if self.latencies.is_empty() {
            return None;
        }
        let mut v: Vec<f64> = self.latencies.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        Some(v[((v.len() - 1) as f64 * 0.9).round() as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> ProbeResult {
        ProbeResult {
            ok: true,
            sent: Instant::now(),
            latency: Duration::from_millis(2),
            detail: String::new(),
            timed_out: false,
        }
    }
    fn fail() -> ProbeResult {
        ProbeResult {
            ok: false,
            sent: Instant::now(),
            latency: Duration::from_millis(500),
            detail: "refused".into(),
            timed_out: false,
        }
    }

    #[test]
    fn fall_and_rise_counts() {
        let check = HealthCheck {
            rise: 2,
            fall: 3,
            slow_start_s: 0,
            ..Default::default()
        };
        let t = Instant::now();
        let mut h = Health::new(t);
        assert!(h.observe(&fail(), &check, t).is_none());
        assert!(h.observe(&fail(), &check, t).is_none());
        let down = h
            .observe(&fail(), &check, t)
            .expect("third failure takes it down");
        assert_eq!(down.to, State::Down);
        assert!(down.reason.contains("refused"), "{}", down.reason);
        assert_eq!(h.weight_factor(&check, t), 0.0);
        assert!(h.observe(&ok(), &check, t).is_none());
        assert!(
            h.observe(&fail(), &check, t).is_none(),
            "a failure resets the rise count"
        );
        assert!(h.observe(&ok(), &check, t).is_none());
        assert_eq!(
            h.observe(&ok(), &check, t).expect("two successes").to,
            State::Up
        );
        assert_eq!(h.weight_factor(&check, t), 1.0);
    }

    #[test]
    fn slow_start_ramps() {
        let check = HealthCheck {
            rise: 1,
            fall: 1,
            slow_start_s: 10,
            ..Default::default()
        };
        let t = Instant::now();
        let mut h = Health::new(t);
        h.observe(&fail(), &check, t);
        h.observe(&ok(), &check, t);
        let at = |s| h.weight_factor(&check, t + Duration::from_secs(s));
        assert!((at(0) - 0.1).abs() < 1e-9);
        assert!((at(5) - 0.55).abs() < 1e-9);
        assert_eq!(at(10), 1.0);
        assert_eq!(at(100), 1.0);
    }

    #[test]
    fn flapping_is_held_down() {
        let check = HealthCheck {
            rise: 1,
            fall: 1,
            slow_start_s: 0,
            ..Default::default()
        };
        let t = Instant::now();
        let mut h = Health::new(t);
        // Three quick falls push the penalty over the suppress level.
        for _ in 0..2 {
            assert_eq!(h.observe(&fail(), &check, t).unwrap().to, State::Down);
            assert_eq!(h.observe(&ok(), &check, t).unwrap().to, State::Up);
        }
        assert_eq!(h.observe(&fail(), &check, t).unwrap().to, State::Down);
        assert!(
            h.observe(&ok(), &check, t).is_none(),
            "held down while flapping"
        );
        assert!(h.reason.starts_with("flapping"));
        // 3000 decays below 800 after log2(3000/800) half-lives, about 57 s.
        let later = t + Duration::from_secs(60);
        assert_eq!(h.observe(&ok(), &check, later).unwrap().to, State::Up);
    }

    #[test]
    fn latency_percentile() {
        let check = HealthCheck::default();
        let t = Instant::now();
        let mut h = Health::new(t);
        for ms in 1..=10 {
            h.observe(
                &ProbeResult {
                    ok: true,
                    sent: t,
                    latency: Duration::from_millis(ms),
                    detail: String::new(),
                    timed_out: false,
                },
                &check,
                t,
            );
        }
        let p90 = h.latency_p90().unwrap();
        let mut down = h.clone();
        let check1 = HealthCheck {
            fall: 1,
            ..HealthCheck::default()
        };
        down.observe(&fail(), &check1, t);
        assert_eq!(down.state, State::Down);
        assert_eq!(down.latency_ewma, None, "measured afresh after a fall");
        down.observe(&ok(), &check1, t);
        assert_eq!(down.latency_ewma, Some(0.002));
        assert!(
            (p90 - 0.009).abs() < 1e-3 || (p90 - 0.010).abs() < 1e-3,
            "{p90}"
        );
        assert!(h.latency_ewma.unwrap() > 0.005);
    }

    #[test]
    fn probes_are_kept_for_the_model_until_taken() {
        let check = HealthCheck::default();
        let t = Instant::now();
        let mut h = Health::new(t);
        let sent = |s| t + Duration::from_secs(s);
        let answered = ProbeResult {
            sent: sent(1),
            ..ok()
        };
        let refused = ProbeResult {
            sent: sent(2),
            ..fail()
        };
        let slow = ProbeResult {
            ok: false,
            sent: sent(3),
            latency: Duration::from_millis(500),
            detail: "no answer within 500 ms".into(),
            timed_out: true,
        };
        // Handled late, all at once: each keeps the moment it was sent.
        for r in [&answered, &refused, &slow] {
            h.observe(r, &check, sent(10));
        }
        let probes = h.take_probes();
        assert_eq!(
            probes,
            vec![
                Probe {
                    sent: sent(1),
                    latency: 0.002,
                    timed_out: false
                },
                Probe {
                    sent: sent(3),
                    latency: 0.5,
                    timed_out: true
                }
            ],
            "answered and timed-out probes, by when they were sent; a refusal says nothing \
             about load"
        );
        assert!(h.take_probes().is_empty(), "taken once");
        assert_eq!(h.recent_probes(), probes, "the latest stay at hand");
        for _ in 0..PROBES_KEPT + 5 {
            h.observe(&ok(), &check, t);
        }
        assert_eq!(h.take_probes().len(), PROBES_KEPT, "bounded");
        assert_eq!(h.recent_probes().len(), RECENT_PROBES, "bounded");
    }
}
