//! The CLI refuses bad requests with a message naming the problem, and a refused request
//! leaves the running configuration exactly as it was.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use lbx_tests::{Topology, VIP_V4, backend_v4, topology::patience};

/// Runs `lbx ARGS` against the agent, which must fail with a message on stderr that starts
/// with `error: `, contains every one of `all` and at least one of `any` (case-insensitive);
/// and the backend configuration must be the same afterwards.
fn refused(topo: &Topology, args: &[&str], all: &[&str], any: &[&str]) {
    let before = topo.backend_list().expect("backend list");
    let stderr = topo.lbx_fails(args).unwrap_or_else(|e| panic!("{e:#}"));
    check_message(&format!("lbx {}", args.join(" ")), &stderr, all, any);
    let after = topo.backend_list().expect("backend list");
    assert_eq!(
        before,
        after,
        "`lbx {}` failed but changed the configuration",
        args.join(" ")
    );
}

fn check_message(what: &str, stderr: &str, all: &[&str], any: &[&str]) {
    let lower = stderr.to_lowercase();
    assert!(
        stderr.starts_with("error: "),
        "`{what}`: stderr should start with `error: `, got: {stderr}"
    );
    for word in all {
        assert!(
            lower.contains(&word.to_lowercase()),
            "`{what}`: the message should mention {word:?}: {stderr}"
        );
    }
    assert!(
        any.is_empty() || any.iter().any(|w| lower.contains(&w.to_lowercase())),
        "`{what}`: the message should say one of {any:?}: {stderr}"
    );
    eprintln!("`{what}` -> {}", stderr.trim());
}

#[test]
fn bad_requests_name_the_problem_and_change_nothing() {
    let vip = SocketAddr::new(VIP_V4.into(), 80);
    let vip_s = vip.to_string();
    let topo = Topology::builder()
        .backends(3)
        .vip(vip)
        .build()
        .expect("failed to build the test topology");
    topo.add_vip(vip, &[(1, 1), (2, 2)])
        .expect("configure the VIP");
    let b1 = backend_v4(1).to_string();
    let b3 = backend_v4(3).to_string();

    // A VIP that is not configured.
    let not_found = [
        "unknown",
        "not found",
        "no such",
        "does not exist",
        "not configured",
        "is not in",
    ];
    refused(
        &topo,
        &["backend", "add", "10.77.100.9:80", &b3],
        &["10.77.100.9"],
        &not_found,
    );
    refused(
        &topo,
        &["vip", "del", "10.77.100.9:80"],
        &["10.77.100.9"],
        &not_found,
    );
    refused(
        &topo,
        &["backend", "weight", "10.77.100.9:80", &b1, "5"],
        &["10.77.100.9"],
        &not_found,
    );
    // A backend that is not in the VIP.
    refused(&topo, &["backend", "del", &vip_s, &b3], &[&b3], &not_found);

    // A backend that is already there; a VIP that is already there.
    refused(
        &topo,
        &["backend", "add", &vip_s, &b1],
        &[&b1, "already"],
        &[],
    );
    refused(&topo, &["vip", "add", &vip_s], &["already"], &[]);

    // Weights outside 1..=65535.
    let range = ["out of range", "range", "1 to 65535", "1..=65535"];
    refused(
        &topo,
        &["backend", "add", &vip_s, &b3, "--weight", "70000"],
        &["70000"],
        &range,
    );
    refused(
        &topo,
        &["backend", "weight", &vip_s, &b1, "70000"],
        &["70000"],
        &range,
    );
    refused(&topo, &["backend", "weight", &vip_s, &b1, "0"], &[], &range);

    // Malformed addresses.
    let malformed = ["invalid", "malformed", "not a valid", "cannot parse"];
    refused(
        &topo,
        &["backend", "add", &vip_s, "10.0.0.999"],
        &["10.0.0.999"],
        &malformed,
    );
    refused(
        &topo,
        &["vip", "add", "10.77.100.999:80"],
        &["10.77.100.999"],
        &malformed,
    );
    refused(
        &topo,
        &["backend", "add", &vip_s, "fd77::11"],
        &[],
        &["family", "ipv6", "ipv4"],
    );

    // An interface that does not exist: a second agent refuses to start (and does not disturb
    // the running one).
    let other_socket = topo.dir().join("other.sock");
    let other_config = topo.dir().join("other.toml");
    let lbx = topo.binaries().lbx.clone();
    let out = topo
        .run_in(
            &topo.lb.netns,
            &lbx,
            &[
                "run",
                "--iface",
                "nosuch0",
                "--socket",
                other_socket.to_str().expect("utf-8 path"),
                "--config",
                other_config.to_str().expect("utf-8 path"),
            ],
            patience(Duration::from_secs(20)),
        )
        .expect("lbx run --iface nosuch0 should exit by itself");
    assert!(!out.status.success(), "`lbx run --iface nosuch0` succeeded");
    check_message(
        "lbx run --iface nosuch0",
        &String::from_utf8_lossy(&out.stderr),
        &["nosuch0"],
        &[
            "no such interface",
            "does not exist",
            "not found",
            "no interface",
        ],
    );
    topo.lbx(&["status"])
        .expect("the running agent still answers");

    // Without privilege: an unprivileged user may neither read nor change the configuration.
    let before = topo.backend_list().expect("backend list");
    let nobody = |args: &[&str]| {
        let mut full = vec![
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            lbx.to_str().expect("utf-8 path"),
            "--socket",
            topo.socket().to_str().expect("utf-8 path"),
        ];
        full.extend_from_slice(args);
        let out = topo
            .run_in(
                &topo.lb.netns,
                Path::new("setpriv"),
                &full,
                patience(Duration::from_secs(20)),
            )
            .expect("setpriv");
        assert!(
            !out.status.success(),
            "`lbx {}` as nobody succeeded",
            args.join(" ")
        );
        // The message must be lbx's own (not setpriv failing to run it).
        check_message(
            &format!("lbx {} (as nobody)", args.join(" ")),
            &String::from_utf8_lossy(&out.stderr),
            &["permission"],
            &[],
        );
    };
    nobody(&["status"]);
    nobody(&["backend", "del", &vip_s, &b1]);
    assert_eq!(
        before,
        topo.backend_list().expect("backend list"),
        "a refused unprivileged command changed the configuration"
    );
}
