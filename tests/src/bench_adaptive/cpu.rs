//! CPU use on the host during a run: all of it (/proc/stat) and the benchmark's own processes'
//! (/proc/PID/stat), so a report can tell when other work on the host disturbed it. Both are
//! in clock ticks summed over every core, so their ratio is a share of the whole host.

use std::collections::HashMap;
use std::time::Duration;

/// Host and per-process CPU ticks since the last sample.
#[derive(Debug, Default)]
pub struct Meter {
    host: Option<(u64, u64)>,
    pids: HashMap<u32, u64>,
}

/// One interval's CPU use, percent of the whole host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Use {
    pub busy_pct: f64,
    /// The part used by the processes asked about (not counting the kernel's packet work
    /// done on their behalf in soft interrupts).
    pub ours_pct: f64,
}

impl Meter {
    /// Starts counting for the host and `pids`.
    pub fn new(pids: &[u32]) -> Self {
        let mut m = Self::default();
        m.sample(pids);
        m
    }

    /// Use since the last sample; `None` the first time or when /proc cannot be read. A pid
    /// not seen before counts from now on.
    pub fn sample(&mut self, pids: &[u32]) -> Option<Use> {
        let host = host_ticks();
        let mut ours = 0;
        for &pid in pids {
            let Some(now) = process_ticks(pid) else {
                continue;
            };
            let before = self.pids.insert(pid, now).unwrap_or(now);
            ours += now.saturating_sub(before);
        }
        let (before, now) = (self.host, host);
        self.host = host;
        let ((busy0, total0), (busy1, total1)) = (before?, now?);
        let total = total1.saturating_sub(total0);
        if total == 0 {
            return None;
        }
        Some(Use {
            busy_pct: 100.0 * busy1.saturating_sub(busy0) as f64 / total as f64,
            ours_pct: 100.0 * ours as f64 / total as f64,
        })
    }
}

/// How busy the host is over `window` (all cores), percent.
pub fn host_busy_pct(window: Duration) -> Option<f64> {
    let mut m = Meter::new(&[]);
    std::thread::sleep(window);
    m.sample(&[]).map(|u| u.busy_pct)
}

/// Busy and total ticks of the host: the first line of /proc/stat.
fn host_ticks() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    parse_host(text.lines().next()?)
}

fn parse_host(line: &str) -> Option<(u64, u64)> {
    let fields: Vec<u64> = line
        .strip_prefix("cpu ")?
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// User plus system ticks of one process.
fn process_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_process(&text)
}

fn parse_process(stat: &str) -> Option<u64> {
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of the whole line, utime 14 and stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_lines_are_parsed() {
        assert_eq!(
            parse_host("cpu  100 5 50 800 20 1 4 0 0 0"),
            Some((160, 980))
        );
        assert_eq!(parse_host("cpu0 1 2 3 4"), None);
        let stat = "1234 (lbx (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 17 3 0 0 20 0 1 0";
        assert_eq!(parse_process(stat), Some(20));
        assert!(process_ticks(std::process::id()).is_some());
        assert!(Meter::new(&[std::process::id()]).host.is_some());
    }
}
