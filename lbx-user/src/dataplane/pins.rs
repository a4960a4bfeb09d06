//! What a balancer's pin directory holds: its maps, by name, and the link it serves
//! through.

use std::path::PathBuf;

use lbx_common::maps;

/// The maps of the balancer, which a pin directory holds (with `LINK`).
pub const BALANCER_MAPS: &[&str] = &[
    maps::ACTIVE,
    maps::SETTINGS,
    maps::VIPS,
    maps::BACKENDS,
    maps::RINGS,
    maps::FLOWS,
    maps::VIP_STATS,
    maps::BACKEND_STATS,
    maps::REASONS,
];

/// The pinned XDP link under a pin directory.
pub const LINK: &str = "link";

/// Where a balancer keeps its maps.
pub struct Pins {
    pub dir: PathBuf,
    /// Maps pinned there whose sizes differ (the rings', the connection table's) are
    /// migrated into maps of this agent's sizes instead of refused.
    pub migrate: bool,
}
