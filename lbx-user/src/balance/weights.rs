//! Turns capacity estimates into weights: equal predicted utilisation means weights in
//! proportion to capacity. Bounded by minimum and maximum weights, capped by the operator's
//! weights, held still by hysteresis, and limited by a churn budget so that only a share
//! of the table moves per interval. Pure and deterministic.

/// Limits on how weights move.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    pub min_weight: u32,
    pub max_weight: u32,
    /// Relative change below which a weight stays as it is.
    pub hysteresis: f64,
    /// Largest share of the table (0..1) whose owner may change in one interval.
    pub churn_budget: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            min_weight: 1,
            max_weight: 1000,
            hysteresis: 0.1,
            churn_budget: 0.1,
        }
    }
}

/// One backend's inputs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Input {
    /// The operator's weight: an upper bound, relative to the VIP's other backends.
    pub operator: u32,
    /// Estimated capacity; `None` keeps the backend at the share its operator weight gives.
    pub capacity: Option<f64>,
    /// Weight now.
    pub current: u32,
    /// Without a capacity, keep `current` rather than go back to the operator's share:
    /// the weight came with the generation an agent took over.
    pub held: bool,
}

/// Share of the table that changes owner between two weightings: half the summed change
/// of each backend's share.
pub fn churn(a: &[u32], b: &[u32]) -> f64 {
    let (sa, sb) = (a.iter().sum::<u32>() as f64, b.iter().sum::<u32>() as f64);
    if sa == 0.0 || sb == 0.0 {
        return 1.0;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 / sa - *y as f64 / sb).abs())
        .sum::<f64>()
        / 2.0
}

/// The next weights, and for each backend a reason that `lbx status` shows.
pub fn choose(inputs: &[Input], policy: &Policy) -> (Vec<u32>, Vec<String>) {
    let max_op = inputs.iter().map(|i| i.operator).max().unwrap_or(1).max(1) as f64;
    let known: Vec<f64> = inputs.iter().filter_map(|i| i.capacity).collect();
    let max_cap = known.iter().copied().fold(0.0, f64::max);
    let span = f64::from(policy.max_weight);
    let mut reasons = Vec::with_capacity(inputs.len());
    let target: Vec<u32> = inputs
        .iter()
        .map(|i| {
            let cap = span * i.operator as f64 / max_op;
            let (want, why) = match i.capacity {
                Some(c) if max_cap > 0.0 => (
                    span * c / max_cap,
                    format!("capacity {c:.0}/s of the largest {max_cap:.0}/s"),
                ),
                _ if i.held => (
                    f64::from(i.current),
                    "capacity unknown yet: weight kept from the generation taken over".to_owned(),
                ),
                _ => (cap, "capacity unknown: operator weight".to_owned()),
            };
            let capped = if want > cap { cap } else { want };
            let why = if want > cap {
                format!("{why}, capped by operator weight")
            } else {
                why
            };
            reasons.push(why);
            (capped.round() as u32).clamp(policy.min_weight, policy.max_weight)
        })
        .collect();
    let current: Vec<u32> = inputs
        .iter()
        .map(|i| i.current.max(policy.min_weight))
        .collect();
    // Hysteresis: small moves are not worth the churn.
    let mut next: Vec<u32> = target
        .iter()
        .zip(&current)
        .map(|(&t, &c)| {
            if (f64::from(t) - f64::from(c)).abs() <= policy.hysteresis * f64::from(c) {
                c
            } else {
                t
            }
        })
        .collect();
    // Churn budget: go part of the way when the whole step would move too much.
    let c = churn(&current, &next);
    if c > policy.churn_budget {
        let f = policy.churn_budget / c;
        next = current
            .iter()
            .zip(&next)
            .map(|(&a, &b)| {
                let v = f64::from(a) + f * (f64::from(b) - f64::from(a));
                (v.round() as u32).clamp(policy.min_weight, policy.max_weight)
            })
            .collect();
        for r in &mut reasons {
            r.push_str(&format!(" (churn budget: {:.0}% of the step)", f * 100.0));
        }
    }
    (next, reasons)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(caps: &[Option<f64>], current: u32) -> Vec<Input> {
        caps.iter()
            .map(|&capacity| Input {
                operator: 100,
                capacity,
                current,
                held: false,
            })
            .collect()
    }

    #[test]
    fn weights_follow_capacity_within_the_churn_budget() {
        let policy = Policy {
            churn_budget: 1.0,
            ..Default::default()
        };
        let (w, _) = choose(
            &inputs(&[Some(300.0), Some(900.0), Some(900.0)], 1000),
            &policy,
        );
        assert_eq!(w, vec![333, 1000, 1000]);
        // With a budget the step is partial, and repeated steps converge.
        let policy = Policy::default();
        let mut cur = vec![1000, 1000, 1000];
        let mut steps = 0;
        loop {
            let ins: Vec<Input> = [300.0, 900.0, 900.0]
                .iter()
                .zip(&cur)
                .map(|(&c, &w)| Input {
                    operator: 100,
                    capacity: Some(c),
                    current: w,
                    held: false,
                })
                .collect();
            let (next, _) = choose(&ins, &policy);
            assert!(
                churn(&cur, &next) <= policy.churn_budget + 0.01,
                "{cur:?} -> {next:?}"
            );
            if next == cur {
                break;
            }
            cur = next;
            steps += 1;
            assert!(steps < 20, "does not converge: {cur:?}");
        }
        let share = f64::from(cur[0]) / f64::from(cur.iter().sum::<u32>());
        assert!(
            (share - 1.0 / 7.0).abs() < 0.02,
            "slow backend's share {share}"
        );
    }

    #[test]
    fn operator_weights_cap_and_unknown_capacity_keeps_them() {
        let ins = vec![
            Input {
                operator: 50,
                capacity: Some(1000.0),
                current: 500,
                held: false,
            },
            Input {
                operator: 100,
                capacity: Some(1000.0),
                current: 1000,
                held: false,
            },
            Input {
                operator: 100,
                capacity: None,
                current: 1000,
                held: false,
            },
        ];
        let policy = Policy {
            churn_budget: 1.0,
            ..Default::default()
        };
        let (w, why) = choose(&ins, &policy);
        assert_eq!(w, vec![500, 1000, 1000]);
        assert!(why[0].contains("capped"), "{why:?}");
        assert!(why[2].contains("unknown"), "{why:?}");
    }

    #[test]
    fn hysteresis_and_bounds() {
        let policy = Policy {
            churn_budget: 1.0,
            min_weight: 10,
            ..Default::default()
        };
        let (w, _) = choose(
            &inputs(&[Some(980.0), Some(1000.0), Some(1.0)], 1000),
            &policy,
        );
        assert_eq!(w[0], 1000, "a 2% difference is within hysteresis");
        assert_eq!(w[2], 10, "never below the minimum weight");
        let same = choose(
            &inputs(&[Some(980.0), Some(1000.0), Some(1.0)], 1000),
            &policy,
        );
        assert_eq!(same.0, w, "deterministic");
    }

    #[test]
    fn a_held_weight_stays_until_its_capacity_is_known() {
        let policy = Policy {
            churn_budget: 1.0,
            ..Default::default()
        };
        let held = |capacity| Input {
            operator: 100,
            capacity,
            current: 250,
            held: true,
        };
        let (w, why) = choose(&[held(None), inputs(&[None], 1000)[0]], &policy);
        assert_eq!(w, vec![250, 1000], "held, and the operator's share");
        assert!(why[0].contains("kept"), "{why:?}");
        let (w, _) = choose(&[held(Some(1000.0)), held(Some(1000.0))], &policy);
        assert_eq!(w, vec![1000, 1000], "a capacity decides again");
    }
}
