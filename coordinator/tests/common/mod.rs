//! Shared by the coordinator's integration tests.

use mirador_coordinator::state::Command;

/// Registers executor `id` with 4 slots and no GPU.
pub fn register(id: &str) -> Command {
    Command::RegisterExecutor {
        id: id.into(),
        address: format!("{id}:7000"),
        region: "eu".into(),
        slots: 4,
        gpu: false,
    }
}
