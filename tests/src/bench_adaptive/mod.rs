//! `cargo xtask bench adaptive`: the proof that adaptive weights beat static ones on real
//! traffic. In the namespace test network, three backends run `lbx-capacity-server` (a set
//! number of requests per second, a queue for the rest), the client runs `lbx-loadgen` (an
//! open-loop generator, one new connection per request), and each scenario runs under static
//! equal weights, an oracle's static weights and lbx's adaptive weights.
//!
//! - [`http`]: the little HTTP both programs speak;
//! - [`schedule`]: request rates over time and the Poisson arrivals they give;
//! - [`records`]: what the generator records per request (CSV);
//! - [`stats`]: percentiles, error rates, per-second series, time to drop a dead backend;
//! - [`scenario`]: the four scenarios and three policies;
//! - [`harness`]: one scenario under one policy, on a fresh network; [`cpu`]: how busy the
//!   host was, and with what;
//! - [`report`]: JSON, table, the targets judged; [`plot`]: one PNG per scenario.

pub mod cpu;
pub mod harness;
pub mod http;
pub mod net;
pub mod plot;
pub mod records;
pub mod report;
pub mod scenario;
pub mod schedule;
pub mod stats;

/// Raises this process's open-file limit to its hard limit: every request in flight is a
/// socket, and the usual soft limit of 1024 is below what a saturated run keeps open.
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                eprintln!(
                    "warning: could not raise the open-file limit: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}
