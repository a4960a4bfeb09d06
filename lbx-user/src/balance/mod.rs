//! Decisions above the packet path: health probes and each backend's health state, the
//! load model (forecast and capacity), weights from its predictions, backend load
//! reports, and synthetic traces to score the model on.

pub mod health;
pub mod model;
pub mod probe;
pub mod report;
pub mod trace;
pub mod weights;
