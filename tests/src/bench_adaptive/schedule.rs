//! The load generator's request rate over time, and the arrival times it gives: an
//! inhomogeneous Poisson process, drawn from a seed so every policy of a scenario gets exactly
//! the same requests at exactly the same moments.

use std::fmt;
use std::str::FromStr;

use anyhow::{Context as _, bail, ensure};

use crate::rng::Rng;

/// Most requests one schedule may produce: a bound on every load generator run.
pub const MAX_REQUESTS: usize = 200_000;
/// Highest rate a schedule may ask for, in requests per second.
pub const MAX_RATE: f64 = 5_000.0;
/// Longest schedule, in seconds.
pub const MAX_DURATION_S: f64 = 600.0;

/// A piecewise-constant rate: `(from_s, rate)` steps, the first from 0, until `duration_s`.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    steps: Vec<(f64, f64)>,
    duration_s: f64,
}

impl Schedule {
    /// Steps must start at 0, rise strictly in time and stay within the limits.
    pub fn new(steps: Vec<(f64, f64)>, duration_s: f64) -> anyhow::Result<Self> {
        ensure!(
            steps.first().is_some_and(|s| s.0 == 0.0),
            "a schedule's first step starts at 0 s"
        );
        ensure!(
            steps.windows(2).all(|w| w[0].0 < w[1].0),
            "a schedule's steps must be in increasing time"
        );
        ensure!(
            steps.iter().all(|s| (0.0..=MAX_RATE).contains(&s.1)),
            "rates must be within 0 to {MAX_RATE} requests/s"
        );
        ensure!(
            duration_s > 0.0 && duration_s <= MAX_DURATION_S,
            "duration {duration_s} s is out of range: use up to {MAX_DURATION_S} s"
        );
        let schedule = Self { steps, duration_s };
        ensure!(
            schedule.expected_requests() <= MAX_REQUESTS as f64 * 0.9,
            "the schedule asks for about {:.0} requests; at most {MAX_REQUESTS} are allowed",
            schedule.expected_requests()
        );
        Ok(schedule)
    }

    pub fn duration_s(&self) -> f64 {
        self.duration_s
    }

    /// The rate at time `t`.
    pub fn rate_at(&self, t: f64) -> f64 {
        self.steps
            .iter()
            .take_while(|s| s.0 <= t)
            .last()
            .map_or(0.0, |s| s.1)
    }

    /// The steps as given.
    pub fn steps(&self) -> &[(f64, f64)] {
        &self.steps
    }

    /// The mean number of requests over the whole schedule.
    pub fn expected_requests(&self) -> f64 {
        self.steps
            .iter()
            .enumerate()
            .map(|(i, &(from, rate))| {
                let to = self
                    .steps
                    .get(i + 1)
                    .map_or(self.duration_s, |s| s.0)
                    .min(self.duration_s);
                rate * (to - from).max(0.0)
            })
            .sum()
    }

    /// Arrival times in seconds from the start, sorted: each gap is exponential in the
    /// integrated rate, which is a Poisson process with this schedule's rate at every moment.
    pub fn arrivals(&self, seed: u64) -> Vec<f64> {
        let mut rng = Rng::new(seed);
        let mut out = Vec::new();
        let mut t = 0.0;
        while out.len() < MAX_REQUESTS {
            // Uniform in (0, 1]: 53 random bits, never 0 so the logarithm stays finite.
            let u = ((rng.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
            let mut need = -u.ln();
            loop {
                let rate = self.rate_at(t);
                let next_step = self
                    .steps
                    .iter()
                    .find(|s| s.0 > t)
                    .map_or(self.duration_s, |s| s.0)
                    .min(self.duration_s);
                if rate > 0.0 && t + need / rate <= next_step {
                    t += need / rate;
                    break;
                }
                need -= rate * (next_step - t);
                t = next_step;
                if t >= self.duration_s {
                    return out;
                }
            }
            out.push(t);
        }
        out
    }
}

/// `0:490,15:980,27:490`: from 0 s 490 requests/s, from 15 s 980, from 27 s 490 again. The
/// duration is given separately ([`Schedule::new`]); parsing uses [`MAX_DURATION_S`] until then.
#[derive(Debug, Clone, PartialEq)]
pub struct Steps(pub Vec<(f64, f64)>);

impl FromStr for Steps {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let mut steps = Vec::new();
        for part in s.split(',') {
            let (at, rate) = part
                .split_once(':')
                .with_context(|| format!("{part:?} is not FROM_S:RATE"))?;
            let at: f64 = at
                .trim()
                .parse()
                .with_context(|| format!("bad time in {part:?}"))?;
            let rate: f64 = rate
                .trim()
                .parse()
                .with_context(|| format!("bad rate in {part:?}"))?;
            if !(at.is_finite() && rate.is_finite()) {
                bail!("{part:?} is not a finite time and rate");
            }
            steps.push((at, rate));
        }
        Ok(Self(steps))
    }
}

impl fmt::Display for Steps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(t, r)| format!("{t}:{r}")).collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_parse_and_print() {
        let steps: Steps = "0:490,15:980,27.5:490".parse().unwrap();
        assert_eq!(steps.0, vec![(0.0, 490.0), (15.0, 980.0), (27.5, 490.0)]);
        assert_eq!(steps.to_string(), "0:490,15:980,27.5:490");
        assert!("0-490".parse::<Steps>().is_err());
        assert!(
            Schedule::new(vec![(1.0, 10.0)], 5.0).is_err(),
            "must start at 0"
        );
        assert!(Schedule::new(vec![(0.0, 1e9)], 5.0).is_err(), "rate bound");
        assert!(
            Schedule::new(vec![(0.0, 4000.0)], 600.0).is_err(),
            "count bound"
        );
    }

    #[test]
    fn arrivals_follow_the_rate_and_repeat_from_the_seed() {
        let s = Schedule::new(vec![(0.0, 500.0), (10.0, 1000.0), (20.0, 0.0)], 30.0).unwrap();
        assert_eq!(s.expected_requests(), 15_000.0);
        let a = s.arrivals(7);
        assert_eq!(a, s.arrivals(7), "same seed, same arrivals");
        assert_ne!(a, s.arrivals(8));
        assert!(a.windows(2).all(|w| w[0] <= w[1]), "sorted");
        let count = |from: f64, to: f64| a.iter().filter(|&&t| t >= from && t < to).count();
        // Poisson: the standard deviation of a count of n is sqrt(n); allow 4 of them.
        assert!((count(0.0, 10.0) as f64 - 5000.0).abs() < 4.0 * 5000f64.sqrt());
        assert!((count(10.0, 20.0) as f64 - 10000.0).abs() < 4.0 * 10000f64.sqrt());
        assert_eq!(count(20.0, 30.0), 0, "rate 0 sends nothing");
        assert!(a.iter().all(|&t| t < 30.0));
    }
}
