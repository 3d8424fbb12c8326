use std::fmt;

use serde::{Deserialize, Serialize};

use crate::record::Origin;

/// Why a record went to the dead letter. One code per kind of fault, so that an operator
/// can count and replay them by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    /// The payload is larger than the pipeline's `decode.max_payload_bytes`.
    OversizedPayload,
    /// A JSON payload that is not UTF-8.
    InvalidUtf8,
    /// A payload that is not well-formed JSON.
    InvalidJson,
    /// A payload that is not a well-formed protobuf `Event`.
    InvalidProtobuf,
    /// The JSON payload is not an object.
    NotAnObject,
    /// `customer_id` is absent.
    MissingCustomerId,
    /// `customer_id` is present but empty.
    EmptyCustomerId,
    /// A required field other than `customer_id` is absent or empty.
    MissingField,
    /// A field has the wrong JSON type.
    WrongType,
    /// `event_type` is not one the pipeline knows.
    UnknownEventType,
    /// A field has a value out of its range (a negative or huge `value`, an overlong id).
    InvalidValue,
    /// `event_time` is not a valid timestamp.
    InvalidTimestamp,
    /// `event_time` is further in the future than the pipeline allows.
    TimestampInFuture,
    /// `event_time` is older than the pipeline allows.
    TimestampTooOld,
    /// No features for the customer and the miss policy says dead letter.
    FeaturesNotFound,
    /// The feature store refused this record's key for good. A store that is down is
    /// not this: it is retried, and the pipeline slows down.
    LookupFailed,
    /// The model failed on the batch holding this record.
    ModelError,
    /// The sink refused this record for good. A sink that is down is not this: it is
    /// retried, and the pipeline slows down.
    SinkRejected,
    /// A stage failed on this record's batch more times than the pipeline allows.
    StageFailed,
}

impl ReasonCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonCode::OversizedPayload => "oversized_payload",
            ReasonCode::InvalidUtf8 => "invalid_utf8",
            ReasonCode::InvalidJson => "invalid_json",
            ReasonCode::InvalidProtobuf => "invalid_protobuf",
            ReasonCode::NotAnObject => "not_an_object",
            ReasonCode::MissingCustomerId => "missing_customer_id",
            ReasonCode::EmptyCustomerId => "empty_customer_id",
            ReasonCode::MissingField => "missing_field",
            ReasonCode::WrongType => "wrong_type",
            ReasonCode::UnknownEventType => "unknown_event_type",
            ReasonCode::InvalidValue => "invalid_value",
            ReasonCode::InvalidTimestamp => "invalid_timestamp",
            ReasonCode::TimestampInFuture => "timestamp_in_future",
            ReasonCode::TimestampTooOld => "timestamp_too_old",
            ReasonCode::FeaturesNotFound => "features_not_found",
            ReasonCode::LookupFailed => "lookup_failed",
            ReasonCode::ModelError => "model_error",
            ReasonCode::SinkRejected => "sink_rejected",
            ReasonCode::StageFailed => "stage_failed",
        }
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record that a stage rejected, with everything needed to inspect and replay it.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub stage: &'static str,
    pub reason: ReasonCode,
    pub message: String,
    pub origin: Origin,
}

impl crate::record::Traced for DeadLetter {
    fn origin(&self) -> &Origin {
        &self.origin
    }
}
