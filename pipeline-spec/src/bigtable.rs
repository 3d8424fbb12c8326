use std::time::Duration;

use serde::Deserialize;

use crate::FieldError;

/// A Bigtable table, in the pipeline spec.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BigtableSpec {
    pub project: String,
    pub instance: String,
    pub table: String,
    /// The column family of the cells read or written.
    #[serde(default = "default_family")]
    pub family: String,
    /// `host:port` of an emulator. Absent: `BIGTABLE_EMULATOR_HOST` when it is set, else
    /// Google Cloud with application default credentials.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// gRPC connections, balanced.
    #[serde(default = "default_channels")]
    pub channels: usize,
    /// Deadline of one call.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_family() -> String {
    "f".to_string()
}
fn default_channels() -> usize {
    2
}
fn default_timeout_ms() -> u64 {
    2000
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl BigtableSpec {
    /// Checks every value; `field` is where this spec sits in the pipeline spec.
    pub fn validate(&self, field: &str) -> Result<(), FieldError> {
        for (name, value) in [
            ("project", &self.project),
            ("instance", &self.instance),
            ("table", &self.table),
            ("family", &self.family),
        ] {
            if !valid_id(value) {
                return Err(FieldError::new(
                    format!("{field}.{name}"),
                    format!("{value:?} is invalid: 1 to 128 letters, digits, '-', '_' or '.'"),
                ));
            }
        }
        if let Some(endpoint) = &self.endpoint {
            if endpoint.contains("://") || !endpoint.contains(':') {
                return Err(FieldError::new(
                    format!("{field}.endpoint"),
                    format!("{endpoint:?} is invalid: host:port, without a scheme"),
                ));
            }
        }
        if !(1..=64).contains(&self.channels) {
            return Err(FieldError::new(
                format!("{field}.channels"),
                format!("{} is invalid: must be between 1 and 64", self.channels),
            ));
        }
        if !(1..=600_000).contains(&self.timeout_ms) {
            return Err(FieldError::new(
                format!("{field}.timeout_ms"),
                format!(
                    "{} is invalid: must be between 1 and 600000",
                    self.timeout_ms
                ),
            ));
        }
        Ok(())
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}
