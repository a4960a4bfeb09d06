//! Prometheus metrics: the families lbx exports, the counters the agent keeps as things
//! happen, the snapshot it fills at a scrape, and the HTTP endpoint that serves them.

pub mod exposition;
pub mod live;
pub mod server;
pub mod snapshot;

pub use live::Live;
pub use server::ScrapeRequest;
pub use snapshot::Snapshot;
