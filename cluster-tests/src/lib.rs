//! Test support for Mirador: the real services the tests need (the Kafka broker, the
//! Pub/Sub and Bigtable emulators), started on loopback and stopped by their pid; and,
//! as the cluster grows, multi-process cluster harnesses.

pub mod cluster;
pub mod services;
