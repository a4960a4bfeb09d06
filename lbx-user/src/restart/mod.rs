//! Restarts: what an agent takes over from the one before it, whose balancer went on
//! serving from its pinned link and maps (see `dataplane::Balancer::attach`): the
//! publisher's place, the VIP and backend numbering, and the backends it had taken out.

mod inherit;

pub use inherit::{Inherited, inherit};
