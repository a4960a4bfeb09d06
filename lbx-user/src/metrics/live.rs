//! Metrics the agent updates as things happen (publications, refused changes, probes),
//! rather than reads at a scrape. Each handle is shared: the agent's thread counts while
//! the endpoint encodes.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub vip: String,
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    pub vip: String,
    pub backend: String,
    /// `ok`, `failed` (refused or a wrong answer) or `timeout`.
    pub result: &'static str,
}

fn publication_histogram() -> Histogram {
    // 0.5 ms to about 4 s: an RCU grace period per switch puts most near 10 ms.
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

fn probe_histogram() -> Histogram {
    // 0.1 ms to about 3 s: a probe on the same link answers in under a millisecond; a
    // queue behind requests adds up to the check's timeout.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

#[derive(Debug)]
pub struct Live {
    pub publications: Counter,
    pub publication_failures: Counter,
    pub publication_seconds: Histogram,
    /// Changes refused whole (a configuration that does not validate, a MAC that cannot
    /// be resolved, ...): nothing was published.
    pub config_change_errors: Counter,
    pub probes: Family<ProbeLabels, Counter>,
    pub probe_seconds: Family<BackendLabels, Histogram, fn() -> Histogram>,
    /// Unix time the agent started, in seconds.
    pub start_time_s: f64,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            publications: Counter::default(),
            publication_failures: Counter::default(),
            publication_seconds: publication_histogram(),
            config_change_errors: Counter::default(),
            probes: Family::default(),
            probe_seconds: Family::new_with_constructor(probe_histogram),
            start_time_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        }
    }
}

impl Live {
    /// A probe's result and, when it was answered, its latency.
    pub fn probe(&self, vip: &str, backend: &str, ok: bool, timed_out: bool, latency_s: f64) {
        let result = match (ok, timed_out) {
            (true, _) => "ok",
            (false, true) => "timeout",
            (false, false) => "failed",
        };
        self.probes
            .get_or_create(&ProbeLabels {
                vip: vip.to_owned(),
                backend: backend.to_owned(),
                result,
            })
            .inc();
        if ok {
            self.probe_seconds
                .get_or_create(&BackendLabels {
                    vip: vip.to_owned(),
                    backend: backend.to_owned(),
                })
                .observe(latency_s);
        }
    }

    /// Drops a removed backend's series, so that it stops being exported.
    pub fn forget_backend(&self, vip: &str, backend: &str) {
        for result in ["ok", "timeout", "failed"] {
            self.probes.remove(&ProbeLabels {
                vip: vip.to_owned(),
                backend: backend.to_owned(),
                result,
            });
        }
        self.probe_seconds.remove(&BackendLabels {
            vip: vip.to_owned(),
            backend: backend.to_owned(),
        });
    }
}
