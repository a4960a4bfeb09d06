//! The rig of lbx's cluster mode: several lb nodes behind an ECMP router ([`Fleet`]) and a
//! real etcd cluster ([`EtcdCluster`]). Host tier only: needs etcd (see xtask's `HOST_ONLY`).

use std::time::{Duration, Instant};

use lbx_tests::etcd::{EtcdCluster, Tls};

/// How long a write may take to succeed after the leader died: a new election takes an
/// election timeout (1 s) and a little more.
const REELECTION: Duration = Duration::from_secs(10);

/// `etcdctl put` until it succeeds, within `limit`; how long it took.
fn put_within(etcd: &mut EtcdCluster, key: &str, value: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        match etcd.put(key, value) {
            Ok(()) => return started.elapsed(),
            Err(e) if started.elapsed() > limit => {
                panic!("put {key} still failed after {limit:?}: {e:#}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn survives_member_loss(tls: Option<&Tls>) {
    let what = if tls.is_some() { "TLS" } else { "plain" };
    let started = Instant::now();
    let mut etcd = EtcdCluster::start(3, tls).expect("start a 3-member etcd cluster");
    eprintln!("{what}: 3 members healthy after {:?}", started.elapsed());
    etcd.put("/lbx/test/a", "1")
        .expect("put on a whole cluster");
    assert_eq!(etcd.get("/lbx/test/a").expect("get").as_deref(), Some("1"));

    etcd.kill_member(1).expect("kill member 1");
    let took = put_within(&mut etcd, "/lbx/test/b", "2", REELECTION);
    eprintln!("{what}: a write with 2 of 3 members took {took:?}");
    assert_eq!(etcd.get("/lbx/test/b").expect("get").as_deref(), Some("2"));

    etcd.kill_member(2).expect("kill member 2");
    let err = etcd
        .put("/lbx/test/c", "3")
        .expect_err("a write with 1 of 3 members (no quorum) must fail");
    eprintln!("{what}: a write without quorum: {err:#}");

    etcd.start_member(1).expect("restart member 1");
    etcd.start_member(2).expect("restart member 2");
    let took = put_within(&mut etcd, "/lbx/test/d", "4", REELECTION);
    eprintln!("{what}: after the restarts a write took {took:?}");
    for (key, value) in [
        ("/lbx/test/a", "1"),
        ("/lbx/test/b", "2"),
        ("/lbx/test/d", "4"),
    ] {
        assert_eq!(
            etcd.get(key).expect("get").as_deref(),
            Some(value),
            "{what}: {key} after the restarts"
        );
    }
    // The write that timed out without quorum may still appear now: the lone member kept it
    // in its log, and a returning quorum may commit it (Raft promises no more).
}

#[test]
fn etcd_cluster_survives_member_loss() {
    survives_member_loss(None);
    let tls = Tls::for_members(3).expect("certificates");
    survives_member_loss(Some(&tls));

    // Authentication: the user reads and writes under /lbx/, a wrong password is refused
    // in words that say so.
    let mut etcd = EtcdCluster::start(3, Some(&tls)).expect("start etcd with TLS");
    etcd.enable_auth("rootpw", "lbx", "lbxpw")
        .expect("enable authentication");
    let ok = etcd
        .etcdctl_as("lbx", "lbxpw", &["put", "/lbx/test/auth", "yes"])
        .expect("etcdctl");
    assert!(
        ok.status.success(),
        "the user could not write under /lbx/: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let outside = etcd
        .etcdctl_as("lbx", "lbxpw", &["put", "/other", "no"])
        .expect("etcdctl");
    assert!(
        !outside.status.success(),
        "the user could write outside /lbx/"
    );
    let wrong = etcd
        .etcdctl_as("lbx", "wrong", &["get", "/lbx/test/auth"])
        .expect("etcdctl");
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        !wrong.status.success() && stderr.contains("authentication failed"),
        "a wrong password must be refused as such: {} {stderr}",
        wrong.status
    );
    assert_eq!(
        etcd.get("/lbx/test/auth").expect("get as root").as_deref(),
        Some("yes")
    );
}
