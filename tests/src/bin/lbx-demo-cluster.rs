//! `cargo xtask demo cluster`: lbx's cluster mode end to end on a throwaway network of
//! namespaces, as a tutorial.
//!
//! Starts a real 3-member etcd over TLS, three lb nodes in cluster mode behind an ECMP
//! router and three backends; changes a weight on one node and times until every node
//! serves it; spreads real TCP connections over the nodes; takes a node out while they are
//! open; kills etcd members; and cleans everything up, also when a step fails or on Ctrl-C.
//! Every CLI command it runs is printed with what it shows. Needs root; uses only addresses
//! inside its own namespaces (10.77.0.0/16, 10.78.0.0/24, VIP 10.77.100.1).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use lbx_tests::etcd::{EtcdCluster, Tls};
use lbx_tests::fleet::{self, CLIENT_V4, Fleet, node_name};
use lbx_tests::{Connection, VIP_V4, demo, tally};

/// The cluster's name (`--cluster-name`): its keys live under /lbx/demo/ in etcd.
const CLUSTER: &str = "demo";
/// The nodes' lease (`--cluster-lease-ttl-s`): a dead weights leader is replaced within it.
const LEASE_TTL_S: u64 = 3;
/// The nodes' `--second-chance-s`: for this long after a publication, a TCP packet that
/// misses the connection table goes to the previous ring's backend. A flow that began on
/// another node after the change would be sent wrong by it, so the demo takes a node out
/// only once this has passed since its change (the default, 30 s, would make it wait long).
const SECOND_CHANCE_S: u64 = 2;
/// Limit for every node to serve a revision, or to reach a state.
const PROPAGATION_LIMIT: Duration = Duration::from_secs(10);
/// Limit for a change to succeed while etcd elects a new leader, and for the nodes to
/// reconnect after etcd's quorum came back.
const REELECTION: Duration = Duration::from_secs(15);
/// Connections kept open through the router.
const OPEN: u16 = 200;
/// New connections after a node left.
const FRESH: u16 = 60;
/// The first source port of the open connections, and of the new ones.
const OPEN_PORT: u16 = 30_000;
const FRESH_PORT: u16 = 31_000;
/// The backends' weights after step 3's change (backend-3 gets 3).
const WEIGHTS: [u32; 3] = [1, 1, 3];
/// Flows whose `lbx flow` every node is asked for.
const FLOWS_SHOWN: usize = 3;

/// Set by SIGINT or SIGTERM: the demo stops at its next check and cleans up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Fails once Ctrl-C was pressed, so that the demo unwinds and its rig cleans up.
fn check_interrupt() -> anyhow::Result<()> {
    ensure!(
        !INTERRUPTED.load(Ordering::SeqCst),
        "interrupted (Ctrl-C): stopping"
    );
    Ok(())
}

fn catch_interrupt() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// What the steps measured, for the summary.
#[derive(Debug, Default)]
struct Summary {
    built: Duration,
    /// When node 1 answered step 2's change.
    changed: Option<Instant>,
    propagation: Duration,
    per_node: Vec<(usize, u64)>,
    flows_checked: usize,
    left: usize,
    kept: usize,
    open: usize,
    fresh: usize,
    failover: Option<(usize, Duration)>,
    one_member_change: Duration,
    refused_after: Duration,
    reconverged: Duration,
    last_revision: u64,
}

fn main() {
    demo::require_root();
    catch_interrupt();
    let started = Instant::now();
    let vip = SocketAddr::new(VIP_V4.into(), 80);
    println!("lbx cluster demo: three XDP load balancers sharing one configuration through etcd\n");
    println!("Building a test network of namespaces:");
    println!("  client 10.77.1.1 --> router (ECMP, layer-4 hash) --> lb nodes 10.77.0.21-23");
    println!("  --> backends 10.77.0.11-13, which answer the client directly (DSR);");
    println!("  VIP {vip}; etcd members 10.78.0.11-13 (TLS, client certificates) on a");
    println!("  control network of their own, which the nodes reach on 10.78.0.101-103\n");

    let (tls, mut etcd, mut fleet) = match start_rig(vip) {
        Ok(rig) => rig,
        Err(e) => {
            eprintln!("error: failed to build the demo network: {e:#}");
            std::process::exit(1);
        }
    };
    fleet.set_report_on_drop(false);
    let mut summary = Summary {
        built: started.elapsed(),
        ..Summary::default()
    };
    let result = demo(&mut etcd, &mut fleet, vip, &mut summary);
    match result {
        Ok(()) => {
            print_summary(&summary, started.elapsed());
            println!("Removing the namespaces, processes and certificates.");
            drop(fleet);
            drop(etcd);
            drop(tls);
        }
        Err(e) => {
            eprintln!("error: {e:#}\n");
            if !INTERRUPTED.load(Ordering::SeqCst) {
                eprintln!("{}", fleet.log_tails());
                eprintln!("{}", etcd.log_tails());
            }
            // Dropped in this order: the nodes leave etcd's control network first.
            drop(fleet);
            drop(etcd);
            drop(tls);
            std::process::exit(if INTERRUPTED.load(Ordering::SeqCst) {
                130
            } else {
                1
            });
        }
    }
}

/// The certificates, etcd and the fleet, built in that order (and to be dropped in reverse:
/// the nodes leave etcd's control network first).
fn start_rig(vip: SocketAddr) -> anyhow::Result<(Tls, EtcdCluster, Fleet)> {
    let t = Instant::now();
    let tls = Tls::for_members(3).context("generate the certificates")?;
    let etcd = EtcdCluster::start(3, Some(&tls)).context("start etcd")?;
    println!(
        "etcd: 3 members healthy after {} ms (CA, server and client certificates made \
         for this run)",
        t.elapsed().as_millis()
    );
    check_interrupt()?;
    let config = fleet::config_toml(&[(vip, vec![(1, 1), (2, 1), (3, 1)])]);
    let mut builder = Fleet::builder()
        .vip(vip)
        .config(config)
        .agent_args(&["--second-chance-s", &SECOND_CHANCE_S.to_string()]);
    for i in 1..=3 {
        builder = builder.node_args(i, fleet::cluster_args(&etcd, CLUSTER, i, LEASE_TTL_S));
    }
    let fleet = builder.build(Some(&etcd)).context("build the fleet")?;
    println!(
        "fleet: 3 nodes, 3 backends, router and client ready after {} ms; each node runs",
        t.elapsed().as_millis()
    );
    println!("  (node 1's file seeded the cluster's configuration; the others read it from etcd):");
    println!("  node1$ lbx {}\n", fleet.agent_args(1, &[]).join(" "));
    Ok((tls, etcd, fleet))
}

fn demo(
    etcd: &mut EtcdCluster,
    fleet: &mut Fleet,
    vip: SocketAddr,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    println!("CLI commands below run in a node's namespace as `lbx --socket <its socket> ...`.\n");
    println!("1. Every node joined the cluster: `lbx status`, its cluster lines:");
    fleet::wait_until("a weights leader", PROPAGATION_LIMIT, || {
        Ok(fleet.leader_among(&[1, 2, 3])?.is_some())
    })
    .context("step 1")?;
    let first = fleet.served_revision(1)?;
    fleet::wait_until("every node's report in etcd", PROPAGATION_LIMIT, || {
        reports_at(fleet, 1, first, 3)
    })
    .context("step 1")?;
    for i in 1..=3 {
        show_cluster_lines(fleet, i)?;
        let rev = fleet.served_revision(i)?;
        ensure!(
            rev == first,
            "step 1: node {i} serves revision {rev}, node 1 revision {first}"
        );
    }
    let leader = fleet
        .leader_among(&[1, 2, 3])?
        .context("step 1: no node leads the weights")?;
    println!("   All three serve revision {first}; node {leader} leads the weights.\n");
    check_interrupt()?;

    let mut conns = change_and_spread(fleet, vip, summary).context("step 2")?;
    check_interrupt()?;
    agree_on_flows(fleet, vip, &conns, summary).context("step 3")?;
    check_interrupt()?;
    let survivors = take_node_out(fleet, vip, leader, &mut conns, summary).context("step 4")?;
    check_interrupt()?;
    lose_etcd_members(etcd, fleet, vip, &survivors, &mut conns, summary).context("step 5")?;
    check_interrupt()?;

    println!("6. The cluster's changes, newest first, as any node tells them:");
    demo::step(
        fleet.cli(survivors[0]),
        &node_name(survivors[0]),
        &["history", "-n", "5"],
    )
    .context("step 6")?;
    println!();
    Ok(())
}

/// Whether node `i`'s status lists the reports of `count` nodes, each serving revision `rev`
/// or later.
fn reports_at(fleet: &Fleet, i: usize, rev: u64, count: usize) -> anyhow::Result<bool> {
    let c = fleet.cluster_status(i)?;
    let nodes = c["nodes"].as_array().cloned().unwrap_or_default();
    Ok(nodes.len() == count
        && nodes
            .iter()
            .all(|n| n["revision"].as_u64().is_some_and(|r| r >= rev)))
}

/// Runs `lbx status` on node `i` and prints its cluster lines only (the line naming the
/// cluster, and the lines indented under it).
fn show_cluster_lines(fleet: &Fleet, i: usize) -> anyhow::Result<()> {
    println!("  {}$ lbx status    (its cluster lines)", node_name(i));
    let out = fleet.lbx(i, &["status"])?;
    let mut lines = out.lines().skip_while(|l| !l.starts_with("cluster "));
    let head = lines.next().context("`lbx status` shows no cluster line")?;
    println!("    {head}");
    for line in lines.take_while(|l| l.starts_with("  ")) {
        println!("    {line}");
    }
    Ok(())
}

/// Step 2: a weight changed on node 1, timed until every node serves it; connections
/// through the router, and how they spread over the nodes and the backends.
fn change_and_spread(
    fleet: &Fleet,
    vip: SocketAddr,
    summary: &mut Summary,
) -> anyhow::Result<Vec<Connection>> {
    let vip_s = vip.to_string();
    let b3 = fleet.backend(3).addr_like(vip.ip()).to_string();
    println!("2. Give backend-3 three times the weight, on node 1:");
    let w = WEIGHTS[2].to_string();
    demo::step(
        fleet.cli(1),
        "node1",
        &["backend", "weight", &vip_s, &b3, &w],
    )?;
    let answered = Instant::now();
    summary.changed = Some(answered);
    let rev = fleet.served_revision(1)?;
    let mut seen: BTreeMap<usize, Duration> = BTreeMap::new();
    while seen.len() < 2 {
        for i in [2, 3] {
            if !seen.contains_key(&i) && fleet.served_revision(i)? >= rev {
                seen.insert(i, answered.elapsed());
            }
        }
        if answered.elapsed() > PROPAGATION_LIMIT {
            bail!("revision {rev} not served by every node within {PROPAGATION_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    for (i, t) in &seen {
        println!(
            "   node {i} serves revision {rev} {:.1} ms after node 1's answer",
            t.as_secs_f64() * 1e3
        );
    }
    summary.propagation = seen.values().copied().max().unwrap_or_default();
    println!(
        "   the last node served it after {:.1} ms (each node polled with `lbx stats`):",
        summary.propagation.as_secs_f64() * 1e3
    );
    fleet::wait_until(
        "every node's report names the new revision",
        PROPAGATION_LIMIT,
        || reports_at(fleet, 1, rev, 3),
    )?;
    println!(
        "   every node's report in etcd (the lines under each status) names it {} ms after \
         the answer:",
        answered.elapsed().as_millis()
    );
    for i in 1..=3 {
        show_cluster_lines(fleet, i)?;
    }
    println!();

    println!(
        "   {OPEN} TCP connections to {vip} from {CLIENT_V4}:{OPEN_PORT}-{}, through the \
         router, kept open:",
        OPEN_PORT + OPEN - 1
    );
    let ports: Vec<u16> = (OPEN_PORT..OPEN_PORT + OPEN).collect();
    let t = Instant::now();
    let conns = fleet.client().open_many(vip, &ports)?;
    let answers: Vec<&str> = conns.iter().filter_map(Connection::first_answer).collect();
    println!(
        "   all {} answered in {} ms. Over the nodes (`lbx stats`, the VIP's lines):",
        answers.len(),
        t.elapsed().as_millis()
    );
    let mut per_node = Vec::new();
    for i in 1..=3 {
        println!("  {}$ lbx stats", node_name(i));
        let out = fleet.lbx(i, &["stats"])?;
        demo::print_indented(out.split("\n\n").next().unwrap_or_default());
        per_node.push((i, vip_new_flows(fleet, i, vip)?));
    }
    let line: Vec<String> = per_node
        .iter()
        .map(|(i, n)| format!("node {i} {n}"))
        .collect();
    println!("   new flows per node: {}", line.join(", "));
    ensure!(
        per_node.iter().map(|(_, n)| n).sum::<u64>() >= u64::from(OPEN),
        "the nodes counted fewer new flows than the {OPEN} connections: {per_node:?}"
    );
    summary.per_node = per_node;
    println!("   Over the backends (who answered each connection):\n");
    demo::print_spread(&WEIGHTS, &tally(&answers), answers.len());
    Ok(conns)
}

/// `lbx stats`' new flows of the TCP VIP `vip` on node `i`.
fn vip_new_flows(fleet: &Fleet, i: usize, vip: SocketAddr) -> anyhow::Result<u64> {
    let stats = fleet.lbx_json(i, &["stats"])?;
    let name = format!("{vip}/tcp");
    stats["vips"]
        .as_array()
        .and_then(|vips| vips.iter().find(|v| v["vip"] == name.as_str()))
        .and_then(|v| v["new_flows"].as_u64())
        .with_context(|| format!("node {i}: no new_flows of {name} in `lbx stats --json`"))
}

/// Step 3: every node names the same backend for a flow, the one that answered it.
fn agree_on_flows(
    fleet: &Fleet,
    vip: SocketAddr,
    conns: &[Connection],
    summary: &mut Summary,
) -> anyhow::Result<()> {
    println!("3. Every node maps a flow to the same backend, the one that answered it:");
    let vip_s = vip.to_string();
    let step = conns.len() / FLOWS_SHOWN;
    for conn in conns.iter().step_by(step.max(1)).take(FLOWS_SHOWN) {
        let src = fleet.client_end(conn);
        let answered = conn.first_answer().context("a connection never asked")?;
        println!("   {src} was answered by {answered}:");
        for i in 1..=3 {
            let args = ["flow", "--proto", "tcp", &src.to_string(), &vip_s];
            demo::step(fleet.cli(i), &node_name(i), &args)?;
            let flow = fleet.flow(i, src, vip)?;
            let name = fleet.backend_at(flow.backend).map(|b| b.name.as_str());
            ensure!(
                name == Some(answered),
                "node {i} sends {src} to {} ({}), but {answered} answered it",
                flow.backend,
                flow.source
            );
        }
        summary.flows_checked += 1;
    }
    println!("   (the node the router chose holds the flow in its connection table; the others");
    println!("   compute the same backend from the same Maglev table)\n");
    Ok(())
}

/// Step 4: the weights leader's node leaves while the connections are open; returns the
/// two nodes left.
fn take_node_out(
    fleet: &mut Fleet,
    vip: SocketAddr,
    leader: usize,
    conns: &mut [Connection],
    summary: &mut Summary,
) -> anyhow::Result<Vec<usize>> {
    let survivors: Vec<usize> = (1..=3).filter(|&i| i != leader).collect();
    let window = Duration::from_secs(SECOND_CHANCE_S);
    let since = summary.changed.map_or(window, |t| t.elapsed());
    if since < window {
        println!(
            "   (waiting {} ms: these flows began after the change, so a node that gets one \
             within\n   --second-chance-s {SECOND_CHANCE_S} of it would send it to the previous ring's backend)",
            (window - since).as_millis() + 100
        );
        std::thread::sleep(window - since + Duration::from_millis(100));
    }
    println!(
        "4. Node {leader} (the weights leader) leaves with {} connections open: the router's",
        conns.len()
    );
    println!("   route via it is withdrawn (as BGP would), then its agent is killed (SIGKILL)");
    fleet.withdraw_route(leader)?;
    fleet.kill_agent(leader)?;
    let killed = Instant::now();
    summary.left = leader;
    let mut broken = Vec::new();
    for conn in conns.iter_mut() {
        let was = conn
            .first_answer()
            .context("a connection never asked")?
            .to_owned();
        match conn.ask() {
            Ok(now) if now == was => {}
            Ok(now) => broken.push(format!(
                "port {} moved from {was} to {now}",
                conn.src_port()
            )),
            Err(e) => broken.push(format!("port {}: {e:#}", conn.src_port())),
        }
    }
    summary.open = conns.len();
    summary.kept = conns.len() - broken.len();
    println!(
        "   asked every open connection again: {} of {} kept their backend",
        summary.kept, summary.open
    );
    for &i in &survivors {
        let stats = fleet.lbx_json(i, &["stats"])?;
        println!(
            "   node {i}: {} packets forwarded in all, {} of them by the second chance",
            lbx_tests::reason_count(&stats, "forwarded")?,
            lbx_tests::reason_count(&stats, "forwarded_second_chance")?
        );
    }
    ensure!(broken.is_empty(), "connections broken or moved: {broken:?}");
    let ports: Vec<u16> = (FRESH_PORT..FRESH_PORT + FRESH).collect();
    let answers = fleet.client().ask_many(vip, &ports)?;
    summary.fresh = answers.len();
    println!(
        "   {} new connections, all answered by nodes {} and {}:\n",
        answers.len(),
        survivors[0],
        survivors[1]
    );
    demo::print_spread(&WEIGHTS, &tally(&answers), answers.len());
    let mut next = None;
    fleet::wait_until(
        "a new weights leader",
        Duration::from_secs(LEASE_TTL_S) + PROPAGATION_LIMIT,
        || {
            next = fleet.leader_among(&survivors)?;
            Ok(next.is_some())
        },
    )?;
    let next = next.context("found")?;
    summary.failover = Some((next, killed.elapsed()));
    println!(
        "   node {next} leads the weights {:.1} s after node {leader}'s agent died (its lease \
         of {LEASE_TTL_S} s ran out):",
        killed.elapsed().as_secs_f64()
    );
    show_cluster_lines(fleet, next)?;
    println!();
    Ok(survivors)
}

/// Step 5: etcd loses one member (changes go on), then a second (changes are refused,
/// serving goes on), then gets both back (the nodes converge).
fn lose_etcd_members(
    etcd: &mut EtcdCluster,
    fleet: &Fleet,
    vip: SocketAddr,
    survivors: &[usize],
    conns: &mut [Connection],
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let [a, b] = survivors[..] else {
        bail!("two nodes should be left, not {survivors:?}");
    };
    let (na, nb) = (node_name(a), node_name(b));
    let vip_s = vip.to_string();
    let b2 = fleet.backend(2).addr_like(vip.ip()).to_string();

    println!("5. etcd member 1 is killed (SIGKILL); 2 of 3 members still make a quorum:");
    etcd.kill_member(1)?;
    let t = Instant::now();
    let args = ["backend", "weight", &vip_s, &b2, "2"];
    println!(
        "  {na}$ lbx --json {}    (again until etcd answers)",
        args.join(" ")
    );
    let (attempts, rev) = fleet.change_within(a, &args, REELECTION)?;
    summary.one_member_change = t.elapsed();
    println!(
        "    revision {rev}: {attempts} attempt(s), {} ms after the kill (etcd may first elect \
         a new leader)",
        t.elapsed().as_millis()
    );
    let lag = fleet.wait_revision(b, rev, PROPAGATION_LIMIT)?;
    println!(
        "   {nb} serves revision {rev} {:.1} ms later\n",
        lag.as_secs_f64() * 1e3
    );
    check_interrupt()?;

    println!("   etcd member 2 is killed too: no quorum; a change is refused:");
    etcd.kill_member(2)?;
    let args = ["backend", "weight", &vip_s, &b2, "3"];
    println!("  {na}$ lbx {}", args.join(" "));
    let t = Instant::now();
    let out = fleet.cli(a).output(&args)?;
    summary.refused_after = t.elapsed();
    demo::print_indented(String::from_utf8_lossy(&out.stderr).trim_end());
    let code = out.status.code();
    println!(
        "    (exit status {}, after {:.1} s)",
        code.map_or("none".to_owned(), |c| c.to_string()),
        summary.refused_after.as_secs_f64()
    );
    ensure!(
        code == Some(10),
        "a change without quorum should be refused with exit status 10 (unavailable), not \
         {:?}",
        out.status
    );
    fleet::wait_until(
        &format!("{na} says it is degraded"),
        PROPAGATION_LIMIT,
        || Ok(fleet.lbx(a, &["status"])?.contains("degraded")),
    )?;
    show_cluster_lines(fleet, a)?;
    for conn in conns.iter_mut() {
        conn.ask()
            .context("an open connection without etcd's quorum")?;
    }
    ensure!(
        fleet.served_revision(a)? == rev,
        "{na} no longer serves revision {rev}"
    );
    println!(
        "   serving goes on: all {} open connections answered again, revision {rev} still served\n",
        conns.len()
    );
    check_interrupt()?;

    println!("   etcd members 1 and 2 are started again:");
    let t = Instant::now();
    etcd.start_member(1)?;
    etcd.start_member(2)?;
    for i in [a, b] {
        fleet::wait_until(
            &format!("{} connected again", node_name(i)),
            REELECTION,
            || Ok(fleet.cluster_status(i)?["state"] == "connected"),
        )?;
    }
    let now = fleet.served_revision(a)?;
    if now > rev {
        println!(
            "   the refused change was committed after all once the quorum was back (revision \
             {now}): etcd\n   had kept it; every node applied it as a whole, and `lbx history` \
             shows it (README, \"Partitions and quorum loss\")"
        );
    }
    let args = ["backend", "weight", &vip_s, &b2, "1"];
    println!(
        "  {nb}$ lbx --json {}    (again until etcd answers)",
        args.join(" ")
    );
    let (attempts, rev) = fleet.change_within(b, &args, REELECTION)?;
    println!("    revision {rev}: {attempts} attempt(s)");
    fleet.wait_revision(a, rev, PROPAGATION_LIMIT)?;
    summary.reconverged = t.elapsed();
    fleet::wait_until(
        "both nodes' reports name the last revision",
        PROPAGATION_LIMIT,
        || reports_at(fleet, a, rev, 2),
    )?;
    summary.last_revision = rev;
    println!(
        "   both nodes serve revision {rev} {:.1} s after the restarts:",
        t.elapsed().as_secs_f64()
    );
    for i in [a, b] {
        show_cluster_lines(fleet, i)?;
    }
    println!();
    Ok(())
}

fn print_summary(s: &Summary, total: Duration) {
    let spread: Vec<String> = s
        .per_node
        .iter()
        .map(|(i, n)| format!("node {i} {n}"))
        .collect();
    println!("Summary:");
    println!(
        "  etcd (3 members, TLS) and 3 lb nodes in cluster mode ready in {:.1} s",
        s.built.as_secs_f64()
    );
    println!(
        "  a change on node 1 served by every node within {:.1} ms",
        s.propagation.as_secs_f64() * 1e3
    );
    println!("  {OPEN} connections over the nodes: {}", spread.join(", "));
    println!(
        "  {} flows: every node named the backend that answered",
        s.flows_checked
    );
    println!(
        "  node {} left: {} of {} open connections kept, {} new ones served",
        s.left, s.kept, s.open, s.fresh
    );
    if let Some((next, after)) = s.failover {
        println!(
            "  weights leader: node {next} after {:.1} s",
            after.as_secs_f64()
        );
    }
    println!(
        "  etcd with 2 of 3 members: a change took {} ms; with 1 of 3: refused (exit \
         status 10) after {:.1} s, serving went on",
        s.one_member_change.as_millis(),
        s.refused_after.as_secs_f64()
    );
    println!(
        "  members back: the nodes converged on revision {} within {:.1} s",
        s.last_revision,
        s.reconverged.as_secs_f64()
    );
    println!("Done in {:.1} s.", total.as_secs_f64());
}
