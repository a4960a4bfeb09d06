//! The lbx agent as a library: configuration, Maglev tables, publication of whole
//! generations to the XDP data plane, and the control API.

pub mod agent;
pub mod api;
pub mod config;
pub mod dataplane;
pub mod generation;
pub mod health;
pub mod maglev;
pub mod model;
pub mod net;
pub mod output;
pub mod plan;
pub mod reference;
pub mod report;
pub mod run;
pub mod slots;
pub mod sys;
pub mod trace;
pub mod weights;
