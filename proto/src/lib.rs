//! Generated protobuf types shared by every Mirador crate, the transport that carries
//! them (every channel and server), the client channel that follows a region's Raft
//! leader, the one retry policy, the reader of node config files, directory locks, locks that outlive a panic, and the
//! Prometheus endpoint of every node.

pub mod config;
pub mod leader;
pub mod lock;
pub mod metrics;
pub mod retry;
pub mod shutdown;
pub mod sync;
pub mod transport;

pub mod records {
    tonic::include_proto!("mirador.records.v1");
}

pub mod coordinator {
    tonic::include_proto!("mirador.coordinator.v1");
}

pub mod admin {
    tonic::include_proto!("mirador.admin.v1");
}

/// Every Mirador service and message, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("mirador_descriptor");

pub mod raft {
    tonic::include_proto!("mirador.raft.v1");
}

pub mod region {
    tonic::include_proto!("mirador.region.v1");
}

pub mod snapshot {
    tonic::include_proto!("mirador.snapshot.v1");
}
