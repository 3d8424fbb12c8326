//! Decode and validate: bytes in, [`Event`]s out, every fault to the dead letter with its
//! own reason code.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::DateTime;
use mirador_actors::{Output, ReasonCode, Stage, StageError};
use prost::Message;
use serde::Deserialize;

#[cfg(test)]
use crate::event::to_protobuf;
use crate::event::{DecodedRecord, Event, EventType, RawRecord};
use crate::spec::{DecodeSpec, PayloadFormat};

const STAGE: &str = "decode";
/// Longest id or label accepted in an event, in bytes.
const MAX_FIELD_BYTES: usize = 256;
/// Largest `value`: far above any order, and exact enough as the model's 32-bit float.
const MAX_VALUE: f64 = 1e12;

/// Why a payload was rejected.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub reason: ReasonCode,
    pub message: String,
}

fn reject(reason: ReasonCode, message: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        message: message.into(),
    }
}

/// The decoding rules of one pipeline.
#[derive(Clone, Debug)]
pub struct Decoder {
    format: PayloadFormat,
    max_payload_bytes: usize,
    max_future_ms: i64,
    max_age_ms: i64,
}

#[derive(Deserialize)]
struct JsonEvent<'a> {
    #[serde(borrow, default)]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    customer_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    event_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    campaign_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    product_id: Option<Cow<'a, str>>,
    #[serde(default)]
    value: Option<f64>,
    #[serde(borrow, default)]
    event_time: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "unique_attributes")]
    attributes: Option<BTreeMap<String, String>>,
}

/// `attributes`, refusing a key given twice as a field given twice is refused (a plain
/// map would keep the last one).
fn unique_attributes<'de, D>(deserializer: D) -> Result<Option<BTreeMap<String, String>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::{Error, MapAccess, Visitor};
    struct Unique;
    impl<'de> Visitor<'de> for Unique {
        type Value = Option<BTreeMap<String, String>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of string to string")
        }
        fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut attributes = BTreeMap::new();
            while let Some((key, value)) = map.next_entry::<String, String>()? {
                if attributes.contains_key(&key) {
                    return Err(A::Error::custom(format_args!(
                        "attribute {:?} given twice",
                        truncate(&key)
                    )));
                }
                attributes.insert(key, value);
            }
            Ok(Some(attributes))
        }
    }
    deserializer.deserialize_option(Unique)
}

/// The fields of an event before validation, from either payload format.
struct Fields<'a> {
    event_id: Option<Cow<'a, str>>,
    customer_id: Option<Cow<'a, str>>,
    event_type: Option<Cow<'a, str>>,
    channel: Option<Cow<'a, str>>,
    campaign_id: Option<Cow<'a, str>>,
    product_id: Option<Cow<'a, str>>,
    value: f64,
    event_time_ms: Result<i64, Rejection>,
    attributes: BTreeMap<String, String>,
}

impl Decoder {
    pub fn new(spec: &DecodeSpec) -> Self {
        Decoder {
            format: spec.format,
            max_payload_bytes: spec.max_payload_bytes,
            max_future_ms: spec.max_clock_skew_secs as i64 * 1000,
            max_age_ms: spec.max_event_age_days as i64 * 86_400_000,
        }
    }

    /// Decodes one payload, judged against `now_ms`.
    pub fn decode(&self, payload: &[u8], now_ms: i64) -> Result<Event, Rejection> {
        if payload.len() > self.max_payload_bytes {
            return Err(reject(
                ReasonCode::OversizedPayload,
                format!(
                    "payload of {} bytes or more, the limit is {}",
                    payload.len(),
                    self.max_payload_bytes
                ),
            ));
        }
        let fields = match self.format {
            PayloadFormat::Json => json_fields(payload)?,
            PayloadFormat::Protobuf => protobuf_fields(payload)?,
        };
        self.validate(fields, now_ms)
    }

    fn validate(&self, fields: Fields<'_>, now_ms: i64) -> Result<Event, Rejection> {
        let customer_id = match fields.customer_id {
            None => return Err(reject(ReasonCode::MissingCustomerId, "no customer_id")),
            Some(id) if id.trim().is_empty() => {
                return Err(reject(ReasonCode::EmptyCustomerId, "customer_id is empty"))
            }
            Some(id) => id,
        };
        let event_id = match fields.event_id {
            Some(id) if !id.trim().is_empty() => id,
            _ => return Err(reject(ReasonCode::MissingField, "no event_id")),
        };
        let event_type = match fields.event_type {
            None => return Err(reject(ReasonCode::MissingField, "no event_type")),
            Some(name) => EventType::parse(&name).ok_or_else(|| {
                reject(
                    ReasonCode::UnknownEventType,
                    format!("unknown event_type {:?}", truncate(&name)),
                )
            })?,
        };
        for (field, value) in [
            ("event_id", Some(&event_id)),
            ("customer_id", Some(&customer_id)),
            ("channel", fields.channel.as_ref()),
            ("campaign_id", fields.campaign_id.as_ref()),
            ("product_id", fields.product_id.as_ref()),
        ] {
            if value.is_some_and(|v| v.len() > MAX_FIELD_BYTES) {
                return Err(reject(
                    ReasonCode::InvalidValue,
                    format!("{field} is longer than {MAX_FIELD_BYTES} bytes"),
                ));
            }
        }
        if !(0.0..=MAX_VALUE).contains(&fields.value) {
            return Err(reject(
                ReasonCode::InvalidValue,
                format!(
                    "value {} is not between 0 and {}",
                    compact(fields.value),
                    compact(MAX_VALUE)
                ),
            ));
        }
        let event_time = fields.event_time_ms?;
        if event_time > now_ms + self.max_future_ms {
            return Err(reject(
                ReasonCode::TimestampInFuture,
                format!(
                    "event_time {} is more than {} s in the future",
                    crate::event::format_millis(event_time),
                    self.max_future_ms / 1000
                ),
            ));
        }
        if event_time < now_ms - self.max_age_ms {
            return Err(reject(
                ReasonCode::TimestampTooOld,
                format!(
                    "event_time {} is more than {} days old",
                    crate::event::format_millis(event_time),
                    self.max_age_ms / 86_400_000
                ),
            ));
        }
        Ok(Event {
            event_id: event_id.into_owned(),
            customer_id: customer_id.into_owned(),
            event_type,
            channel: fields.channel.map(Cow::into_owned),
            campaign_id: fields.campaign_id.map(Cow::into_owned),
            product_id: fields.product_id.map(Cow::into_owned),
            value: fields.value,
            event_time,
            attributes: fields.attributes,
        })
    }
}

/// A number as people write it, in scientific notation when it is very large or small:
/// `12.5`, `1e12`, `1e308`, never a 309-digit number.
fn compact(x: f64) -> String {
    if x != 0.0 && !(1e-6..1e9).contains(&x.abs()) {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}

fn truncate(text: &str) -> &str {
    let mut end = text.len().min(64);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn json_fields(payload: &[u8]) -> Result<Fields<'_>, Rejection> {
    let text = std::str::from_utf8(payload).map_err(|e| {
        reject(
            ReasonCode::InvalidUtf8,
            format!("payload is not UTF-8: {e}"),
        )
    })?;
    let first = text.trim_start().as_bytes().first().copied();
    if first != Some(b'{') {
        // Either not JSON at all or JSON that is not an object.
        return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => reject(ReasonCode::NotAnObject, "payload is JSON but not an object"),
            Err(e) => reject(ReasonCode::InvalidJson, format!("invalid JSON: {e}")),
        });
    }
    let event: JsonEvent<'_> =
        serde_json::from_str(text).map_err(|e| classify_json_error(text, e))?;
    let event_time_ms = match &event.event_time {
        None => Err(reject(ReasonCode::MissingField, "no event_time")),
        Some(time) => DateTime::parse_from_rfc3339(time)
            .map(|t| t.timestamp_millis())
            .map_err(|e| {
                reject(
                    ReasonCode::InvalidTimestamp,
                    format!("event_time {:?} is not RFC 3339: {e}", truncate(time)),
                )
            }),
    };
    Ok(Fields {
        event_id: event.event_id,
        customer_id: event.customer_id,
        event_type: event.event_type,
        channel: event.channel,
        campaign_id: event.campaign_id,
        product_id: event.product_id,
        value: event.value.unwrap_or(0.0),
        event_time_ms,
        attributes: event.attributes.unwrap_or_default(),
    })
}

/// Turns a serde error into a reason; on this (rare) path the payload is parsed again to
/// name the field at fault.
fn classify_json_error(text: &str, error: serde_json::Error) -> Rejection {
    use serde_json::error::Category;
    match error.classify() {
        Category::Data => {
            let mut deserializer = serde_json::Deserializer::from_str(text);
            let field =
                match serde_path_to_error::deserialize::<_, JsonEvent<'_>>(&mut deserializer) {
                    Err(e) => e.path().to_string(),
                    Ok(_) => "?".to_string(),
                };
            let message = error.to_string();
            let reason = if message.starts_with("invalid type") {
                ReasonCode::WrongType
            } else if message.starts_with("invalid value") {
                ReasonCode::InvalidValue
            } else {
                ReasonCode::InvalidJson
            };
            reject(reason, format!("{field}: {message}"))
        }
        _ => reject(ReasonCode::InvalidJson, format!("invalid JSON: {error}")),
    }
}

fn protobuf_fields(payload: &[u8]) -> Result<Fields<'static>, Rejection> {
    let event = mirador_proto::records::Event::decode(payload).map_err(|e| {
        reject(
            ReasonCode::InvalidProtobuf,
            format!("payload is not a protobuf Event: {e}"),
        )
    })?;
    let present = |s: String| (!s.is_empty()).then_some(Cow::Owned(s));
    // proto3 cannot tell an absent string from an empty one: both are "missing" here,
    // except customer_id, whose emptiness is its own fault.
    Ok(Fields {
        event_id: present(event.event_id),
        customer_id: Some(Cow::Owned(event.customer_id)),
        event_type: present(event.event_type),
        channel: present(event.channel),
        campaign_id: present(event.campaign_id),
        product_id: present(event.product_id),
        value: event.value,
        event_time_ms: if event.event_time_ms == 0 {
            Err(reject(ReasonCode::MissingField, "no event_time_ms"))
        } else {
            Ok(event.event_time_ms)
        },
        attributes: event.attributes.into_iter().collect(),
    })
}

/// The decode stage.
pub struct DecodeStage {
    decoder: Decoder,
}

impl DecodeStage {
    pub fn new(decoder: Decoder) -> Self {
        DecodeStage { decoder }
    }
}

impl Stage for DecodeStage {
    type In = RawRecord;
    type Out = DecodedRecord;

    fn name(&self) -> &'static str {
        STAGE
    }

    async fn handle(
        &mut self,
        batch: &[RawRecord],
        out: &mut Output<DecodedRecord>,
    ) -> Result<(), StageError> {
        let now_ms = chrono::Utc::now().timestamp_millis();
        for record in batch {
            match self.decoder.decode(&record.origin.payload, now_ms) {
                Ok(event) => out.push(DecodedRecord {
                    origin: record.origin.clone(),
                    event: Arc::new(event),
                }),
                Err(rejection) => {
                    out.reject(STAGE, &record.origin, rejection.reason, rejection.message)
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::GeneratorSpec;
    use mirador_connectors::generator::{EventFactory, Poison};

    const NOW: i64 = 1_790_000_000_000;

    fn decoder(format: PayloadFormat) -> Decoder {
        Decoder::new(&DecodeSpec {
            format,
            max_payload_bytes: 1024,
            ..DecodeSpec::default()
        })
    }

    fn reason(payload: &[u8]) -> ReasonCode {
        decoder(PayloadFormat::Json)
            .decode(payload, NOW)
            .expect_err("must be rejected")
            .reason
    }

    const GOOD: &str = r#"{"event_id":"e1","customer_id":"c000001","event_type":"purchase","channel":"web","value":12.5,"event_time":"2026-09-21T12:00:00Z","attributes":{"utm":"x"},"extra":[1,2]}"#;

    #[test]
    fn decodes_a_well_formed_event_and_ignores_unknown_fields() {
        let event = decoder(PayloadFormat::Json)
            .decode(GOOD.as_bytes(), NOW)
            .unwrap();
        assert_eq!(event.event_id, "e1");
        assert_eq!(event.customer_id, "c000001");
        assert_eq!(event.event_type, EventType::Purchase);
        assert_eq!(event.value, 12.5);
        assert_eq!(event.attributes.get("utm").map(String::as_str), Some("x"));
        assert_eq!(
            crate::event::format_millis(event.event_time),
            "2026-09-21T12:00:00.000Z"
        );
    }

    #[test]
    fn each_kind_of_poison_has_its_own_reason() {
        let cases: Vec<(Vec<u8>, ReasonCode)> = vec![
            (b"{\"event_id\": \"e1\", ".to_vec(), ReasonCode::InvalidJson),
            (b"not json at all".to_vec(), ReasonCode::InvalidJson),
            (b"[1, 2, 3]".to_vec(), ReasonCode::NotAnObject),
            (
                b"{\"event_id\":\"e\xff\"}".to_vec(),
                ReasonCode::InvalidUtf8,
            ),
            (
                GOOD.replace(r#""customer_id":"c000001","#, "").into_bytes(),
                ReasonCode::MissingCustomerId,
            ),
            (
                GOOD.replace("c000001", "  ").into_bytes(),
                ReasonCode::EmptyCustomerId,
            ),
            (
                GOOD.replace(r#""event_id":"e1","#, "").into_bytes(),
                ReasonCode::MissingField,
            ),
            (
                GOOD.replace("12.5", "\"lots\"").into_bytes(),
                ReasonCode::WrongType,
            ),
            (
                GOOD.replace(r#""customer_id":"c000001""#, r#""customer_id":42"#)
                    .into_bytes(),
                ReasonCode::WrongType,
            ),
            (
                GOOD.replace(r#"{"utm":"x"}"#, r#"{"utm":1}"#).into_bytes(),
                ReasonCode::WrongType,
            ),
            (
                GOOD.replace("purchase", "teleport").into_bytes(),
                ReasonCode::UnknownEventType,
            ),
            (
                GOOD.replace("12.5", "-3").into_bytes(),
                ReasonCode::InvalidValue,
            ),
            (
                GOOD.replace("12.5", "1e308").into_bytes(),
                ReasonCode::InvalidValue,
            ),
            (
                GOOD.replace("2026-09-21T12:00:00Z", "yesterday")
                    .into_bytes(),
                ReasonCode::InvalidTimestamp,
            ),
            (
                GOOD.replace("2026-09-21T12:00:00Z", "2027-09-21T12:00:00Z")
                    .into_bytes(),
                ReasonCode::TimestampInFuture,
            ),
            (
                GOOD.replace("2026-09-21T12:00:00Z", "1999-01-01T00:00:00Z")
                    .into_bytes(),
                ReasonCode::TimestampTooOld,
            ),
            (
                GOOD.replace("\"x\"", &format!("\"{}\"", "x".repeat(2000)))
                    .into_bytes(),
                ReasonCode::OversizedPayload,
            ),
        ];
        for (payload, expected) in cases {
            assert_eq!(
                reason(&payload),
                expected,
                "{}",
                String::from_utf8_lossy(&payload)
            );
        }
    }

    #[test]
    fn a_value_out_of_range_is_said_in_few_digits() {
        let rejection = decoder(PayloadFormat::Json)
            .decode(GOOD.replace("12.5", "1e308").as_bytes(), NOW)
            .unwrap_err();
        assert_eq!(rejection.reason, ReasonCode::InvalidValue);
        assert_eq!(rejection.message, "value 1e308 is not between 0 and 1e12");
        let largest = GOOD.replace("12.5", "1000000000000");
        assert!(decoder(PayloadFormat::Json)
            .decode(largest.as_bytes(), NOW)
            .is_ok());
    }

    #[test]
    fn an_attribute_given_twice_is_invalid_json() {
        let twice = GOOD.replace(r#"{"utm":"x"}"#, r#"{"utm":"x","utm":"y"}"#);
        let rejection = decoder(PayloadFormat::Json)
            .decode(twice.as_bytes(), NOW)
            .unwrap_err();
        assert_eq!(rejection.reason, ReasonCode::InvalidJson, "{rejection:?}");
        assert!(
            rejection.message.contains("attribute \"utm\" given twice"),
            "{rejection:?}"
        );
        let null = GOOD.replace(r#"{"utm":"x"}"#, "null");
        assert!(decoder(PayloadFormat::Json)
            .decode(null.as_bytes(), NOW)
            .is_ok());
        let number = GOOD.replace(r#"{"utm":"x"}"#, "5");
        assert_eq!(
            decoder(PayloadFormat::Json)
                .decode(number.as_bytes(), NOW)
                .unwrap_err()
                .reason,
            ReasonCode::WrongType
        );
    }

    #[test]
    fn a_wrong_type_names_its_field() {
        let rejection = decoder(PayloadFormat::Json)
            .decode(GOOD.replace("12.5", "\"lots\"").as_bytes(), NOW)
            .unwrap_err();
        assert!(
            rejection.message.starts_with("value:"),
            "{}",
            rejection.message
        );
    }

    #[test]
    fn protobuf_payloads_decode_and_reject_like_json() {
        let json = decoder(PayloadFormat::Json)
            .decode(GOOD.as_bytes(), NOW)
            .unwrap();
        let protobuf = decoder(PayloadFormat::Protobuf);
        assert_eq!(protobuf.decode(&to_protobuf(&json), NOW).unwrap(), json);
        assert_eq!(
            protobuf
                .decode(b"\xff\xff\xff garbage", NOW)
                .unwrap_err()
                .reason,
            ReasonCode::InvalidProtobuf
        );
        let mut empty_customer = json.clone();
        empty_customer.customer_id.clear();
        assert_eq!(
            protobuf
                .decode(&to_protobuf(&empty_customer), NOW)
                .unwrap_err()
                .reason,
            ReasonCode::EmptyCustomerId
        );
    }

    #[test]
    fn every_generated_poison_is_rejected_with_its_reason() {
        let spec = GeneratorSpec {
            events: None,
            partitions: 1,
            customers: 100,
            zipf_exponent: 1.1,
            poison_ratio: 0.5,
            seed: 3,
            rate_per_sec: None,
        };
        let now = chrono::Utc::now().timestamp_millis();
        let factory = EventFactory::new(&spec, 0, PayloadFormat::Json, 1024);
        let decoder = decoder(PayloadFormat::Json);
        let mut seen = std::collections::HashSet::new();
        let mut payload = Vec::new();
        for seq in 0..2000 {
            factory.payload(seq, now, &mut payload);
            let result = decoder.decode(&payload, now);
            match factory.poison(seq) {
                None => assert!(result.is_ok(), "{:?}", result),
                Some(poison) => {
                    let expected = match poison {
                        Poison::InvalidJson => ReasonCode::InvalidJson,
                        Poison::InvalidUtf8 => ReasonCode::InvalidUtf8,
                        Poison::MissingCustomerId => ReasonCode::MissingCustomerId,
                        Poison::EmptyCustomerId => ReasonCode::EmptyCustomerId,
                        Poison::WrongType => ReasonCode::WrongType,
                        Poison::UnknownEventType => ReasonCode::UnknownEventType,
                        Poison::Oversized => ReasonCode::OversizedPayload,
                        Poison::FutureTimestamp => ReasonCode::TimestampInFuture,
                        Poison::AncientTimestamp => ReasonCode::TimestampTooOld,
                    };
                    assert_eq!(result.unwrap_err().reason, expected, "{poison:?}");
                    seen.insert(poison);
                }
            }
        }
        assert_eq!(
            seen.len(),
            Poison::ALL.len(),
            "every kind of poison was generated"
        );
    }
}
