//! Coordinator: the Raft group that assigns partitions to executors.

pub mod admin;
pub mod control;
pub mod executors;
pub mod metrics;
pub mod node;
pub mod planner;
pub mod raft;
pub mod region;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod status;
