//! Load traces for `lbx model`: a generator with daily cycles and a flash-sale spike, and
//! the replay that scores the forecast against naive predictors.
//!
//! CSV, one row per backend per step: `time_s,backend,rate,latency_ms`.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::{Context as _, Result, bail};

use super::model::{self, Evaluation};

/// Shape of a generated trace.
#[derive(Clone, Debug)]
pub struct TraceSpec {
    pub backends: usize,
    pub days: f64,
    pub step_s: u64,
    pub seed: u64,
}

/// Small deterministic generator (xorshift64*): the same seed gives the same trace.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Generates a trace: each backend's request rate follows a daily cycle (low at night,
/// peak in the evening), with ±5% noise and a flash sale tripling demand for 30 minutes at
/// 18:00 on the second day; latency follows a queueing server of the backend's capacity.
pub fn generate(spec: &TraceSpec) -> String {
    let mut rng = Rng(spec.seed.max(1));
    let mut out = String::from("time_s,backend,rate,latency_ms\n");
    let end = (spec.days * 86_400.0) as u64;
    let service_ms = 2.0;
    let mut t = 0;
    while t < end {
        let day = t as f64 / 86_400.0;
        let cycle = 1.0 + 0.6 * (std::f64::consts::TAU * (day - 0.5)).sin().max(-0.9);
        let flash = if (86_400 + 18 * 3600..86_400 + 18 * 3600 + 1800).contains(&t) {
            3.0
        } else {
            1.0
        };
        for b in 0..spec.backends {
            let capacity = 400.0 + 200.0 * b as f64;
            let base = 0.3 * capacity;
            let noise = 1.0 + 0.1 * (rng.next_f64() - 0.5);
            let rate = base * cycle * flash * noise;
            let rho = (rate / capacity).min(0.98);
            let latency = service_ms / (1.0 - rho);
            let _ = writeln!(out, "{t},backend-{b},{rate:.3},{latency:.3}");
        }
        t += spec.step_s;
    }
    out
}

/// Per-backend rate series of a trace file.
pub fn read(path: &Path) -> Result<BTreeMap<String, Vec<f64>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut series: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if n == 0 && line.starts_with("time_s") || line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 4 {
            bail!(
                "{}:{}: expected time_s,backend,rate,latency_ms, got {line:?}",
                path.display(),
                n + 1
            );
        }
        let rate: f64 = f[2].trim().parse().with_context(|| {
            format!(
                "{}:{}: rate {:?} is not a number",
                path.display(),
                n + 1,
                f[2]
            )
        })?;
        series.entry(f[1].trim().to_owned()).or_default().push(rate);
    }
    if series.is_empty() {
        bail!("{} holds no rows", path.display());
    }
    Ok(series)
}

/// Scores the forecast on every backend's series.
pub fn evaluate(series: &BTreeMap<String, Vec<f64>>) -> BTreeMap<String, Evaluation> {
    series
        .iter()
        .map(|(b, s)| (b.clone(), model::evaluate(s)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_trace_round_trips_and_holt_wins() {
        let spec = TraceSpec {
            backends: 2,
            days: 2.0,
            step_s: 300,
            seed: 7,
        };
        let text = generate(&spec);
        assert_eq!(text, generate(&spec), "deterministic");
        let dir = std::env::temp_dir().join(format!("lbx-trace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.csv");
        std::fs::write(&path, &text).unwrap();
        let series = read(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(series.len(), 2);
        assert_eq!(series["backend-0"].len(), 2 * 86_400 / 300);
        for (b, e) in evaluate(&series) {
            assert!(e.holt < e.moving_average, "{b}: {e:?}");
        }
    }

    #[test]
    fn bad_rows_name_the_line() {
        let dir = std::env::temp_dir().join(format!("lbx-trace-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.csv");
        std::fs::write(&path, "time_s,backend,rate,latency_ms\n0,b,1,2\n60,b,x,2\n").unwrap();
        let e = read(&path).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(e.contains(":3") && e.contains("\"x\""), "{e}");
    }
}
