//! Packets per second through the balancer attached to a veth as native XDP: per core,
//! on every core at once, and under a flood of new flows. Shared by `lbx-bench` (which reports figures)
//! and `tests/tests/pps.rs` (which checks that every frame is accounted for).
//!
//! - `live`: BPF_PROG_TEST_RUN with `BPF_F_TEST_XDP_LIVE_FRAMES` (the raw syscall), and
//!   whether the kernel allows it.
//! - `rig`: veth pairs in a namespace of their own, one per CPU, the program under test
//!   on one end, a sink on the other.
//! - `sender`: an AF_PACKET socket that sends batches of frames, many flows a batch.
//! - `workers`: pinned threads, one per CPU, that send at the same time.
//! - `account`: where every frame went (veth counters, reason counters).
//! - `scene`: all of it with the balancer loaded and configured as `lbx run` would.
//! - `measure`: the one-CPU and all-CPUs figures; `flood`: the flood of new flows;
//!   `report`: the tables and JSON of `lbx-bench`.

pub mod account;
pub mod flood;
pub mod live;
pub mod measure;
pub mod report;
pub mod rig;
pub mod scene;
pub mod sender;
pub mod workers;
