use serde::Deserialize;

use crate::FieldError;

/// A subscription to read, in the pipeline spec. Each lane (one streaming pull) is a
/// partition of the pipeline.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PubsubSourceSpec {
    pub project: String,
    /// May name `{region}`: each region then reads a subscription of its own (the
    /// executor's `--region` in place of `{region}`), and a failover moves the taking
    /// region's subscription to where the other's stood.
    pub subscription: String,
    #[serde(default = "default_lanes")]
    pub lanes: u32,
    /// `http://host:port` of an emulator. Absent: `PUBSUB_EMULATOR_HOST` when it is set,
    /// else Google Cloud with application default credentials.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Messages a lane holds unacknowledged at most (flow control, per lane).
    #[serde(default = "default_outstanding")]
    pub max_outstanding_messages: i64,
    /// End a lane once it has had no message for this long and everything it read is
    /// delivered (a bounded source, for replays and tests). Absent: follow forever.
    #[serde(default)]
    pub stop_after_idle_ms: Option<u64>,
    /// How far each lease extension reaches, in seconds (10 to 600): a message held by a
    /// lane that died is delivered again at most this long after its last extension.
    #[serde(default = "default_lease_extension")]
    pub lease_extension_secs: u64,
}

fn default_lease_extension() -> u64 {
    60
}

fn default_lanes() -> u32 {
    1
}
fn default_outstanding() -> i64 {
    4096
}

/// A topic to publish to, in the pipeline spec.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PubsubSinkSpec {
    pub project: String,
    pub topic: String,
    #[serde(default)]
    pub endpoint: Option<String>,
}

/// In a subscription's name, the region of the executor that reads it.
pub const REGION_PLACEHOLDER: &str = "{region}";

fn valid_id(id: &str) -> bool {
    // Pub/Sub's rule: 3 to 255 characters, starting with a letter.
    (3..=255).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_alphabetic())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.~+%".contains(c))
}

fn validate_common(
    field: &str,
    project: &str,
    (name, id): (&str, &str),
    endpoint: Option<&String>,
) -> Result<(), FieldError> {
    for (key, value) in [("project", project), (name, id)] {
        if !valid_id(value) {
            return Err(FieldError::new(
                format!("{field}.{key}"),
                format!(
                    "{value:?} is invalid: 3 to 255 letters, digits or -_.~+%, starting with a letter"
                ),
            ));
        }
    }
    if let Some(endpoint) = endpoint {
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(FieldError::new(
                format!("{field}.endpoint"),
                format!("{endpoint:?} is invalid: http://host:port or https://host"),
            ));
        }
    }
    Ok(())
}

impl PubsubSourceSpec {
    pub fn validate(&self, field: &str) -> Result<(), FieldError> {
        // A region's name is checked where it is configured: here any will do.
        validate_common(
            field,
            &self.project,
            (
                "subscription",
                &self.subscription.replace(REGION_PLACEHOLDER, "region"),
            ),
            self.endpoint.as_ref(),
        )?;
        if !(1..=64).contains(&self.lanes) {
            return Err(FieldError::new(
                format!("{field}.lanes"),
                format!("{} is invalid: must be between 1 and 64", self.lanes),
            ));
        }
        if !(10..=600).contains(&self.lease_extension_secs) {
            return Err(FieldError::new(
                format!("{field}.lease_extension_secs"),
                format!(
                    "{} is invalid: must be between 10 and 600",
                    self.lease_extension_secs
                ),
            ));
        }
        if !(1..=1_000_000).contains(&self.max_outstanding_messages) {
            return Err(FieldError::new(
                format!("{field}.max_outstanding_messages"),
                format!(
                    "{} is invalid: must be between 1 and 1000000",
                    self.max_outstanding_messages
                ),
            ));
        }
        Ok(())
    }

    /// Whether each region reads a subscription of its own.
    pub fn per_region(&self) -> bool {
        self.subscription.contains(REGION_PLACEHOLDER)
    }

    /// The spec as region `region` reads it: `{region}` replaced by its name. `None` when
    /// the subscription names `{region}` and `region` is empty (a node of no region).
    pub fn in_region(&self, region: &str) -> Option<PubsubSourceSpec> {
        if !self.per_region() {
            return Some(self.clone());
        }
        (!region.is_empty()).then(|| PubsubSourceSpec {
            subscription: self.subscription.replace(REGION_PLACEHOLDER, region),
            ..self.clone()
        })
    }

    pub fn subscription_path(&self) -> String {
        format!(
            "projects/{}/subscriptions/{}",
            self.project, self.subscription
        )
    }
}

impl PubsubSinkSpec {
    pub fn validate(&self, field: &str) -> Result<(), FieldError> {
        validate_common(
            field,
            &self.project,
            ("topic", &self.topic),
            self.endpoint.as_ref(),
        )
    }

    pub fn topic_path(&self) -> String {
        format!("projects/{}/topics/{}", self.project, self.topic)
    }
}
