//! The Prometheus endpoint against a real Prometheus server: it scrapes a running lbx that
//! balances real connections over an adaptive VIP; every query of the shipped dashboard and
//! every alert rule must return series, the scrape must pass `promtool check metrics`, and
//! the counters must equal `lbx stats` on the same traffic.
//!
//! Host tier only: the VMs' initramfs carries no Prometheus (two 50 MB Go binaries and
//! their libraries in every guest), see `xtask/src/vm.rs`.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use lbx_tests::{
    DIRECT_PORT, Topology, VIP_V4,
    prometheus::{
        PROMETHEUS, PROMTOOL, Prometheus, http, loaded_rules, parse_exposition, sample_value,
    },
    topology::patience,
};
use serde_json::Value;

const METRICS: &str = "127.0.0.1:9101";
/// A second target where no agent listens: an agent that is down.
const DEAD_AGENT: &str = "127.0.0.1:9102";
const PROMETHEUS_LISTEN: &str = "127.0.0.1:9090";
/// What the dashboard's `$__rate_interval` becomes at a 1 s scrape interval.
const RATE_INTERVAL: &str = "10s";
/// Connections per second of the load, and how long it runs.
const RATE: u32 = 20;
const LOAD: Duration = Duration::from_secs(12);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_owned()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a socket address")
}

/// Every query of the dashboard's panels and variables, with its variables filled in as
/// Grafana fills them with "All".
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("deploy/grafana/lbx.json")).expect("dashboard");
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let fill = |e: &str| {
        e.replace("$__rate_interval", RATE_INTERVAL)
            .replace("$job", "lbx")
            .replace("$vip", ".*")
            .replace("$backend", ".*")
    };
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_owned();
            out.push((title, fill(t["expr"].as_str().expect("a target's expr"))));
        }
    }
    // `label_values(SELECTOR, label)`: the selector must find series.
    for v in dash["templating"]["list"].as_array().expect("variables") {
        if let Some(q) = v["query"]["query"].as_str()
            && let Some(inner) = q.strip_prefix("label_values(")
        {
            let selector = inner
                .rsplit_once(',')
                .expect("label_values(selector, label)")
                .0;
            out.push((format!("variable {}", v["name"]), fill(selector)));
        }
    }
    assert!(
        out.len() >= 20,
        "the dashboard has only {} queries",
        out.len()
    );
    out
}

/// How each alert rule is checked: the conditions the test creates make some fire; the
/// others' conditions (a bug, an overload) cannot be made here, so their signal, the rule
/// without its threshold, must have series. A rule without an entry fails the test.
enum RuleCheck {
    Fires,
    /// `absent(...)`: empty while the agent is scraped, and the selector inside has series.
    Absent(&'static str),
    Signal(&'static str),
}

fn rule_check(name: &str) -> Option<RuleCheck> {
    Some(match name {
        "LbxAgentDown" | "LbxBackendDown" | "LbxVipWithoutBackends" => RuleCheck::Fires,
        "LbxAgentAbsent" => RuleCheck::Absent(r#"up{job="lbx"}"#),
        "LbxPacketsDropped" => RuleCheck::Signal(
            r#"sum by (instance, reason) (rate(lbx_packets_total{reason=~"drop_bad_ring|drop_encap_failed|drop_too_big"}[5m]))"#,
        ),
        "LbxForecastOff" => RuleCheck::Signal(
            "abs(lbx_backend_forecast_flows_per_second - lbx_backend_measured_flows_per_second)",
        ),
        "LbxPublicationFailures" => {
            RuleCheck::Signal("increase(lbx_publication_failures_total[10m]) == 0")
        }
        "LbxBackendOverloaded" => RuleCheck::Signal("lbx_backend_predicted_utilisation_ratio"),
        _ => return None,
    })
}

fn scrape(topo: &Topology, accept: Option<&str>) -> (String, String) {
    let headers: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
    let (status, head, body) =
        http(&topo.lb.netns, addr(METRICS), "GET", "/metrics", &headers).expect("scrape");
    assert_eq!(status, 200, "GET /metrics: {head}\n{body}");
    (head, body)
}

/// `lbx stats --json` as (series name, labels) → value, in the exposition's names.
fn stats_counters(stats: &Value) -> BTreeMap<(String, Vec<(String, String)>), f64> {
    let mut out = BTreeMap::new();
    let mut put = |name: &str, labels: Vec<(&str, &str)>, v: &Value| {
        let labels = labels
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        out.insert(
            (name.to_owned(), labels),
            v.as_u64().expect("a counter") as f64,
        );
    };
    for (reason, n) in stats["reasons"].as_object().expect("reasons") {
        put("lbx_packets_total", vec![("reason", reason)], n);
    }
    for v in stats["vips"].as_array().expect("vips") {
        let vip = v["vip"].as_str().expect("vip");
        for field in ["packets", "bytes", "new_flows"] {
            put(
                &format!("lbx_vip_{field}_total"),
                vec![("vip", vip)],
                &v[field],
            );
            for b in v["backends"].as_array().expect("backends") {
                let backend = b["address"].as_str().expect("address");
                put(
                    &format!("lbx_backend_{field}_total"),
                    vec![("vip", vip), ("backend", backend)],
                    &b[field],
                );
            }
        }
    }
    out
}

#[test]
fn metrics_feed_the_dashboard_and_the_alerts() {
    for tool in [PROMETHEUS, PROMTOOL] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: `cargo xtask test` installs Debian's prometheus package"
        );
    }
    let vip = SocketAddr::new(VIP_V4.into(), 80);
    let empty_vip = SocketAddr::new(VIP_V4.into(), 81);
    let mut topo = Topology::builder()
        .backends(3)
        .vip(vip)
        .agent_args(&["--metrics-listen", METRICS])
        .build()
        .expect("topology");
    topo.add_vip(vip, &[(1, 100), (2, 100), (3, 100)])
        .expect("add VIP");
    let v = vip.to_string();
    topo.lbx(&[
        "vip",
        "health",
        &v,
        "--kind",
        "tcp",
        "--port",
        &DIRECT_PORT.to_string(),
        "--interval-ms",
        "200",
        "--timeout-ms",
        "200",
        "--fall",
        "2",
        "--rise",
        "2",
        "--slow-start-s",
        "2",
    ])
    .expect("lbx vip health");
    topo.lbx(&["vip", "adaptive", &v])
        .expect("lbx vip adaptive");
    // A VIP no backend serves: the rule for it must fire.
    topo.lbx(&["vip", "add", &empty_vip.to_string()])
        .expect("add the empty VIP");
    // A refused change (backend-1 is there already), counted.
    let first = topo.backend_addr(1, vip).to_string();
    topo.lbx_fails(&["backend", "add", &v, &first, "--weight", "5"])
        .expect("a second backend-1 is refused");

    // Backend-2's service dies: the rule for a backend down must fire.
    topo.stop_server(2).expect("stop backend-2's server");

    let rules = repo().join("deploy/prometheus/lbx-rules.yml");
    let prom = Prometheus::start(
        &topo.lb.netns,
        topo.dir(),
        addr(PROMETHEUS_LISTEN),
        &[addr(METRICS), addr(DEAD_AGENT)],
        &rules,
    )
    .expect("Prometheus");
    let started = Instant::now();

    let dead = topo.backend_addr(2, vip).to_string();
    let down = prom
        .wait_for(
            "lbx_backend_healthy == 0",
            patience(Duration::from_secs(20)),
        )
        .expect("backend-2 seen down");
    assert!(
        down.iter().all(|s| s["metric"]["backend"] == dead.as_str()),
        "only {dead} is down, Prometheus says {down:?}"
    );

    // Steady new connections for LOAD, to the two that serve.
    let client = topo.client();
    let start = Instant::now();
    let mut answered = 0u32;
    let mut port = 20000u16;
    while start.elapsed() < LOAD {
        let tick = Instant::now();
        for _ in 0..RATE / 5 {
            port += 1;
            client.ask(vip, port).expect("a connection through the VIP");
            answered += 1;
        }
        std::thread::sleep(Duration::from_millis(200).saturating_sub(tick.elapsed()));
    }
    assert!(answered > RATE, "only {answered} connections were answered");

    // One more evaluation round so that every rate window holds the whole run.
    std::thread::sleep(Duration::from_secs(3));

    let mut failures = Vec::new();
    for (title, expr) in dashboard_queries() {
        match prom.query(&expr) {
            Ok(series) if series.is_empty() => {
                failures.push(format!("{title}: no series for {expr}"))
            }
            Ok(_) => {}
            Err(e) => failures.push(format!("{title}: {e:#}")),
        }
    }

    let loaded = prom.api("/api/v1/rules", &[]).expect("the rules API");
    let loaded = loaded_rules(&loaded);
    assert!(loaded.len() >= 6, "Prometheus loaded only {loaded:?}");
    for (name, query, health, error) in &loaded {
        if health == "err" || !error.is_empty() {
            failures.push(format!("rule {name}: {health} {error}"));
        }
        let check =
            |expr: &str, want_series: bool, failures: &mut Vec<String>| match prom.query(expr) {
                Ok(s) if s.is_empty() == want_series => failures.push(format!(
                    "rule {name}: {expr} returned {}",
                    if want_series {
                        "no series".to_owned()
                    } else {
                        format!("{s:?}")
                    }
                )),
                Ok(_) => {}
                Err(e) => failures.push(format!("rule {name}: {e:#}")),
            };
        match rule_check(name) {
            Some(RuleCheck::Fires) => check(query, true, &mut failures),
            Some(RuleCheck::Absent(inner)) => {
                check(query, false, &mut failures);
                check(inner, true, &mut failures);
            }
            Some(RuleCheck::Signal(signal)) => check(signal, true, &mut failures),
            None => failures.push(format!("rule {name} has no check in this test")),
        }
    }
    // The alerts that fire are pending or firing, with the labels their messages name.
    let alerts = prom.api("/api/v1/alerts", &[]).expect("the alerts API");
    let alerts = alerts["alerts"].as_array().cloned().unwrap_or_default();
    for (name, label, value) in [
        ("LbxBackendDown", "backend", dead.as_str()),
        ("LbxVipWithoutBackends", "vip", &format!("{empty_vip}/tcp")),
        ("LbxAgentDown", "instance", DEAD_AGENT),
    ] {
        if !alerts
            .iter()
            .any(|a| a["labels"]["alertname"] == name && a["labels"][label] == value)
        {
            failures.push(format!("no alert {name} with {label}={value}: {alerts:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} checks failed:\n{}\nPrometheus log:\n{}",
        failures.len(),
        failures.join("\n"),
        prom.tail()
    );

    draw_dashboard(&topo, &prom, started.elapsed());

    // `promtool check metrics` on a scrape in the text format.
    let (head, text) = scrape(&topo, None);
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let mut promtool = Command::new(PROMTOOL);
    promtool.args(["check", "metrics"]);
    let checked = pipe(promtool, &text);
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let (head, open) = scrape(&topo, Some("application/openmetrics-text;version=1.0.0"));
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(
        open.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );

    // The counters equal `lbx stats` on the same traffic. Health probes' answers still
    // arrive (pass_not_vip), so a scrape taken between two `lbx stats` must lie between
    // them, and equal them where they agree; the scrape's cache is older than neither.
    let before = stats_counters(&topo.lbx_json(&["stats"]).expect("lbx stats"));
    std::thread::sleep(Duration::from_millis(700));
    let samples = parse_exposition(&scrape(&topo, None).1).expect("a parsable scrape");
    let after = stats_counters(&topo.lbx_json(&["stats"]).expect("lbx stats"));
    let mut compared = 0;
    for ((name, labels), b) in &before {
        let a = after[&(name.clone(), labels.clone())];
        let want: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let got = sample_value(&samples, name, &want)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in the scrape"));
        assert!(
            *b <= got && got <= a,
            "{name}{labels:?}: the scrape says {got}, `lbx stats` {b} before and {a} after"
        );
        compared += 1;
    }
    let forwarded = sample_value(&samples, "lbx_packets_total", &[("reason", "forwarded")]);
    assert!(
        forwarded.is_some_and(|f| f >= f64::from(3 * answered)),
        "forwarded {forwarded:?}"
    );
    eprintln!("{compared} counters agree with `lbx stats`; {answered} connections answered");

    // Only GET /metrics and /healthz are served.
    let m = addr(METRICS);
    for (method, target, status) in [
        ("GET", "/healthz", 200),
        ("POST", "/metrics", 405),
        ("DELETE", "/metrics", 405),
        ("GET", "/metrics/../config", 404),
        ("GET", "/", 404),
    ] {
        let (got, _, body) = http(&topo.lb.netns, m, method, target, &[]).expect("an answer");
        assert_eq!(got, status, "{method} {target}: {body}");
    }

    // A second agent (on an interface of its own) whose metrics address is taken fails
    // before it touches the interface.
    let other = topo.dir().join("other");
    std::fs::create_dir_all(&other).expect("dir");
    topo.lb
        .netns
        .ip(&["link", "add", "mx0", "type", "veth", "peer", "name", "mx1"])
        .expect("a second interface");
    topo.lb
        .netns
        .ip(&["link", "set", "mx0", "up"])
        .expect("mx0 up");
    let lbx = topo.binaries().lbx.clone();
    let run = |listen: &str| {
        topo.run_in(
            &topo.lb.netns,
            &lbx,
            &[
                "run",
                "--iface",
                "mx0",
                "--socket",
                other.join("lbx.sock").to_str().expect("utf-8"),
                "--config",
                other.join("lbx.toml").to_str().expect("utf-8"),
                "--metrics-listen",
                listen,
            ],
            patience(Duration::from_secs(20)),
        )
        .expect("lbx run exits by itself")
    };
    let out = run(METRICS);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a second agent on a taken address started"
    );
    assert!(
        err.contains(&format!(
            "cannot serve metrics on {METRICS} (--metrics-listen)"
        )) && err.contains("in use"),
        "{err}"
    );
    for (bad, names) in [("localhost", "localhost"), ("127.0.0.1:70000", "70000")] {
        let out = run(bad);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("--metrics-listen") && err.contains(names),
            "{bad}: {err}"
        );
    }
    topo.lbx(&["status"]).expect("the first agent still serves");
    scrape(&topo, None);
    drop(prom);
    topo.check_processes().expect("every process still runs");
}

/// Panels the picture shows, by title.
const PICTURED: &[&str] = &[
    "New flows per second by backend",
    "Actual vs predicted load per backend",
    "Weights: effective and operator's",
    "Backend health",
    "Passed and dropped packets by reason",
    "Predicted utilisation across backends",
];

/// Draws the main panels over the run into $LBX_DASHBOARD_PNG (the README's picture), else
/// into the test's folder.
fn draw_dashboard(topo: &Topology, prom: &Prometheus, span: Duration) {
    let path = std::env::var_os("LBX_DASHBOARD_PNG")
        .map_or_else(|| topo.dir().join("dashboard.png"), PathBuf::from);
    let queries = dashboard_queries();
    let mut panels = Vec::new();
    for title in PICTURED {
        let mut series = Vec::new();
        for (_, expr) in queries.iter().filter(|(t, _)| t == title) {
            for s in prom
                .query_range(expr, span, Duration::from_secs(1))
                .expect("a range query")
            {
                let m = &s["metric"];
                let name = m["__name__"].as_str().map(|n| {
                    n.trim_start_matches("lbx_backend_")
                        .trim_end_matches("_flows_per_second")
                        .to_owned()
                });
                let label = [
                    name,
                    m["backend"].as_str().map(str::to_owned),
                    m["reason"].as_str().map(str::to_owned),
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" ");
                let values = s["values"].as_array().cloned().unwrap_or_default();
                let t0 = values.first().and_then(|v| v[0].as_f64()).unwrap_or(0.0);
                let points = values
                    .iter()
                    .filter_map(|v| {
                        Some((v[0].as_f64()? - t0, v[1].as_str()?.parse::<f64>().ok()?))
                    })
                    .collect();
                series.push((label, points));
            }
        }
        panels.push(((*title).to_owned(), series));
    }
    lbx_tests::dashboard_png::draw(&path, &panels).expect("the dashboard's picture");
    eprintln!("the dashboard's main panels: {}", path.display());
}

/// Runs `cmd` with `input` on its stdin.
fn pipe(mut cmd: Command, input: &str) -> std::process::Output {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write to promtool");
    child.wait_with_output().expect("promtool")
}
