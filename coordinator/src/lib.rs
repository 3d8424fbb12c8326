//! Coordinator: the Raft group that assigns partitions to executors.
