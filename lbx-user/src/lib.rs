//! The lbx agent as a library, by area; dependencies point one way, down this list:
//!
//! - [`cli`]: the `lbx` binary's commands and their output;
//! - [`agent`]: the agent's state and control loop, the control API and its socket;
//! - [`cluster`]: the configuration and the weights shared through etcd, for the agent in
//!   cluster mode;
//! - [`balance`]: health checks, the load model, weights, load reports and traces;
//! - [`history`]: the node's configuration history, one entry per change, in a file
//!   beside the configuration;
//! - [`metrics`]: the Prometheus families, the counters kept as things happen, and the
//!   endpoint that serves them;
//! - [`dataplane`]: loading and attaching the XDP programs, the plan from a configuration
//!   to map contents, and the publisher of whole generations;
//! - [`config`]: the declarative configuration, its validation, changes and TOML file;
//! - [`maglev`] and [`addr`]: the Maglev table and the data plane's address form, used by
//!   all of the above.

/// `println!` for the commands that serve until stopped: a line nobody reads any more (the
/// log pipe closed) is dropped, and the command goes on serving instead of panicking.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub mod addr;
pub mod agent;
pub mod balance;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod dataplane;
pub mod history;
#[cfg(test)]
mod layers;
pub mod maglev;
pub mod metrics;
pub mod restart;
