//! What the demos (`cargo xtask demo`, `cargo xtask demo cluster`) share: printing each CLI
//! command with its output like a tutorial step, and how connections spread over backends.

use std::collections::BTreeMap;

use crate::agent::LbxCli;
use crate::backend_name;

/// Exits with a message unless this process runs as root (the demos create namespaces
/// and attach XDP programs).
pub fn require_root() {
    if !crate::is_root() {
        eprintln!(
            "error: the demo creates network namespaces and attaches XDP programs: run it as root"
        );
        std::process::exit(1);
    }
}

/// Prints `text` indented under a step.
pub fn print_indented(text: &str) {
    for line in text.lines() {
        println!("    {line}");
    }
}

/// Prints a command like a tutorial step (`  PROMPT$ lbx ARGS`), runs it with `cli` and
/// prints its output, indented; returns the output.
pub fn step(cli: LbxCli<'_>, prompt: &str, args: &[&str]) -> anyhow::Result<String> {
    println!("  {prompt}$ lbx {}", args.join(" "));
    let out = cli.run(args)?;
    print_indented(&out);
    Ok(out)
}

/// Prints how `total` connections spread over the backends (`counts` by backend name) next
/// to the share each backend's weight (`weights[i]`: backend `i + 1`) gives it.
pub fn print_spread(weights: &[u32], counts: &BTreeMap<String, usize>, total: usize) {
    let sum: u32 = weights.iter().sum();
    println!("    BACKEND     WEIGHT  EXPECTED  CONNECTIONS  SHARE");
    for (i, &w) in weights.iter().enumerate() {
        let name = backend_name(i + 1);
        let got = counts.get(&name).copied().unwrap_or(0);
        let share = 100.0 * got as f64 / total.max(1) as f64;
        let expected = 100.0 * f64::from(w) / f64::from(sum.max(1));
        let bar = "#".repeat((share / 2.5).round() as usize);
        println!("    {name:<10}  {w:>6}  {expected:>7.1}%  {got:>11}  {share:>5.1}%  {bar}");
    }
    println!();
}
