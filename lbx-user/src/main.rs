//! `lbx`: the agent, the backend-side helpers and the operator's CLI (see [`lbx::cli`]).

use std::process::ExitCode;

fn main() -> ExitCode {
    lbx::cli::main()
}
