//! The metric families lbx exports, and their encoding in the format the scraper asks
//! for: OpenMetrics (what Prometheus asks for first) or the Prometheus text format 0.0.4
//! (what plain clients and `promtool check metrics` read).

use std::{fmt, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};

use super::{
    live::Live,
    snapshot::{BackendFigures, Snapshot, VipFigures},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    Text,
}

impl Format {
    /// The format an `Accept` header asks for; the text format when it names neither.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

/// Every family, from the live metrics and one snapshot, in `format`.
pub fn encode(live: &Live, snapshot: Arc<Snapshot>, format: Format) -> String {
    let mut registry = Registry::default();
    registry.register(
        "lbx_publications",
        "Generations published",
        live.publications.clone(),
    );
    registry.register(
        "lbx_publication_failures",
        "Publications that failed (the previous generation stays in place)",
        live.publication_failures.clone(),
    );
    registry.register_with_unit(
        "lbx_publication_duration",
        "Time to publish one generation, from plan to switch",
        Unit::Seconds,
        live.publication_seconds.clone(),
    );
    registry.register(
        "lbx_config_change_errors",
        "Configuration changes refused whole; nothing was published",
        live.config_change_errors.clone(),
    );
    registry.register(
        "lbx_health_probes",
        "Health probes by result",
        live.probes.clone(),
    );
    registry.register_with_unit(
        "lbx_health_probe_duration",
        "Latency of answered health probes",
        Unit::Seconds,
        live.probe_seconds.clone(),
    );
    registry.register_collector(Box::new(SnapshotFamilies {
        snapshot,
        start_time_s: live.start_time_s,
    }));
    let mut out = String::new();
    let done = match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry),
        Format::Text => prometheus_client::encoding::prometheus_text::encode(&mut out, &registry),
    };
    done.expect("encoding into a String cannot fail");
    out
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VipLabel {
    vip: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabel {
    vip: String,
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EvidenceLabel {
    vip: String,
    backend: String,
    evidence: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

#[derive(Debug)]
struct SnapshotFamilies {
    snapshot: Arc<Snapshot>,
    start_time_s: f64,
}

/// One family: its descriptor, then a sample per label set.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, unit, kind)?;
    for (labels, metric) in samples {
        metric.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A family of one sample without labels.
fn single(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: f64,
) -> fmt::Result {
    let gauge = ConstGauge::new(value);
    gauge.encode(enc.encode_descriptor(name, help, unit, MetricType::Gauge)?)
}

fn one_if(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

impl SnapshotFamilies {
    fn backends(&self) -> impl Iterator<Item = (&VipFigures, &BackendFigures)> {
        self.snapshot
            .vips
            .iter()
            .flat_map(|v| v.backends.iter().map(move |b| (v, b)))
    }

    fn label(v: &VipFigures, b: &BackendFigures) -> BackendLabel {
        BackendLabel {
            vip: v.vip.clone(),
            backend: b.backend.clone(),
        }
    }

    /// A gauge per backend, for those `value` gives one.
    fn backend_gauge(
        &self,
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        value: impl Fn(&BackendFigures) -> Option<f64>,
    ) -> fmt::Result {
        family(
            enc,
            name,
            help,
            None,
            MetricType::Gauge,
            self.backends()
                .filter_map(|(v, b)| value(b).map(|x| (Self::label(v, b), ConstGauge::new(x)))),
        )
    }

    /// The three traffic counters of VIPs (`scope` "vip") or backends ("backend").
    fn traffic(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let vips = &self.snapshot.vips;
        type Pick = fn(&lbx_common::Counters) -> u64;
        let kinds: [(&str, &str, Pick); 3] = [
            ("packets", "Packets balanced", |t| t.packets),
            ("bytes", "Bytes balanced (the packets as received)", |t| {
                t.bytes
            }),
            ("new_flows", "Flows that took the Maglev ring", |t| {
                t.new_flows
            }),
        ];
        for (what, help, pick) in kinds {
            family(
                enc,
                &format!("lbx_vip_{what}"),
                &format!("{help}, per VIP"),
                None,
                MetricType::Counter,
                vips.iter().map(|v| {
                    (
                        VipLabel { vip: v.vip.clone() },
                        ConstCounter::new(pick(&v.traffic)),
                    )
                }),
            )?;
            family(
                enc,
                &format!("lbx_backend_{what}"),
                &format!("{help}, per backend"),
                None,
                MetricType::Counter,
                self.backends()
                    .map(|(v, b)| (Self::label(v, b), ConstCounter::new(pick(&b.traffic)))),
            )?;
        }
        Ok(())
    }
}

impl Collector for SnapshotFamilies {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let s = &self.snapshot;
        family(
            &mut enc,
            "lbx_build_info",
            "The running build",
            None,
            MetricType::Gauge,
            [(
                VersionLabel {
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                },
                ConstGauge::new(1.0),
            )],
        )?;
        single(
            &mut enc,
            "lbx_start_time",
            "When the agent started, as Unix time",
            Some(&Unit::Seconds),
            self.start_time_s,
        )?;
        single(
            &mut enc,
            "lbx_generation",
            "The generation the data plane serves",
            None,
            s.generation as f64,
        )?;
        family(
            &mut enc,
            "lbx_packets",
            "Packets by what the balancer did with them and why",
            None,
            MetricType::Counter,
            s.reasons.iter().map(|(reason, n)| {
                (
                    ReasonLabel {
                        reason: (*reason).to_owned(),
                    },
                    ConstCounter::new(*n),
                )
            }),
        )?;
        self.traffic(&mut enc)?;
        family(
            &mut enc,
            "lbx_vip_backends_in_ring",
            "Backends that take the VIP's new flows (0: its new flows are dropped)",
            None,
            MetricType::Gauge,
            s.vips.iter().map(|v| {
                (
                    VipLabel { vip: v.vip.clone() },
                    ConstGauge::new(v.backends_in_ring() as f64),
                )
            }),
        )?;
        self.backend_gauge(
            &mut enc,
            "lbx_backend_healthy",
            "1 while the backend passes its health checks (or has none), 0 while it is down",
            |b| Some(one_if(b.healthy)),
        )?;
        self.backend_gauge(
            &mut enc,
            "lbx_backend_drained",
            "1 while the backend is drained: no new flows, open ones keep going",
            |b| Some(one_if(b.drained)),
        )?;
        self.backend_gauge(
            &mut enc,
            "lbx_backend_slow_start",
            "1 while a recovered backend's weight ramps up",
            |b| Some(one_if(b.slow_start)),
        )?;
        self.backend_gauge(
            &mut enc,
            "lbx_backend_operator_weight",
            "The weight the operator configured",
            |b| Some(f64::from(b.operator_weight)),
        )?;
        self.backend_gauge(
            &mut enc,
            "lbx_backend_effective_weight",
            "The weight in the published ring (adaptive or configured, times the slow start)",
            |b| Some(b.effective_weight),
        )?;
        self.backend_gauge(
            &mut enc,
            "lbx_backend_ring_slots",
            "Slots of the VIP's Maglev ring the backend owns",
            |b| Some(b.ring_slots as f64),
        )?;
        self.backend_gauge(
            &mut enc,
            "lbx_backend_active_flows",
            "Flows to the backend seen within their idle time (a drain is over at 0)",
            |b| Some(b.active_flows as f64),
        )?;
        self.backend_gauge(
            &mut enc,
            "lbx_backend_measured_flows_per_second",
            "New flows per second over the last control interval",
            |b| b.measured_flows_per_s,
        )?;
        self.backend_gauge(
            &mut enc,
            "lbx_backend_probe_latency_seconds",
            "Health probe latency, exponentially smoothed",
            |b| b.probe_latency_s,
        )?;
        self.backend_gauge(
            &mut enc,
            "lbx_backend_adaptive_weight",
            "The weight the adaptive model chose (adaptive VIPs)",
            |b| b.load.as_ref().map(|l| f64::from(l.adaptive_weight)),
        )?;
        self.backend_gauge(
            &mut enc,
            "lbx_backend_forecast_flows_per_second",
            "The model's forecast of new flows per second for the next interval",
            |b| b.load.as_ref().and_then(|l| l.forecast_flows_per_s),
        )?;
        self.backend_gauge(
            &mut enc,
            "lbx_backend_capacity_flows_per_second",
            "The model's estimate of the new flows per second the backend can serve",
            |b| b.load.as_ref().and_then(|l| l.capacity_flows_per_s),
        )?;
        self.backend_gauge(
            &mut enc,
            "lbx_backend_predicted_utilisation_ratio",
            "Forecast over capacity: 1 is a backend predicted to be at its capacity",
            |b| b.load.as_ref().and_then(|l| l.predicted_utilisation),
        )?;
        family(
            &mut enc,
            "lbx_backend_capacity_evidence",
            "1 for the kind of evidence behind the capacity estimate",
            None,
            MetricType::Gauge,
            self.backends().filter_map(|(v, b)| {
                b.load.as_ref().map(|l| {
                    (
                        EvidenceLabel {
                            vip: v.vip.clone(),
                            backend: b.backend.clone(),
                            evidence: l.evidence.to_owned(),
                        },
                        ConstGauge::new(1.0),
                    )
                })
            }),
        )?;
        family(
            &mut enc,
            "lbx_adaptive_weight_changes",
            "Times the adaptive model moved the backend's weight",
            None,
            MetricType::Counter,
            self.backends().filter_map(|(v, b)| {
                b.load
                    .as_ref()
                    .map(|l| (Self::label(v, b), ConstCounter::new(l.weight_changes)))
            }),
        )?;
        single(
            &mut enc,
            "lbx_flow_table_slots",
            "Slots of the connection table",
            None,
            s.flow_table.slots as f64,
        )?;
        single(
            &mut enc,
            "lbx_flow_table_occupancy_ratio",
            "Share of connection-table slots holding a flow, estimated from a sample",
            None,
            s.flow_table.occupancy(),
        )?;
        if let Some(c) = &s.cluster {
            single(
                &mut enc,
                "lbx_cluster_revision",
                "The cluster's configuration revision this node serves",
                None,
                c.revision as f64,
            )?;
            single(
                &mut enc,
                "lbx_cluster_connected",
                "1 while etcd answers this node; 0: cut off, serving its last revision",
                None,
                f64::from(u8::from(c.connected)),
            )?;
            single(
                &mut enc,
                "lbx_cluster_leader",
                "1 while this node is the weights leader",
                None,
                f64::from(u8::from(c.leader)),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lbx_common::Counters;

    use crate::metrics::snapshot::{ClusterFigures, LoadFigures};

    fn snapshot() -> Snapshot {
        Snapshot {
            generation: 7,
            reasons: vec![("forwarded", 10), ("drop_too_big", 1)],
            vips: vec![VipFigures {
                vip: "10.0.0.1:80/tcp".into(),
                traffic: Counters {
                    packets: 11,
                    bytes: 1100,
                    new_flows: 3,
                },
                backends: vec![BackendFigures {
                    backend: "10.1.0.1".into(),
                    traffic: Counters {
                        packets: 11,
                        bytes: 1100,
                        new_flows: 3,
                    },
                    healthy: true,
                    operator_weight: 100,
                    effective_weight: 100.0,
                    ring_slots: 101,
                    active_flows: 5,
                    load: Some(LoadFigures {
                        adaptive_weight: 40,
                        evidence: "quiet",
                        weight_changes: 2,
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
            }],
            cluster: Some(ClusterFigures {
                revision: 42,
                connected: false,
                leader: true,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn both_formats_carry_the_families() {
        let live = Live::default();
        live.publications.inc();
        live.probe("10.0.0.1:80/tcp", "10.1.0.1", true, false, 0.002);
        let snap = Arc::new(snapshot());
        let text = encode(&live, snap.clone(), Format::Text);
        for line in [
            "# TYPE lbx_packets_total counter",
            "lbx_packets_total{reason=\"drop_too_big\"} 1",
            "lbx_vip_packets_total{vip=\"10.0.0.1:80/tcp\"} 11",
            "lbx_backend_bytes_total{vip=\"10.0.0.1:80/tcp\",backend=\"10.1.0.1\"} 1100",
            "lbx_backend_ring_slots{vip=\"10.0.0.1:80/tcp\",backend=\"10.1.0.1\"} 101",
            "lbx_backend_active_flows{vip=\"10.0.0.1:80/tcp\",backend=\"10.1.0.1\"} 5",
            "lbx_backend_capacity_evidence{vip=\"10.0.0.1:80/tcp\",backend=\"10.1.0.1\",evidence=\"quiet\"} 1",
            "lbx_adaptive_weight_changes_total{vip=\"10.0.0.1:80/tcp\",backend=\"10.1.0.1\"} 2",
            "lbx_publications_total 1",
            "lbx_generation 7",
            "lbx_cluster_revision 42",
            "lbx_cluster_connected 0",
            "lbx_cluster_leader 1",
            "lbx_health_probes_total{vip=\"10.0.0.1:80/tcp\",backend=\"10.1.0.1\",result=\"ok\"} 1",
            "lbx_build_info{version=\"",
        ] {
            assert!(text.contains(line), "no {line:?} in:\n{text}");
        }
        assert!(!text.contains("# EOF"), "the text format has no EOF marker");
        // A backend without a model has no forecast sample rather than a made-up one.
        assert!(
            !text.contains("lbx_backend_forecast_flows_per_second{"),
            "{text}"
        );
        let open = encode(&live, snap, Format::OpenMetrics);
        assert!(open.ends_with("# EOF\n"), "{open}");
        assert!(open.contains("# TYPE lbx_packets counter"), "{open}");
    }

    #[test]
    fn accept_header_picks_the_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::from_accept(Some("*/*")), Format::Text);
        assert_eq!(Format::from_accept(None), Format::Text);
    }
}
