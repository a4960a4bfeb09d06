//! Load prediction per backend: a short-horizon forecast of demand (Holt's double
//! exponential smoothing) and a capacity estimate from three kinds of evidence, strongest
//! first:
//!
//! - overload: while a backend's queue grows, it serves exactly its capacity. Its queueing
//!   delay `d` (probe latency above the idle latency) then grows at
//!   `dd/dt = rate / capacity - 1`, so a few probes and its rate of new flows give
//!   `capacity = rate / (1 + dd/dt)` at once, without waiting for a smoothed fit. A queue
//!   that stays deep without clearly growing (a backend at about its capacity) gives the
//!   queueing fit's answer at once, as an upper bound;
//! - queueing: under moderate load, a queueing fit, `latency = base / (1 - rate / capacity)`,
//!   smoothed over intervals, the more trusted the more the latency exceeds the base (the
//!   less noise in the base matters). It never goes below what the backend was last seen
//!   serving while saturated, nor down while the backend is in its slow start: with little
//!   traffic, a service that became slower looks like queueing to the fit, and the backend
//!   would be starved;
//! - quiet: latency at its idle level says the backend is not overloaded, and the agent
//!   raises its estimate step by step towards the largest of its VIP, so a backend that
//!   recovered, or became faster than it was measured, gets its traffic back and is measured.
//!
//! Plain arithmetic on the agent's own measurements, deterministic: the same series give
//! the same forecasts on every node.

use std::fmt;

/// Holt's linear method: a smoothed level and trend.
#[derive(Clone, Debug)]
pub struct Holt {
    alpha: f64,
    beta: f64,
    level: Option<f64>,
    trend: f64,
}

impl Holt {
    /// `alpha` weighs new levels, `beta` new trends; both in (0, 1].
    pub fn new(alpha: f64, beta: f64) -> Self {
        Holt {
            alpha,
            beta,
            level: None,
            trend: 0.0,
        }
    }

    pub fn update(&mut self, x: f64) {
        match self.level {
            None => self.level = Some(x),
            Some(l) => {
                let level = self.alpha * x + (1.0 - self.alpha) * (l + self.trend);
                self.trend = self.beta * (level - l) + (1.0 - self.beta) * self.trend;
                self.level = Some(level);
            }
        }
    }

    /// The value expected `steps` intervals ahead (never negative: demand is a rate).
    pub fn forecast(&self, steps: f64) -> Option<f64> {
        self.level.map(|l| (l + steps * self.trend).max(0.0))
    }
}

impl Default for Holt {
    fn default() -> Self {
        Holt::new(0.3, 0.05)
    }
}

/// One health probe as the capacity model sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Probe {
    /// When it was sent, in seconds on a clock shared by the interval's probes.
    pub at: f64,
    /// Time to its answer in seconds; for a probe that timed out, the timeout.
    pub latency: f64,
    /// No answer within the timeout: the latency is only a lower bound.
    pub timed_out: bool,
}

/// What the last interval said about a backend's capacity: shown in `lbx status` as the
/// reason for its estimate.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Evidence {
    /// No latency measured (no probe answered, or the backend is down).
    #[default]
    Unmeasured,
    /// Its queue grew: it served `served` per second, its capacity; the queueing delay grew
    /// by `growth` seconds per second.
    Saturated { served: f64, growth: f64 },
    /// Its latest probes all waited several times its idle latency, or timed out under load
    /// (and the health checks took it out): the queueing fit on them saw at most this
    /// capacity.
    Congested { seen: f64 },
    /// Latency above its idle level: the queueing fit saw this capacity; `held`, when the
    /// estimate did not follow it down, and why.
    Queueing { seen: f64, held: Option<Hold> },
    /// Latency above its idle level, but no traffic sent here to measure it by.
    Held,
    /// Latency at its idle level: lightly loaded.
    Quiet,
}

impl Evidence {
    /// The kind alone, without its figures: a label with a handful of values.
    pub fn kind(&self) -> &'static str {
        match self {
            Evidence::Unmeasured => "unmeasured",
            Evidence::Saturated { .. } => "saturated",
            Evidence::Congested { .. } => "congested",
            Evidence::Queueing { .. } => "queueing",
            Evidence::Held => "held",
            Evidence::Quiet => "quiet",
        }
    }
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Evidence::Unmeasured => f.write_str("no latency measured"),
            Evidence::Saturated { served, growth } => write!(
                f,
                "saturated: served {served:.0}/s while its queueing delay grew by {:.0} ms/s",
                growth * 1e3
            ),
            Evidence::Congested { seen } => {
                write!(f, "congested: deep queue, latency growth says {seen:.0}/s")
            }
            Evidence::Queueing { seen, held } => {
                write!(f, "queueing: latency growth says {seen:.0}/s")?;
                match held {
                    Some(Hold::Served(s)) => write!(f, ", but it served {s:.0}/s when saturated"),
                    Some(Hold::Warming) => f.write_str(", not followed down in its slow start"),
                    None => Ok(()),
                }
            }
            Evidence::Held => {
                f.write_str("held: latency above its idle level, but no traffic to measure it by")
            }
            Evidence::Quiet => f.write_str("quiet: latency at its idle level"),
        }
    }
}

/// Why the queueing fit's answer did not lower the estimate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Hold {
    /// The backend was seen serving this much while saturated.
    Served(f64),
    /// The backend is in its slow start: its traffic is held down, not its capacity.
    Warming,
}

/// Capacity from latency under load. With service time `base` (the latency seen when idle)
/// and utilisation `rho = rate / capacity`, a queueing server answers in about
/// `base / (1 - rho)`; so each observation with latency above the base gives
/// `capacity = rate * latency / (latency - base)`. A saturated server's capacity is what it
/// serves, which the growth of its queue tells directly (see the module's documentation).
#[derive(Clone, Debug, Default)]
pub struct Capacity {
    /// Smallest latency seen: the service time without queueing. It creeps up unless seen
    /// again, so that one unusually fast probe does not bias every later estimate, and a
    /// backend whose service became slower has its new idle latency learned in the end
    /// rather than its slower answers taken for queueing for ever.
    base: Option<f64>,
    /// The base is to be learned again (see [`Capacity::relearn_base`]).
    relearning: bool,
    estimate: Option<f64>,
    /// What the backend was last seen serving while saturated.
    served: Option<f64>,
    /// The backend is in its slow start (see [`BackendModel::observe`]).
    warming: bool,
    /// Whether the estimate rests on queueing or saturation seen, rather than only on the
    /// lower bound a quiet backend gives.
    measured: bool,
    /// What the last interval showed.
    evidence: Evidence,
}

/// Latency within this factor of the base says little about capacity (noise dominates).
const MIN_QUEUEING: f64 = 1.15;
/// Per interval, the base latency rises by this factor unless a lower latency is seen
/// (doubling in about two minutes).
const BASE_CREEP: f64 = 1.005;
/// Smoothing of successive queueing-fit estimates, at the least: an observation whose
/// latency is `k` times the base weighs `(1 - 1/k)^2` if that is more (0.81 at 10 times).
const CAPACITY_GAIN: f64 = 0.15;
/// A probe counts as queued when its latency exceeds the base by this many bases, and by
/// at least `QUEUED_MIN_S`: a few service times of waiting, well above the jitter of an idle
/// backend and of a moderately loaded one.
const QUEUED_BASES: f64 = 2.0;
const QUEUED_MIN_S: f64 = 0.002;
/// Answered probes in a row, the last ones, that must be queued with the delay growing: a
/// burst or a stalled host delays one or two probes, a queue that builds delays them all.
const SATURATED_PROBES: usize = 3;
/// Growth of the queueing delay (seconds per second) that shows a queue building: arrivals
/// exceed service by 10% or more.
const MIN_GROWTH: f64 = 0.1;
/// A probe waits in a deep queue when its latency is this many times the base, and
/// `DEEP_MIN_S` above it at least.
const DEEP_BASES: f64 = 5.0;
const DEEP_MIN_S: f64 = 0.010;
/// A backend whose latency shows no queueing is taken to be at most this busy: not
/// overloaded.
const QUIET_UTILISATION: f64 = 0.8;
/// Per quiet interval, the estimate rises by this factor.
const QUIET_RISE: f64 = 1.25;

/// What probes say about saturation: the served rate (the capacity) and the growth of the
/// queueing delay, when the last `SATURATED_PROBES` or more were queued (a probe that timed
/// out is queued, but says nothing of how long) and the answered ones among them show the
/// delay growing by `MIN_GROWTH` or more. `probes` are in the order they were sent; `rate`
/// is the backend's rate of new flows while they were sent.
pub fn saturation(probes: &[Probe], base: f64, rate: f64) -> Option<(f64, f64)> {
    if rate <= 0.0 || base <= 0.0 {
        return None;
    }
    let threshold = (QUEUED_BASES * base).max(QUEUED_MIN_S);
    let queued = probes
        .iter()
        .rev()
        .take_while(|p| p.timed_out || p.latency - base >= threshold)
        .count();
    let answered: Vec<Probe> = probes[probes.len() - queued..]
        .iter()
        .filter(|p| !p.timed_out)
        .copied()
        .collect();
    if answered.len() < SATURATED_PROBES {
        return None;
    }
    let growth = slope(&answered)?;
    (growth >= MIN_GROWTH).then(|| (rate / (1.0 + growth), growth))
}

/// What probes say about congestion: when the last `SATURATED_PROBES` answered probes all
/// waited in a deep queue that is not draining, the queueing fit on their mean latency,
/// which is about `rate` then: the backend is at or near its capacity, its queue wandering
/// rather than clearly growing. (A deep queue that drains says its capacity is above its
/// rate; probes that timed out say nothing of which way it goes.)
pub fn congestion(probes: &[Probe], base: f64, rate: f64) -> Option<f64> {
    if rate <= 0.0 || base <= 0.0 {
        return None;
    }
    let deep = (DEEP_BASES * base).max(base + DEEP_MIN_S);
    let answered: Vec<Probe> = probes.iter().filter(|p| !p.timed_out).copied().collect();
    let last = answered.get(answered.len().checked_sub(SATURATED_PROBES)?..)?;
    if last.iter().any(|p| p.latency < deep) || slope(last)? < -MIN_GROWTH / 2.0 {
        return None;
    }
    let latency = last.iter().map(|p| p.latency).sum::<f64>() / last.len() as f64;
    Some(rate * latency / (latency - base))
}

/// Least-squares slope of latency over time; `None` when the probes share one moment.
fn slope(probes: &[Probe]) -> Option<f64> {
    let n = probes.len() as f64;
    let mt = probes.iter().map(|p| p.at).sum::<f64>() / n;
    let ml = probes.iter().map(|p| p.latency).sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for p in probes {
        sxy += (p.at - mt) * (p.latency - ml);
        sxx += (p.at - mt) * (p.at - mt);
    }
    (sxx > 1e-9).then(|| sxy / sxx)
}

impl Capacity {
    /// One interval: the rate of new flows, the smoothed probe latency, and the interval's
    /// probes in the order they were sent.
    pub fn observe(&mut self, rate: f64, latency: f64, probes: &[Probe]) {
        if !(latency.is_finite() && latency > 0.0 && rate.is_finite() && rate >= 0.0) {
            self.evidence = Evidence::Unmeasured;
            return;
        }
        let base = match self.base {
            Some(b) => (b * BASE_CREEP).min(latency),
            // Learned again: the fastest answer of the interval, not the smoothed latency,
            // which may still remember a queue.
            None if self.relearning => probes
                .iter()
                .filter(|p| !p.timed_out)
                .map(|p| p.latency)
                .fold(latency, f64::min),
            None => latency,
        };
        self.relearning = false;
        self.base = Some(base);
        if self.observe_overload(rate, probes) {
            return;
        }
        if latency < base * MIN_QUEUEING {
            // Lightly loaded: not overloaded; more the agent learns by raising the estimate
            // (`raise_quiet`) until latency shows queueing.
            let floor = rate / QUIET_UTILISATION;
            self.estimate =
                Some(self.estimate.map_or(floor, |e| e.max(floor))).filter(|e| *e > 0.0);
            self.evidence = Evidence::Quiet;
            return;
        }
        if rate <= 0.0 {
            self.evidence = Evidence::Held;
            return;
        }
        let seen = rate * latency / (latency - base);
        let utilisation = 1.0 - base / latency;
        let gain = CAPACITY_GAIN.max(utilisation * utilisation);
        let fitted = match self.estimate {
            Some(e) if self.measured => e + gain * (seen - e),
            // The first measurement replaces a quiet backend's lower bound.
            _ => seen,
        };
        let held = match (self.estimate, self.served) {
            (Some(e), _) if self.warming && fitted < e => Some((e, Hold::Warming)),
            (_, Some(s)) if fitted < s => Some((s, Hold::Served(s))),
            _ => None,
        };
        self.set_measured(held.map_or(fitted, |(e, _)| e));
        self.evidence = Evidence::Queueing {
            seen,
            held: held.map(|(_, why)| why),
        };
    }

    fn set_measured(&mut self, estimate: f64) {
        self.estimate = Some(estimate);
        self.measured = true;
    }

    /// Overload evidence alone, also between control intervals: if `probes` show the queue
    /// building (see [`saturation`]), the estimate becomes the served rate at once; if they
    /// show it deep (see [`congestion`]), the estimate goes down to the fit's answer at once.
    /// Returns whether they did either. Needs the base latency, learned from earlier
    /// intervals.
    pub fn observe_overload(&mut self, rate: f64, probes: &[Probe]) -> bool {
        let Some(base) = self.base else {
            return false;
        };
        if let Some((served, growth)) = saturation(probes, base, rate) {
            // Direct evidence: no smoothing, so an overloaded backend is relieved at once.
            self.set_measured(served);
            self.served = Some(served);
            self.evidence = Evidence::Saturated { served, growth };
            return true;
        }
        if let Some(seen) = congestion(probes, base, rate) {
            let estimate = match self.estimate {
                Some(e) if self.measured => e.min(seen),
                // A quiet backend's lower bound is no measurement.
                _ => seen,
            };
            self.set_measured(estimate);
            self.evidence = Evidence::Congested { seen };
            return true;
        }
        false
    }

    /// The health checks took the backend out because its probes got no answer within
    /// `timeout` seconds while it was getting `rate` new flows per second: its queue was at
    /// least that deep, and the queueing fit on the timeout bounds its capacity (about
    /// `rate`). Without this, it would come back through its slow start at the estimate that
    /// overloaded it.
    pub fn observe_timeout(&mut self, rate: f64, timeout: f64) {
        let Some(base) = self.base.filter(|b| rate > 0.0 && timeout > *b) else {
            return;
        };
        let seen = rate * timeout / (timeout - base);
        let estimate = match self.estimate {
            Some(e) if self.measured => e.min(seen),
            _ => seen,
        };
        self.set_measured(estimate);
        self.evidence = Evidence::Congested { seen };
    }

    /// After a quiet interval, raises the estimate a step towards `ceiling` (the largest
    /// estimate among the VIP's backends): no queueing seen means there is room, and a
    /// backend that gets more traffic is measured again. Not only up to what it was once
    /// measured at: a backend measured slow whose capacity then grew (a noisy neighbour
    /// gone, an upgrade) would otherwise stay starved, too quiet ever to show it. A rise
    /// past its capacity shows as a growing queue and is undone within a probe or three.
    pub fn raise_quiet(&mut self, ceiling: f64) {
        if self.evidence == Evidence::Quiet
            && let Some(e) = self.estimate
            && e < ceiling
        {
            self.estimate = Some((e * QUIET_RISE).min(ceiling));
        }
    }

    /// Requests (or flows) per second the backend serves at full utilisation, if known.
    pub fn estimate(&self) -> Option<f64> {
        self.estimate
    }

    pub fn base_latency(&self) -> Option<f64> {
        self.base
    }

    /// Forgets the base latency, to learn it again from the next interval: for a backend
    /// back from being down, whose queue has drained, and whose idle latency may have
    /// changed with whatever took it down.
    pub fn relearn_base(&mut self) {
        self.base = None;
        self.relearning = true;
    }

    pub fn evidence(&self) -> Evidence {
        self.evidence
    }
}

/// What the agent knows and expects of one backend.
#[derive(Clone, Debug, Default)]
pub struct BackendModel {
    pub demand: Holt,
    pub capacity: Capacity,
    pub last_rate: Option<f64>,
    pub last_latency: Option<f64>,
}

impl BackendModel {
    /// One control interval's measurements: the rate of new flows, the smoothed probe
    /// latency (none while the backend is down or unprobed), the interval's probes, and
    /// whether the backend is in its slow start.
    pub fn observe(&mut self, rate: f64, latency: Option<f64>, probes: &[Probe], warming: bool) {
        self.demand.update(rate);
        self.last_rate = Some(rate);
        self.capacity.warming = warming;
        match latency {
            Some(l) => {
                self.capacity.observe(rate, l, probes);
                self.last_latency = Some(l);
            }
            None => self.capacity.evidence = Evidence::Unmeasured,
        }
    }

    /// Utilisation expected next interval: forecast demand over estimated capacity.
    pub fn predicted_utilisation(&self) -> Option<f64> {
        Some(self.demand.forecast(1.0)? / self.capacity.estimate()?)
    }
}

/// After every backend of a VIP observed an interval: raises the quiet ones towards the
/// largest estimate (see [`Capacity::raise_quiet`]).
pub fn raise_quiet<'a>(models: impl IntoIterator<Item = &'a mut BackendModel>) {
    let mut models: Vec<&mut BackendModel> = models.into_iter().collect();
    let ceiling = models
        .iter()
        .filter_map(|m| m.capacity.estimate())
        .fold(0.0, f64::max);
    for m in &mut models {
        m.capacity.raise_quiet(ceiling);
    }
}

/// Forecast error of three predictors over one series, as mean absolute percentage error
/// (points where the actual value is zero are skipped).
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    pub points: usize,
    pub holt: f64,
    pub last_value: f64,
    pub moving_average: f64,
}

/// Window of the moving-average predictor.
pub const MOVING_AVERAGE: usize = 5;

/// One-step-ahead MAPE of Holt, last value and a moving average on `series`.
pub fn evaluate(series: &[f64]) -> Evaluation {
    let mut holt = Holt::default();
    let (mut e_holt, mut e_last, mut e_ma, mut n) = (0.0, 0.0, 0.0, 0usize);
    for (i, &actual) in series.iter().enumerate() {
        if i >= MOVING_AVERAGE && actual != 0.0 {
            let window = &series[i - MOVING_AVERAGE..i];
            let ma = window.iter().sum::<f64>() / MOVING_AVERAGE as f64;
            let h = holt.forecast(1.0).unwrap_or(0.0);
            e_holt += ((actual - h) / actual).abs();
            e_last += ((actual - series[i - 1]) / actual).abs();
            e_ma += ((actual - ma) / actual).abs();
            n += 1;
        }
        holt.update(actual);
    }
    let pct = |e: f64| if n == 0 { 0.0 } else { 100.0 * e / n as f64 };
    Evaluation {
        points: n,
        holt: pct(e_holt),
        last_value: pct(e_last),
        moving_average: pct(e_ma),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::weights::{self, Input, Policy};

    #[test]
    fn holt_follows_a_linear_trend() {
        let mut h = Holt::default();
        for t in 0..150 {
            h.update(100.0 + 5.0 * f64::from(t));
        }
        // Next point of the line is 100 + 5 * 150 = 850.
        let f = h.forecast(1.0).unwrap();
        assert!((f - 850.0).abs() < 1.0, "forecast {f}");
        let f3 = h.forecast(3.0).unwrap();
        assert!((f3 - 860.0).abs() < 1.5, "three ahead {f3}");
    }

    #[test]
    fn holt_beats_last_value_on_a_ramp_and_moving_average_everywhere() {
        let ramp: Vec<f64> = (0..200).map(|t| 50.0 + 2.0 * f64::from(t)).collect();
        let e = evaluate(&ramp);
        assert!(e.holt < e.last_value && e.holt < e.moving_average, "{e:?}");
        let flat = vec![80.0; 100];
        let e = evaluate(&flat);
        assert!(e.holt < 1e-9 && e.last_value < 1e-9, "{e:?}");
    }

    /// Latency of a queueing server of capacity `mu` and service time `s` at `rate`.
    fn mm1(s: f64, rate: f64, mu: f64) -> f64 {
        s / (1.0 - rate / mu)
    }

    #[test]
    fn capacity_is_learned_from_latency_growth() {
        let (s, mu) = (0.002, 1000.0);
        let mut c = Capacity::default();
        c.observe(10.0, s, &[]); // idle: gives the base
        for rate in [300.0, 500.0, 700.0, 800.0, 850.0, 800.0, 750.0, 800.0] {
            c.observe(rate, mm1(s, rate, mu), &[]);
        }
        let e = c.estimate().unwrap();
        assert!((e - mu).abs() / mu < 0.05, "estimated {e}, true {mu}");
        assert!(matches!(c.evidence(), Evidence::Queueing { .. }));
    }

    #[test]
    fn quiet_backends_are_raised_towards_the_largest_of_their_vip() {
        let mut c = Capacity::default();
        c.observe(0.0, 0.002, &[]);
        assert_eq!(c.estimate(), None, "idle and no traffic: nothing known");
        c.observe(100.0, 0.002, &[]);
        assert_eq!(c.evidence(), Evidence::Quiet);
        assert_eq!(c.estimate(), Some(125.0), "no queueing: not overloaded");
        c.raise_quiet(150.0);
        assert_eq!(c.estimate(), Some(150.0), "never past the VIP's largest");
        // Queueing seen replaces the bound at once, however low: 100/s at twice the base
        // latency is about 200/s.
        c.observe(100.0, 0.004, &[]);
        let e = c.estimate().unwrap();
        assert!((e - 200.0).abs() < 4.0, "{e}");
        assert!(matches!(c.evidence(), Evidence::Queueing { .. }));
        c.raise_quiet(1000.0);
        assert_eq!(c.estimate(), Some(e), "only quiet backends are raised");
        // Saturated at 100/s, then quiet: raised step by step past the most it was
        // measured at (200/s), to the VIP's largest: its capacity may have grown since.
        let growing = probes(0.0, &[0.045, 0.085, 0.125]);
        assert!(c.observe_overload(120.0, &growing));
        assert!((c.estimate().unwrap() - 100.0).abs() < 1e-6);
        let mut steps = 0;
        while c.estimate() < Some(1000.0) {
            c.observe(50.0, 0.002, &[]);
            c.raise_quiet(1000.0);
            steps += 1;
            assert!(steps < 20, "{:?}", c.estimate());
        }
        assert_eq!(steps, 11, "1.25 x per quiet interval from 100 to 1000");
    }

    /// Probes every 0.2 s from `at`, with these latencies.
    fn probes(at: f64, latencies: &[f64]) -> Vec<Probe> {
        latencies
            .iter()
            .enumerate()
            .map(|(i, &latency)| Probe {
                at: at + 0.2 * i as f64,
                latency,
                timed_out: false,
            })
            .collect()
    }

    #[test]
    fn a_growing_queue_gives_the_served_rate() {
        // Base 5 ms; 180 requests/s to a server of 150/s: the delay grows by 0.2 s every
        // second from the second probe on.
        let p = probes(10.0, &[0.005, 0.045, 0.085, 0.125, 0.165]);
        let (served, growth) = saturation(&p, 0.005, 180.0).expect("saturated");
        assert!((growth - 0.2).abs() < 1e-9, "growth {growth}");
        assert!((served - 150.0).abs() < 1e-6, "served {served}");
        // Three probes are enough, and a probe that timed out counts as queued, but only the
        // answered ones give the growth.
        let mut p = probes(0.0, &[0.006, 0.04, 0.08, 0.2, 0.16]);
        p[3].timed_out = true;
        let (served, growth) = saturation(&p, 0.005, 180.0).expect("saturated");
        assert!((growth - 0.2).abs() < 1e-9 && (served - 150.0).abs() < 1e-6);
        // The same through the model, which needs a base first.
        let mut c = Capacity::default();
        assert!(!c.observe_overload(180.0, &p), "no base latency yet");
        c.observe(20.0, 0.005, &[]);
        assert!(c.observe_overload(180.0, &p));
        assert_eq!(c.estimate(), Some(served));
        assert!(matches!(c.evidence(), Evidence::Saturated { .. }));
    }

    #[test]
    fn jitter_bursts_and_slow_service_are_not_saturation() {
        let base = 0.005;
        // A moderately loaded server: some probes wait a little.
        let moderate = probes(0.0, &[0.006, 0.011, 0.007, 0.014, 0.009]);
        assert_eq!(saturation(&moderate, base, 180.0), None);
        // Late probes at the end: a hiccup, not a queue.
        let hiccup = probes(0.0, &[0.006, 0.007, 0.006, 0.030, 0.060]);
        assert_eq!(saturation(&hiccup, base, 180.0), None);
        // Three queued probes, but the delay falls: a burst passing.
        let burst = probes(0.0, &[0.006, 0.040, 0.030, 0.020]);
        assert_eq!(saturation(&burst, base, 180.0), None);
        // A service that became slower (or a queue that stays): latency high but flat.
        let slower = probes(0.0, &[0.016, 0.017, 0.016, 0.018, 0.016]);
        assert_eq!(saturation(&slower, base, 20.0), None);
        // Only two answered among the queued: growth unknown.
        let mut lost = probes(0.0, &[0.006, 0.10, 0.15, 0.2, 0.2]);
        lost[3].timed_out = true;
        lost[4].timed_out = true;
        assert_eq!(saturation(&lost, base, 60.0), None);
        assert_eq!(saturation(&probes(0.0, &[0.1, 0.2, 0.3]), base, 0.0), None);
    }

    #[test]
    fn a_slower_service_is_not_taken_for_queueing() {
        // A backend seen serving 150/s while saturated, whose service then became slower
        // (idle latency up from 5 to 10 ms), getting 15/s: the fit alone would say 30/s and
        // starve it.
        let mut c = Capacity::default();
        c.observe(20.0, 0.005, &[]);
        let growing = probes(0.0, &[0.045, 0.085, 0.125]);
        assert!(c.observe_overload(180.0, &growing));
        assert!((c.estimate().unwrap() - 150.0).abs() < 1e-6);
        for _ in 0..10 {
            c.observe(15.0, 0.010, &[]);
        }
        assert_eq!(c.estimate(), Some(150.0), "not below what it served");
        assert!(
            matches!(c.evidence(), Evidence::Queueing { seen, held: Some(Hold::Served(_)) } if seen < 40.0),
            "{}",
            c.evidence()
        );
        // The base creeps up to the new idle latency: quiet again in the end.
        let mut intervals = 10;
        while c.evidence() != Evidence::Quiet {
            c.observe(15.0, 0.010, &[]);
            intervals += 1;
            assert!(intervals < 300, "still not quiet: {}", c.evidence());
        }
        assert!(c.base_latency().unwrap() > 0.010 / MIN_QUEUEING);
        assert_eq!(c.estimate(), Some(150.0));
    }

    #[test]
    fn a_backend_back_from_down_learns_its_idle_latency_again() {
        let mut c = Capacity::default();
        c.observe(20.0, 0.005, &[]);
        c.relearn_base();
        // The smoothed latency still remembers the queue; the fastest probe does not.
        let p = probes(0.0, &[0.012, 0.009, 0.0095]);
        c.observe(5.0, 0.060, &p);
        assert_eq!(c.base_latency(), Some(0.009));
    }

    #[test]
    fn timing_out_under_load_bounds_the_capacity() {
        let mut c = Capacity::default();
        c.observe(20.0, 0.005, &[]);
        c.observe(200.0, 0.006, &[]);
        let before = c.estimate().unwrap();
        assert!(before > 1000.0, "{before}");
        // Taken out for probes that waited 200 ms while it got 180/s.
        c.observe_timeout(180.0, 0.2);
        let e = c.estimate().unwrap();
        assert!((e - 180.0 * 0.2 / 0.195).abs() < 0.5, "{e}");
        assert!(matches!(c.evidence(), Evidence::Congested { .. }));
        c.observe_timeout(0.0, 0.2);
        assert_eq!(c.estimate(), Some(e), "no traffic: nothing learned");
    }

    #[test]
    fn the_fit_trusts_high_latency_more() {
        // Two backends believed to serve 1000/s; both get 200/s. One answers in 1.25 times
        // its base (noise, or a little queueing), the other in 10 times (nearly saturated).
        let mut calm = Capacity::default();
        let mut busy = Capacity::default();
        for c in [&mut calm, &mut busy] {
            c.observe(10.0, 0.002, &[]);
            c.observe(200.0, 0.0025, &[]);
            c.observe(200.0, 0.0025, &[]);
        }
        let before = calm.estimate().unwrap();
        assert!((before - 1000.0).abs() < 50.0, "{before}");
        calm.observe(200.0, 0.0025, &[]);
        busy.observe(200.0, 0.020, &[]);
        // The busy one's fit says about 222/s; weighed about 0.8, the estimate moves most of
        // the way at once. The calm one's moves by at most 15% of the way.
        let e = busy.estimate().unwrap();
        assert!((300.0..400.0).contains(&e), "{e}");
        let calm = calm.estimate().unwrap();
        assert!((calm - before).abs() < 0.15 * before, "{before} -> {calm}");
    }

    /// A simulated backend: a single server of capacity `mu` behind `overhead` seconds of
    /// network and connection set-up, with the mean waiting time of a single-server queue of
    /// deterministic service below saturation, plus the backlog (in seconds of work) that
    /// builds while arrivals exceed the capacity.
    struct Server {
        mu: f64,
        overhead: f64,
        backlog: f64,
    }

    impl Server {
        fn latency(&self, rate: f64) -> f64 {
            let s = 1.0 / self.mu;
            let rho = (rate / self.mu).min(0.95);
            self.overhead + s + rho * s / (2.0 * (1.0 - rho)) + self.backlog
        }

        fn advance(&mut self, rate: f64, dt: f64) {
            self.backlog = (self.backlog + (rate / self.mu - 1.0) * dt).max(0.0);
        }
    }

    /// Deterministic noise in [0, 1).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Per interval: each backend's weight, capacity estimate, backlog at the end and mean
    /// latency (without jitter) under the interval's load.
    struct Step {
        weights: Vec<u32>,
        estimates: Vec<Option<f64>>,
        backlog: Vec<f64>,
        latency: Vec<f64>,
    }

    const PROBE_TIMEOUT: f64 = 0.2;

    /// Runs the agent's loop against simulated backends: probes every 0.2 s, a control tick
    /// every second (the model, then the weights with their default policy), and between
    /// ticks the reaction to a queue building (saturation evidence, weights moved at once
    /// within what is left of the interval's churn budget). `offered` requests per second
    /// are spread by weight; `capacities(t)` are the true capacities during second `t`.
    /// Latencies carry up to 15% of jitter, rates 5%. (No health checks: a probe that times
    /// out only counts as one.)
    fn simulate(seconds: usize, offered: f64, capacities: impl Fn(usize) -> Vec<f64>) -> Vec<Step> {
        let n = capacities(0).len();
        let mut servers: Vec<Server> = capacities(0)
            .into_iter()
            .map(|mu| Server {
                mu,
                overhead: 0.0017,
                backlog: 0.0,
            })
            .collect();
        let mut models = vec![BackendModel::default(); n];
        let mut ewma: Vec<Option<f64>> = vec![None; n];
        let mut weights = vec![1000u32; n];
        let mut noise = Lcg(7);
        let mut out = Vec::new();
        let policy = Policy::default();
        let step = |models: &[BackendModel], weights: &[u32], budget: f64| {
            let inputs: Vec<Input> = models
                .iter()
                .zip(weights)
                .map(|(m, &current)| Input {
                    operator: 1,
                    capacity: m.capacity.estimate(),
                    current,
                    held: false,
                })
                .collect();
            let next = weights::choose(
                &inputs,
                &Policy {
                    churn_budget: budget,
                    ..policy
                },
            )
            .0;
            (weights::churn(weights, &next), next)
        };
        let mut spent = 0.0;
        let mut recent: Vec<std::collections::VecDeque<Probe>> = vec![Default::default(); n];
        for t in 0..seconds {
            for (s, mu) in servers.iter_mut().zip(capacities(t)) {
                s.mu = mu;
            }
            // The load arrives after the agent started, as in the benchmark: the first
            // interval sees a tenth of it.
            let offered = if t == 0 { offered / 10.0 } else { offered };
            let mut seen: Vec<Vec<Probe>> = vec![Vec::new(); n];
            let mut flows = vec![0.0; n];
            let mut relieved = vec![false; n];
            let mut rates = Vec::new();
            for k in 0..5 {
                let at = t as f64 + 0.2 * k as f64;
                let total: u32 = weights.iter().sum();
                rates = weights
                    .iter()
                    .map(|&w| offered * f64::from(w) / f64::from(total))
                    .collect();
                for (i, s) in servers.iter_mut().enumerate() {
                    let latency = s.latency(rates[i]) * (1.0 + 0.15 * noise.next());
                    if latency < PROBE_TIMEOUT {
                        ewma[i] = Some(ewma[i].map_or(latency, |e| 0.8 * e + 0.2 * latency));
                    }
                    let probe = Probe {
                        at,
                        latency: latency.min(PROBE_TIMEOUT),
                        timed_out: latency >= PROBE_TIMEOUT,
                    };
                    seen[i].push(probe);
                    if recent[i].len() == 8 {
                        recent[i].pop_front();
                    }
                    recent[i].push_back(probe);
                    for _ in 0..20 {
                        s.advance(rates[i], 0.01);
                    }
                    flows[i] += 0.2 * rates[i];
                }
                for i in 0..n {
                    let rate = flows[i] / (0.2 * (k + 1) as f64);
                    let latest: Vec<Probe> = recent[i].iter().copied().collect();
                    if !relieved[i] && models[i].capacity.observe_overload(rate, &latest) {
                        relieved[i] = true;
                        let (churn, next) = step(&models, &weights, policy.churn_budget - spent);
                        spent += churn;
                        weights = next;
                    }
                }
            }
            for i in 0..n {
                let rate = flows[i] * (0.975 + 0.05 * noise.next());
                models[i].observe(rate, ewma[i], &seen[i], false);
            }
            raise_quiet(models.iter_mut());
            let (churn, next) = step(&models, &weights, policy.churn_budget);
            spent = churn;
            weights = next;
            out.push(Step {
                weights: weights.clone(),
                estimates: models.iter().map(|m| m.capacity.estimate()).collect(),
                backlog: servers.iter().map(|s| s.backlog).collect(),
                latency: servers
                    .iter()
                    .zip(&rates)
                    .map(|(s, &r)| s.latency(r))
                    .collect(),
            });
        }
        out
    }

    fn share(step: &Step, i: usize) -> f64 {
        f64::from(step.weights[i]) / f64::from(step.weights.iter().sum::<u32>())
    }

    /// Intervals among `steps` in which some weight changed.
    fn changes(steps: &[Step]) -> usize {
        steps
            .windows(2)
            .filter(|w| w[0].weights != w[1].weights)
            .count()
    }

    #[test]
    fn capacity_halves_and_recovers_closed_loop() {
        // Three backends of 300/s, 540/s offered (60%); backend 0 drops to 150/s at 15 s and
        // is back at 300/s at 27 s. The right shares: a third each, then 150/750 = 20%.
        let caps = |t: usize| {
            let first = if (15..27).contains(&t) { 150.0 } else { 300.0 };
            vec![first, 300.0, 300.0]
        };
        let steps = simulate(45, 540.0, caps);
        let s = |t: usize| share(&steps[t], 0);
        assert!(
            (s(14) - 1.0 / 3.0).abs() < 0.04,
            "before the drop: {}",
            s(14)
        );
        // The interval of the drop ends with the queue growing: the estimate follows at once.
        let e = steps[15].estimates[0].expect("measured");
        assert!(
            (e - 180.0 * 150.0 / 180.0).abs() < 30.0,
            "estimate at 15 s: {e}"
        );
        // Its weight moved within the interval, before the tick, and the tick moved it more.
        assert!(s(15) <= 0.2, "at the first tick its share is {}", s(15));
        let peak = steps[15..27]
            .iter()
            .map(|x| x.backlog[0])
            .fold(0.0, f64::max);
        assert!(peak < 0.15, "backlog reached {peak} s");
        assert!(steps[19].backlog[0] == 0.0, "backlog not drained by 19 s");
        // Degraded: the slow backend's share is cut well below a third (not to nothing), its
        // queue stays empty, and latencies are alike (the fit's view of capacity is biased
        // by the fixed overhead in the idle latency, so shares are not exactly 20%).
        for (t, x) in steps.iter().enumerate().take(27).skip(19) {
            assert!((0.07..0.27).contains(&s(t)), "share {} at {t} s", s(t));
            assert!(
                x.backlog.iter().all(|b| *b == 0.0),
                "backlog {:?}",
                x.backlog
            );
            let (lo, hi) = x
                .latency
                .iter()
                .fold((f64::MAX, 0.0f64), |(lo, hi), &l| (lo.min(l), hi.max(l)));
            assert!(hi / lo < 1.5, "latencies {:?} at {t} s", x.latency);
        }
        // Recovery: the estimate is learned upward again, and the share comes back.
        assert!(
            s(37) >= 0.28,
            "ten intervals after recovery its share is {}",
            s(37)
        );
        assert!(
            changes(&steps[38..]) <= 1,
            "weights keep moving at steady state: {:?}",
            steps[38..]
                .iter()
                .map(|x| x.weights.clone())
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_slow_backend_settles_without_oscillating() {
        // 300/300/100 at 490/s (70%): the right share of the slow one is 1/7.
        let steps = simulate(60, 490.0, |_| vec![300.0, 300.0, 100.0]);
        let late = &steps[20..];
        for (t, x) in late.iter().enumerate() {
            let s = share(x, 2);
            assert!(
                (0.07..0.2).contains(&s),
                "slow backend's share {s} at {}",
                t + 20
            );
            assert!(
                x.backlog.iter().all(|b| *b < 0.05),
                "backlog {:?}",
                x.backlog
            );
        }
        assert!(
            changes(&steps[40..]) <= 1,
            "weights keep moving at steady state: {:?}",
            steps[40..]
                .iter()
                .map(|x| x.weights.clone())
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn predicted_utilisation_combines_both() {
        let (s, mu) = (0.001, 500.0);
        let mut m = BackendModel::default();
        m.observe(5.0, Some(s), &[], false);
        for _ in 0..30 {
            m.observe(400.0, Some(mm1(s, 400.0, mu)), &[], false);
        }
        let u = m.predicted_utilisation().unwrap();
        assert!((u - 0.8).abs() < 0.05, "utilisation {u}");
    }
}
