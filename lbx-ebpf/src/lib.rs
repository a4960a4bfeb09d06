//! Empty library target: lets lbx-user name this crate as a build dependency, so cargo
//! rebuilds the agent when the XDP programs change.
#![no_std]
