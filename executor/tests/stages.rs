//! Each stage alone: its actor between a test sender and a test mailbox.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::ChildEvent;
use mirador_actors::{
    link, CheckpointTracker, DeadLetter, LinkReceiver, LinkSender, Origin, Position, ReasonCode,
    Source, SourceEnd, Stage, StageError, StageRunner, StageSlot, StageStats,
};
use mirador_executor::connectors::file::FileSource;
use mirador_executor::connectors::generator::GeneratorSource;
use mirador_executor::decode::{DecodeStage, Decoder};
use mirador_executor::enrich::{
    CsvFeatureTable, EnrichStage, FeatureCache, FeatureLookup, LookupPolicy,
};
use mirador_executor::event::{
    DecodedRecord, EnrichedRecord, Event, EventType, FeatureSource, ModelId, RawRecord,
    ScoredRecord,
};
use mirador_executor::infer::{InferStage, InferenceBatcher, Scorer, TorchModel};
use mirador_executor::sinks::{
    EncodeContext, JsonlFile, JsonlTarget, LatencyRecorder, ReasonCounts, SinkStage,
};
use mirador_executor::spec::{
    DecodeSpec, DeviceSpec, GeneratorSpec, LookupFailurePolicy, MissPolicy, PayloadFormat,
};

fn origin(tracker: &CheckpointTracker, offset: u64, payload: &[u8]) -> Origin {
    Origin {
        ack: tracker.open(
            1,
            Position {
                partition: 0,
                offset: offset + 1,
            },
        ),
        position: Position {
            partition: 0,
            offset,
        },
        payload: Bytes::copy_from_slice(payload),
        read_at: Instant::now(),
    }
}

struct Harness<I, O> {
    input: LinkSender<I>,
    output: LinkReceiver<O>,
    dead: LinkReceiver<DeadLetter>,
    events: tokio::sync::mpsc::UnboundedReceiver<ChildEvent>,
    stats: Arc<StageStats>,
}

/// Spawns `make`'s stage as an actor with a test mailbox downstream.
async fn alone<S: Stage>(
    make: impl Fn() -> Result<S, StageError> + Send + Sync + 'static,
) -> Harness<S::In, S::Out> {
    let (input, input_rx) = link(4);
    let (output_tx, output) = link(4);
    let (dead_tx, dead) = link(4);
    let stats = Arc::new(StageStats::default());
    let runner = StageRunner::new(
        make,
        input_rx,
        Some(output_tx),
        Some(dead_tx),
        stats.clone(),
        3,
    )
    .unwrap();
    let (parent, events) = common::parent().await;
    runner.spawn(parent.get_cell()).await.unwrap();
    // The runner is owned by the actor's shared slot from here on.
    std::mem::forget(runner);
    Harness {
        input,
        output,
        dead,
        events,
        stats,
    }
}

async fn recv<T>(link: &mut LinkReceiver<T>) -> Vec<T> {
    tokio::time::timeout(Duration::from_secs(10), link.recv())
        .await
        .expect("a batch in time")
        .expect("link open")
}

fn event(customer: &str, event_type: EventType) -> Arc<Event> {
    Arc::new(Event {
        event_id: format!("e-{customer}"),
        customer_id: customer.to_string(),
        event_type,
        channel: None,
        campaign_id: None,
        product_id: None,
        value: 20.0,
        event_time: 1_790_000_000_000,
        attributes: Default::default(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decode_passes_events_and_dead_letters_poison() {
    let tracker = CheckpointTracker::new(None);
    let mut h = alone(|| Ok(DecodeStage::new(Decoder::new(&DecodeSpec::default())))).await;
    let now = chrono::Utc::now().to_rfc3339();
    let good = format!(
        r#"{{"event_id":"a","customer_id":"c1","event_type":"ad_click","event_time":"{now}"}}"#
    );
    h.input
        .send(vec![
            RawRecord {
                origin: origin(&tracker, 0, good.as_bytes()),
            },
            RawRecord {
                origin: origin(&tracker, 1, b"{oops"),
            },
            RawRecord {
                origin: origin(&tracker, 2, b"\xff\xfe"),
            },
        ])
        .await
        .unwrap();
    let decoded = recv(&mut h.output).await;
    assert_eq!(decoded.len(), 1);
    assert_eq!(decoded[0].event.event_type, EventType::AdClick);
    let dead = recv(&mut h.dead).await;
    let reasons: Vec<_> = dead
        .iter()
        .map(|d| (d.origin.position.offset, d.reason, d.stage))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (1, ReasonCode::InvalidJson, "decode"),
            (2, ReasonCode::InvalidUtf8, "decode")
        ]
    );
    assert_eq!(
        &dead[1].origin.payload[..],
        b"\xff\xfe",
        "the original bytes travel with a dead letter"
    );
    drop(h.input);
    assert!(
        h.output.recv().await.is_none(),
        "the end of input reaches the next stage"
    );
    assert!(matches!(
        h.events.recv().await,
        Some(ChildEvent::Terminated)
    ));
    let stats = h.stats.snapshot("decode");
    assert_eq!(
        (stats.records_in, stats.records_out, stats.dead_lettered),
        (3, 1, 2)
    );
}

fn enrich_stage(
    policy: MissPolicy,
    lookup: Arc<dyn FeatureLookup>,
    cache: FeatureCache,
) -> EnrichStage {
    EnrichStage::new(
        lookup,
        cache,
        vec![-1.0; 7].into(),
        LookupPolicy {
            timeout: Duration::from_millis(500),
            retries: 2,
            on_miss: policy,
            on_failure: LookupFailurePolicy::Wait,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrich_joins_features_and_applies_the_miss_policy() {
    let table: Arc<dyn FeatureLookup> = Arc::new(
        CsvFeatureTable::load(&common::demo_features(), &common::feature_names()).unwrap(),
    );
    let tracker = CheckpointTracker::new(None);
    let batch = |tracker: &CheckpointTracker| {
        vec![
            DecodedRecord {
                origin: origin(tracker, 0, b"a"),
                event: event("c000001", EventType::Purchase),
            },
            DecodedRecord {
                origin: origin(tracker, 1, b"b"),
                event: event("nobody", EventType::Purchase),
            },
            DecodedRecord {
                origin: origin(tracker, 2, b"c"),
                event: event("c000001", EventType::PageView),
            },
        ]
    };

    let cache = FeatureCache::new(1 << 20, Duration::from_secs(60));
    let (lookup, c) = (table.clone(), cache.clone());
    let mut h =
        alone(move || Ok(enrich_stage(MissPolicy::Default, lookup.clone(), c.clone()))).await;
    h.input.send(batch(&tracker)).await.unwrap();
    let out = recv(&mut h.output).await;
    assert_eq!(out.len(), 3);
    // c000001 in examples/features.csv: 163,11,0,0.378,1,1,0.34 for c000001.
    assert_eq!(
        &*out[0].features,
        &[163.0, 11.0, 0.0, 0.378, 1.0, 1.0, 0.34]
    );
    assert_eq!(out[0].feature_source, FeatureSource::Lookup);
    assert_eq!(
        &*out[1].features, &[-1.0; 7],
        "an unknown customer gets the defaults"
    );
    assert_eq!(out[1].feature_source, FeatureSource::Default);
    h.input.send(batch(&tracker)).await.unwrap();
    recv(&mut h.output).await;
    let (hits, misses) = cache.counts();
    // The first batch misses three times (two distinct customers, looked up once each);
    // the second is served from the cache, the unknown customer too.
    assert_eq!((hits, misses), (3, 3));

    let (lookup, c) = (
        table.clone(),
        FeatureCache::new(1 << 20, Duration::from_secs(60)),
    );
    let mut h = alone(move || {
        Ok(enrich_stage(
            MissPolicy::DeadLetter,
            lookup.clone(),
            c.clone(),
        ))
    })
    .await;
    h.input.send(batch(&tracker)).await.unwrap();
    assert_eq!(recv(&mut h.output).await.len(), 2);
    let dead = recv(&mut h.dead).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, ReasonCode::FeaturesNotFound);
    assert_eq!(dead[0].origin.position.offset, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_scores_like_the_model_itself() {
    let mut model = TorchModel::load(&common::demo_model(), DeviceSpec::Cpu, 16).unwrap();
    let batcher = Arc::new(
        InferenceBatcher::start(
            "propensity",
            TorchModel::load(&common::demo_model(), DeviceSpec::Cpu, 16).unwrap(),
            64,
            Duration::from_millis(1),
            1,
        )
        .unwrap(),
    );
    let model_id = Arc::new(ModelId {
        name: "propensity".into(),
        version: "1".into(),
    });
    let b = batcher.clone();
    let mut h = alone(move || Ok(InferStage::new(b.client(), model_id.clone()))).await;
    let tracker = CheckpointTracker::new(None);
    let records: Vec<EnrichedRecord> = EventType::ALL
        .iter()
        .enumerate()
        .map(|(i, t)| EnrichedRecord {
            origin: origin(&tracker, i as u64, b"x"),
            event: event("c1", *t),
            features: vec![30.0, 4.0, 150.0, 0.3, 1.0, 2.0, 0.2].into(),
            feature_source: FeatureSource::Lookup,
        })
        .collect();
    let mut rows = Vec::new();
    for record in &records {
        mirador_executor::infer::stage::push_row(record, &mut rows);
    }
    let direct = model.score(&rows, records.len()).unwrap();
    h.input.send(records).await.unwrap();
    let scored: Vec<ScoredRecord> = recv(&mut h.output).await;
    assert_eq!(scored.len(), 8);
    for (record, expected) in scored.iter().zip(&direct.values) {
        assert!((record.scores[0] - expected).abs() < 1e-6);
        assert_eq!(record.model.name, "propensity");
    }
    let purchase = scored
        .iter()
        .find(|r| r.event.event_type == EventType::Purchase)
        .unwrap();
    let mention = scored
        .iter()
        .find(|r| r.event.event_type == EventType::Mention)
        .unwrap();
    assert!(
        purchase.scores[0] > mention.scores[0],
        "a purchase converts more than a mention"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_write_whole_lines_then_acknowledge() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = Arc::new(CheckpointTracker::new(None));
    let file = Arc::new(std::sync::Mutex::new(
        JsonlFile::open(&dir.path().join("dead.jsonl")).unwrap(),
    ));
    let counts = Arc::new(ReasonCounts::default());
    let (t, f, c) = (tracker.clone(), file.clone(), counts.clone());
    let mut h = alone(move || {
        Ok(SinkStage::<DeadLetter>::new(
            "dead_letter",
            vec![Arc::new(JsonlTarget::File(f.clone()))],
            EncodeContext::default(),
            t.clone(),
            c.clone(),
        ))
    })
    .await;
    let dead = vec![
        DeadLetter {
            stage: "decode",
            reason: ReasonCode::InvalidUtf8,
            message: "bad".into(),
            origin: origin(&tracker, 0, b"\xff\x00"),
        },
        DeadLetter {
            stage: "decode",
            reason: ReasonCode::InvalidJson,
            message: "bad".into(),
            origin: origin(&tracker, 1, b"{"),
        },
    ];
    assert_eq!(tracker.committed(), None);
    h.input.send(dead).await.unwrap();
    drop(h.input);
    assert!(h.output.recv().await.is_none());
    let text = std::fs::read_to_string(dir.path().join("dead.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["reason"], "invalid_utf8");
    assert_eq!(lines[0]["payload_encoding"], "base64");
    assert_eq!(lines[0]["payload"], "/wA=");
    assert_eq!(lines[1]["payload"], "{");
    assert_eq!(lines[1]["source"]["offset"], 1);
    assert_eq!(
        tracker.committed(),
        Some(Position {
            partition: 0,
            offset: 2
        }),
        "acknowledged after the write"
    );
    assert_eq!(counts.snapshot().len(), 2);

    // The scored sink records latency as well.
    let latency = Arc::new(LatencyRecorder::default());
    let (t, l) = (tracker.clone(), latency.clone());
    let mut h = alone(move || {
        Ok(SinkStage::<ScoredRecord>::new(
            "sink",
            vec![Arc::new(JsonlTarget::Null)],
            EncodeContext::default(),
            t.clone(),
            l.clone(),
        ))
    })
    .await;
    let scored = ScoredRecord {
        origin: origin(&tracker, 2, b"x"),
        event: event("c1", EventType::Purchase),
        features: vec![].into(),
        feature_source: FeatureSource::Default,
        model: Arc::new(ModelId {
            name: "m".into(),
            version: "1".into(),
        }),
        scores: vec![0.5],
    };
    h.input.send(vec![scored]).await.unwrap();
    drop(h.input);
    assert!(h.output.recv().await.is_none());
    assert_eq!(latency.percentiles().3, 1);
    assert_eq!(
        tracker.committed(),
        Some(Position {
            partition: 0,
            offset: 3
        })
    );
}

#[tokio::test]
async fn the_file_source_resumes_at_its_checkpoint_and_bounds_long_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.jsonl");
    let long = "y".repeat(5000);
    std::fs::write(&path, format!("a\n\nbb\n{long}\nccc")).unwrap();
    let tracker = Arc::new(CheckpointTracker::new(None));
    let mut source = FileSource::open(&path, 2, 100, true, tracker.committed()).unwrap();
    let first = source.next_batch().await.unwrap().unwrap().open(&tracker);
    let payloads: Vec<&[u8]> = first.iter().map(|r| &r.origin.payload[..]).collect();
    assert_eq!(
        payloads,
        vec![&b"a"[..], &b"bb"[..]],
        "blank lines are skipped"
    );
    assert_eq!(first[1].origin.position.offset, 3);
    let second = source.next_batch().await.unwrap().unwrap().open(&tracker);
    assert_eq!(
        second[0].origin.payload.len(),
        101,
        "a long line is cut just past the limit"
    );
    assert_eq!(
        &second[1].origin.payload[..],
        b"ccc",
        "a last line without newline is read from a complete file"
    );
    assert!(source.next_batch().await.unwrap().is_none());

    // Acknowledge the first batch only: a new source starts right after it.
    tracker.ack(first.iter().map(|r| r.origin.ack));
    let mut resumed = FileSource::open(&path, 10, 100, true, tracker.committed()).unwrap();
    let again = resumed.next_batch().await.unwrap().unwrap().items;
    assert_eq!(again.len(), 2);
    assert_eq!(again[0].origin.position.offset, 6);
}

#[tokio::test]
async fn a_last_line_without_its_newline_is_read_only_once_the_newline_comes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.jsonl");
    std::fs::write(&path, "a\nbb\n{\"half\":").unwrap();
    let tracker = Arc::new(CheckpointTracker::new(None));
    let mut source = FileSource::open(&path, 10, 100, false, tracker.committed()).unwrap();
    let batch = source.next_batch().await.unwrap().unwrap().open(&tracker);
    let payloads: Vec<&[u8]> = batch.iter().map(|r| &r.origin.payload[..]).collect();
    assert_eq!(payloads, vec![&b"a"[..], &b"bb"[..]]);
    assert!(source.next_batch().await.unwrap().is_none());
    tracker.ack(batch.iter().map(|r| r.origin.ack));
    assert_eq!(
        tracker.committed().map(|p| p.offset),
        Some(5),
        "the checkpoint stops before the unfinished line"
    );

    // The writer finishes the line: the next run reads it whole.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut file, b"1}\n").unwrap();
    let mut resumed = FileSource::open(&path, 10, 100, false, tracker.committed()).unwrap();
    let again = resumed.next_batch().await.unwrap().unwrap().items;
    assert_eq!(again.len(), 1);
    assert_eq!(&again[0].origin.payload[..], b"{\"half\":1}");
}

#[tokio::test]
async fn a_checkpoint_past_the_end_of_its_file_is_an_error_with_both_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.jsonl");
    std::fs::write(&path, "a\nbb\n").unwrap();
    for offset in [7, u64::MAX] {
        let resume = Some(Position {
            partition: 0,
            offset,
        });
        let error = FileSource::open(&path, 10, 100, false, resume)
            .err()
            .expect("a checkpoint past the end is refused")
            .to_string();
        assert!(
            error.contains(&format!("byte {offset}")) && error.contains("(5 bytes)"),
            "{error}"
        );
        assert!(error.contains("Delete the checkpoint"), "{error}");
    }
    let at_end = Some(Position {
        partition: 0,
        offset: 5,
    });
    let mut source = FileSource::open(&path, 10, 100, false, at_end).unwrap();
    assert!(
        source.next_batch().await.unwrap().is_none(),
        "a checkpoint at the end reads nothing"
    );
}

#[tokio::test]
async fn the_generator_is_deterministic_skewed_and_resumable() {
    let spec = GeneratorSpec {
        events: Some(5000),
        partitions: 1,
        customers: 1000,
        zipf_exponent: 1.1,
        poison_ratio: 0.0,
        seed: 5,
        rate_per_sec: None,
    };
    let read_all = |committed: Option<Position>| {
        let spec = spec.clone();
        async move {
            let end = SourceEnd::default();
            let mut source =
                GeneratorSource::new(&spec, 0, PayloadFormat::Json, 65536, 512, committed, &end);
            assert_eq!(end.end(), spec.events, "a bounded generator knows its end");
            let mut events = Vec::new();
            while let Some(batch) = source.next_batch().await.unwrap() {
                for record in batch.items {
                    let value: serde_json::Value =
                        serde_json::from_slice(&record.origin.payload).unwrap();
                    events.push((
                        record.origin.position.offset,
                        value["event_id"].clone(),
                        value["customer_id"].clone(),
                        value["event_type"].clone(),
                    ));
                }
            }
            events
        }
    };
    let all = read_all(None).await;
    assert_eq!(all.len(), 5000);
    let resumed = read_all(Some(Position {
        partition: 0,
        offset: 4000,
    }))
    .await;
    assert_eq!(resumed.len(), 1000);
    assert_eq!(&all[4000..], &resumed[..], "a replay makes the same events");
    let top = all.iter().filter(|e| e.2 == "c000000").count();
    let tail = all.iter().filter(|e| e.2 == "c000900").count();
    assert!(top > 20 * tail.max(1), "Zipf skew: {top} vs {tail}");
    let purchases = all.iter().filter(|e| e.3 == "purchase").count();
    let views = all.iter().filter(|e| e.3 == "page_view").count();
    assert!(
        views > 4 * purchases && purchases > 0,
        "{views} views, {purchases} purchases"
    );
}
