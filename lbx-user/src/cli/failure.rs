//! How a command fails: the kind of failure, its exit status, and the message as text on
//! stderr or, with `--json`, as one JSON object on stdout.

use std::{ffi::OsString, io, process::ExitCode};

use serde_json::json;

use super::drain::TimedOut;
use crate::{
    agent::{
        AgentError,
        api::{ErrorKind, Failure},
        failure::{config_kind, dataplane_kind, io_kind},
        socket::ClientError,
    },
    config::{ConfigError, EndpointError},
    dataplane::DataPlaneError,
};

/// The exit statuses, for `lbx --help`; README "Exit status" lists the same.
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  success
  1  internal: something unforeseen (the message says what)
  2  usage: a wrong command line (unknown flag, a value that does not parse or is out of range)
  3  invalid: the change would make a configuration that is refused
  4  not_found: the VIP, backend, interface or file does not exist
  5  conflict: it exists already, or an agent or another XDP program holds it
  6  agent_unreachable: no agent answers on the control socket
  7  permission: the control socket and the data plane are for root
  8  kernel: the kernel refused (loading, verifying or attaching the program, a map update)
  9  timeout: what the command waits for did not happen in time (its change stays)
  10  unavailable: the cluster's etcd did not answer (quorum lost, or this node cut off)
With --json, a failure prints {\"error\": {\"kind\": ..., \"message\": ..., \"hint\": ...}} on stdout.\n";

/// A command line that parsed but asks for something that makes no sense.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// Whether the command line asks for JSON, read before parsing so that a command line that
/// does not parse still fails in JSON.
pub fn wants_json(args: &[OsString]) -> bool {
    args.iter()
        .skip(1)
        .take_while(|a| *a != "--")
        .any(|a| a == "--json")
}

/// The end of a command line that clap refused (or `--help` / `--version`, which are not
/// failures).
pub fn usage(e: clap::Error, json: bool) -> ExitCode {
    use clap::error::ErrorKind as Clap;
    if matches!(e.kind(), Clap::DisplayHelp | Clap::DisplayVersion) {
        die_on_closed_stdout();
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    if !json {
        let _ = e.print();
        return ExitCode::from(ErrorKind::Usage.exit_code());
    }
    // clap's text: the error's paragraph, then usage and advice.
    let text = e.render().to_string();
    let mut paragraphs = text.split("\n\n").map(|p| {
        p.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    });
    let message = paragraphs
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_owned();
    let rest: Vec<String> = paragraphs.filter(|p| !p.is_empty()).collect();
    emit(
        &Failure {
            kind: ErrorKind::Usage,
            message,
            hint: (!rest.is_empty()).then(|| rest.join("; ")),
        },
        true,
    )
}

/// Prints a failed command's error and returns its exit status.
pub fn report(e: &anyhow::Error, json: bool) -> ExitCode {
    let mut failure = classify(e);
    // The whole chain of context, outermost first, as the message.
    failure.message = format!("{e:#}");
    emit(&failure, json)
}

fn emit(f: &Failure, json: bool) -> ExitCode {
    if json {
        println!("{}", json!({ "error": f }));
    } else {
        eprintln!("error: {}", f.message);
        if let Some(hint) = &f.hint {
            eprintln!("hint: {hint}");
        }
    }
    ExitCode::from(f.kind.exit_code())
}

/// The kind (and hint) of the first error in the chain that knows its kind.
pub fn classify(e: &anyhow::Error) -> Failure {
    for cause in e.chain() {
        let found = if let Some(c) = cause.downcast_ref::<ClientError>() {
            Some(c.failure())
        } else if let Some(a) = cause.downcast_ref::<AgentError>() {
            Some(a.failure())
        } else if let Some(c) = cause.downcast_ref::<ConfigError>() {
            Some(Failure::new(config_kind(c), c.to_string()))
        } else if let Some(d) = cause.downcast_ref::<DataPlaneError>() {
            Some(Failure::new(dataplane_kind(d), d.to_string()))
        } else if let Some(p) = cause.downcast_ref::<EndpointError>() {
            Some(Failure::new(ErrorKind::Usage, p.to_string()))
        } else if let Some(u) = cause.downcast_ref::<Usage>() {
            Some(Failure::new(ErrorKind::Usage, u.to_string()))
        } else if let Some(t) = cause.downcast_ref::<TimedOut>() {
            Some(Failure {
                kind: ErrorKind::Timeout,
                message: t.to_string(),
                hint: Some(
                    "`lbx backend list` shows the count; a flow counts until it goes unseen \
                     for the agent's --flow-idle-s"
                        .into(),
                ),
            })
        } else {
            cause
                .downcast_ref::<io::Error>()
                .map(|io| Failure::new(io_kind(io), io.to_string()))
        };
        if let Some(f) = found {
            return f;
        }
    }
    Failure::new(ErrorKind::Internal, e.to_string())
}

/// Restores the default action of SIGPIPE (Rust ignores it), so that a command whose
/// reader goes away (`lbx stats | head -1`) ends at once and quietly, with the status
/// shells report for it, as `ls | head` does. Sockets are unaffected: the standard library
/// sends with MSG_NOSIGNAL.
pub fn die_on_closed_stdout() {
    // SAFETY: setting a signal's disposition to its default has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_status_and_is_listed() {
        let mut codes: Vec<u8> = ErrorKind::ALL.iter().map(|k| k.exit_code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ErrorKind::ALL.len());
        assert!(!codes.contains(&0));
        for k in ErrorKind::ALL {
            // The help names each kind as the wire does.
            let name = serde_json::to_value(k).unwrap();
            let line = format!("  {}  {}:", k.exit_code(), name.as_str().unwrap());
            assert!(EXIT_STATUS_HELP.contains(&line), "{line:?} missing");
        }
    }

    #[test]
    fn json_is_asked_for_before_the_double_dash_only() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(wants_json(&args(&["lbx", "--json", "status"])));
        assert!(wants_json(&args(&["lbx", "vip", "add", "x", "--json"])));
        assert!(!wants_json(&args(&["lbx", "vip", "add", "--", "--json"])));
        assert!(!wants_json(&args(&["--json"])));
    }
}
