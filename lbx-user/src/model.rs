//! Load prediction per backend: a short-horizon forecast of demand (Holt's double
//! exponential smoothing) and a capacity estimate learned from how latency grows with load
//! (a queueing fit: latency = base / (1 - load / capacity)).
//!
//! Plain arithmetic on the agent's own measurements, deterministic: the same series give
//! the same forecasts on every node.

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

/// Capacity from latency under load. With service time `base` (the latency seen when idle)
/// and utilisation `rho = rate / capacity`, a queueing server answers in about
/// `base / (1 - rho)`; so each observation with latency above the base gives
/// `capacity = rate * latency / (latency - base)`.
#[derive(Clone, Debug, Default)]
pub struct Capacity {
    /// Smallest latency seen: the service time without queueing.
    base: Option<f64>,
    estimate: Option<f64>,
}

/// Latency within this factor of the base says little about capacity (noise dominates).
const MIN_QUEUEING: f64 = 1.15;
/// Per observation, the base latency may rise by this factor unless a lower latency is seen.
const BASE_CREEP: f64 = 1.002;
/// Smoothing of successive estimates.
const CAPACITY_GAIN: f64 = 0.15;

impl Capacity {
    pub fn observe(&mut self, rate: f64, latency: f64) {
        if !(latency.is_finite() && latency > 0.0 && rate.is_finite() && rate >= 0.0) {
            return;
        }
        // The base is the lowest latency seen, but it creeps up unless seen again, so one
        // unusually fast probe does not bias every later estimate.
        let base = self.base.map_or(latency, |b| (b * BASE_CREEP).min(latency));
        self.base = Some(base);
        if latency < base * MIN_QUEUEING || rate <= 0.0 {
            // Lightly loaded: latency says nothing about capacity; keep what we know.
            return;
        }
        let seen = rate * latency / (latency - base);
        self.estimate = Some(match self.estimate {
            Some(e) => e + CAPACITY_GAIN * (seen - e),
            None => seen,
        });
    }

    /// Requests (or flows) per second the backend serves at full utilisation, if known.
    pub fn estimate(&self) -> Option<f64> {
        self.estimate
    }

    pub fn base_latency(&self) -> Option<f64> {
        self.base
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
    /// One control interval's measurements: the rate of new flows and a probe latency.
    pub fn observe(&mut self, rate: f64, latency: Option<f64>) {
        self.demand.update(rate);
        self.last_rate = Some(rate);
        if let Some(l) = latency {
            self.capacity.observe(rate, l);
            self.last_latency = Some(l);
        }
    }

    /// Utilisation expected next interval: forecast demand over estimated capacity.
    pub fn predicted_utilisation(&self) -> Option<f64> {
        Some(self.demand.forecast(1.0)? / self.capacity.estimate()?)
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
        c.observe(10.0, s); // idle: gives the base
        for rate in [300.0, 500.0, 700.0, 800.0, 850.0, 800.0, 750.0, 800.0] {
            c.observe(rate, mm1(s, rate, mu));
        }
        let e = c.estimate().unwrap();
        assert!((e - mu).abs() / mu < 0.05, "estimated {e}, true {mu}");
    }

    #[test]
    fn idle_backends_get_only_a_lower_bound() {
        let mut c = Capacity::default();
        c.observe(0.0, 0.002);
        c.observe(100.0, 0.002);
        assert_eq!(c.estimate(), None, "no queueing seen: capacity unknown");
    }

    #[test]
    fn predicted_utilisation_combines_both() {
        let (s, mu) = (0.001, 500.0);
        let mut m = BackendModel::default();
        m.observe(5.0, Some(s));
        for _ in 0..30 {
            m.observe(400.0, Some(mm1(s, 400.0, mu)));
        }
        let u = m.predicted_utilisation().unwrap();
        assert!((u - 0.8).abs() < 0.05, "utilisation {u}");
    }
}
