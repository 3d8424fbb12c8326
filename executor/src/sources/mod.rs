//! Sources: where a partition's records come from.

pub mod file;
pub mod generator;

pub use file::FileSource;
pub use generator::GeneratorSource;
