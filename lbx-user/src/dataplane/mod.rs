//! The XDP data plane from user space: loading and attaching the programs and their maps,
//! the plan from a configuration to map contents, stable slot numbers, the publisher that
//! switches whole generations, the flows still active, and next-hop resolution for the
//! frames the balancer sends.

pub mod activity;
mod balancer;
mod error;
pub mod generation;
pub mod holder;
mod layout;
pub mod memory;
mod migrate;
mod mode;
pub mod movement;
pub mod neighbour;
mod object;
mod pins;
pub mod plan;
pub mod rings;
pub mod slots;
pub mod sys;
pub mod vip_tables;

pub use balancer::{Balancer, load_and_attach, load_unattached, preflight, remove_pins};
pub use error::DataPlaneError;
pub use mode::Mode;
pub use object::Object;
pub use pins::Pins;
pub use plan::{DEFAULT_SECOND_CHANCE_S, FlowIdle};
