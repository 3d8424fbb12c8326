//! Generated protobuf types shared by every Mirador crate.

pub mod records {
    tonic::include_proto!("mirador.records.v1");
}
