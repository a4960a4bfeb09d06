//! `lbx model`: the load-prediction model offline, scored on a trace or generating one.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;

use crate::balance::trace;

#[derive(Subcommand)]
pub enum ModelCmd {
    /// Replay a trace (CSV: time_s,backend,rate,latency_ms) and report each backend's
    /// one-step forecast error (MAPE) of the model next to a last-value forecast and a
    /// moving average.
    Eval {
        #[arg(long)]
        trace: PathBuf,
    },
    /// Write a synthetic trace with daily cycles and a flash-sale spike.
    Trace {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 3)]
        backends: usize,
        #[arg(long, default_value_t = 2.0)]
        days: f64,
        /// Seconds between rows.
        #[arg(long, default_value_t = 60)]
        step_s: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

pub fn run(cmd: ModelCmd, json: bool) -> Result<()> {
    match cmd {
        ModelCmd::Trace {
            out,
            backends,
            days,
            step_s,
            seed,
        } => {
            if backends == 0 || step_s == 0 || days.is_nan() || days <= 0.0 {
                bail!("--backends, --step-s and --days must be positive");
            }
            let text = trace::generate(&trace::TraceSpec {
                backends,
                days,
                step_s,
                seed,
            });
            std::fs::write(&out, text)
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!("wrote {}", out.display());
        }
        ModelCmd::Eval { trace: path } => {
            let scores = trace::evaluate(&trace::read(&path)?);
            if json {
                let v: serde_json::Map<String, serde_json::Value> = scores
                    .iter()
                    .map(|(b, e)| {
                        (
                            b.clone(),
                            serde_json::json!({
                                "points": e.points,
                                "mape_model": e.holt,
                                "mape_last_value": e.last_value,
                                "mape_moving_average": e.moving_average,
                            }),
                        )
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{:<16} {:>7} {:>12} {:>12} {:>12}",
                    "BACKEND", "POINTS", "MODEL MAPE", "LAST VALUE", "MOVING AVG"
                );
                for (b, e) in &scores {
                    println!(
                        "{b:<16} {:>7} {:>11.2}% {:>11.2}% {:>11.2}%",
                        e.points, e.holt, e.last_value, e.moving_average
                    );
                }
            }
        }
    }
    Ok(())
}
