//! The fuzz targets of tally: every decoder a peer can reach, with the
//! properties that must hold for any input (besides not panicking).
//!
//! Each function is one target (`fuzz_targets/<name>.rs` calls it):
//! `cargo +nightly fuzz run <name>` from this directory.

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::Request;
use prost::Message;
use tally_pipeline::batch::records_to_batch;
use tally_pipeline::dedup::Dedup;
use tally_pipeline::metrics::Metrics;
use tally_pipeline::store::Store;
use tally_pipeline::wal::codec::{decode_entry, decode_records, encode_entry};
use tally_pipeline::wal::segment::{encode_frame, parse_segment, HEADER_LEN};
use tally_pipeline::wal::{Wal, WalConfig};
use tally_pipeline::Pipeline;
use tally_proto::billing::v1::SendMetricsBatchRequest;
use tally_queries::api_usage::config::UsageConfig;
use tally_sources::billing::connect::{decode_request, decompress, BillingRequest, Codec};
use tally_sources::billing::{BillingService, MetricsBatch, METHODS};
use tally_sources::events::object::{Event, Field, Object};
use tally_sources::events::Subject;
use tally_sources::http::body::{split, Item};
use tally_sources::kafka::decode_vm_metrics;
use tower::ServiceExt;

/// "Now" for validators that compare times with it: 2026-01-01T00:00:00Z.
const NOW_NS: i64 = 1_767_225_600_000_000_000;

/// Connect unary bodies: JSON or binary protobuf, identity or gzip, for
/// each method. The first byte picks method, codec and encoding. A batch
/// that validates always becomes rows that fit `vm_metrics`; a protobuf
/// body the direct batch decoder takes decodes to what prost gives.
pub fn connect_body(data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let method = METHODS[(sel % 5) as usize];
    let codec = if sel & 0x40 != 0 {
        Codec::Proto
    } else {
        Codec::Json
    };
    let encoding = if sel & 0x80 != 0 { "gzip" } else { "identity" };
    let bytes = decompress(encoding, body);
    if let (Codec::Proto, Ok(bytes)) = (&codec, &bytes) {
        // The direct batch decoder gives prost's result whenever it does
        // not leave the input to prost, into a message and into columns;
        // where prost fails, the batch's error is prost's.
        let prost = SendMetricsBatchRequest::decode(&bytes[..]);
        if let Some(direct) = tally_proto::fast::send_metrics_batch(bytes) {
            assert_eq!(Ok(&direct), prost.as_ref());
        }
        assert_eq!(
            MetricsBatch::decode(bytes),
            prost.map(|r| MetricsBatch::from_request(&r))
        );
    }
    let decoded = bytes.and_then(|b| decode_request(method, codec, &b));
    if let Ok(BillingRequest::SendMetricsBatch(batch)) = decoded {
        if batch.validate(NOW_NS).is_ok() {
            let n = batch.samples.len();
            let (columns, _) = batch.into_columns().expect("a valid batch fits vm_metrics");
            let records = columns.to_records();
            assert_eq!(records.len(), n);
            for r in &records {
                r.check().expect("rows of a valid batch fit the schema");
            }
        }
    }
}

/// gzip request bodies: never more than the 32 MiB bound comes out.
pub fn gzip_body(data: &[u8]) {
    if let Ok(out) = decompress("gzip", data) {
        assert!(out.len() <= 32 << 20);
    }
}

struct Billing {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    _dir: tempfile::TempDir,
}

/// The real billing router over a real pipeline (WAL in a temporary
/// directory, small bounds so that a long run stays small).
fn billing() -> &'static Billing {
    static BILLING: OnceLock<Billing> = OnceLock::new();
    BILLING.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let metrics = Arc::new(Metrics::default());
        let store = Arc::new(Store::new(10_000));
        let dedup = Arc::new(Dedup::new(3600, 100_000, metrics.clone()));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (wal, _) = Wal::open(
            WalConfig {
                dir: dir.path().to_path_buf(),
                segment_bytes: 1 << 20,
                max_group_bytes: 1 << 20,
                quarantine: None,
            },
            store.clone(),
            metrics.clone(),
            0,
            |_| {},
        )
        .expect("WAL opens");
        let pipeline = Pipeline::new(wal, store, dedup, metrics);
        // What the server's auth layer sets on every request (auth off).
        let router = tally_sources::billing::router(BillingService::new(pipeline), 1 << 20).layer(
            axum::Extension(tally_pipeline::access::Access::unrestricted()),
        );
        Billing {
            runtime,
            router,
            _dir: dir,
        }
    })
}

const GRPC_TYPES: [&str; 5] = [
    "application/grpc",
    "application/grpc+proto",
    "application/grpc-web",
    "application/grpc-web+proto",
    "application/grpc-web-text",
];

/// gRPC and gRPC-Web requests (length-prefixed frames, base64 text,
/// gzip-compressed messages) through tonic, tonic-web and the billing
/// service, as a client on the wire sends them. Every request gets an HTTP
/// answer.
pub fn grpc_frames(data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let b = billing();
    let mut req = Request::post(format!(
        "/billing.v1.BillingService/{}",
        METHODS[(sel % 5) as usize]
    ))
    .header("content-type", GRPC_TYPES[((sel >> 3) % 5) as usize])
    .header("te", "trailers");
    if sel & 0x80 != 0 {
        req = req.header("grpc-encoding", "gzip");
    }
    let req = req.body(Body::from(body.to_vec())).expect("request builds");
    b.runtime.block_on(async {
        let resp = b
            .router
            .clone()
            .oneshot(req)
            .await
            .expect("the router is infallible");
        let _ = axum::body::to_bytes(resp.into_body(), 64 << 20).await;
    });
}

/// Events as HTTP bodies (one object, an array, NDJSON) and as NATS or
/// Kafka messages, for each subject. What decodes fits its dataset.
pub fn event_json(data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let subject = Subject::ALL[(sel % 6) as usize];
    if let Ok(items) = split(body, sel & 0x80 != 0) {
        for item in items {
            if let Item::Event { event, .. } = item {
                if let Ok(r) = subject.decode(&event) {
                    assert_eq!(r.dataset, subject.dataset());
                    r.check().expect("a decoded event fits its dataset");
                }
            }
        }
    }
    // The hand reader and serde_json read the same fields, or fail with
    // the same message.
    match (Object::parse(body), Object::parse_with_serde(body)) {
        (Ok(Event::Object(a)), Ok(Event::Object(b))) => {
            let (a, b): (Vec<_>, Vec<_>) = (a.fields().collect(), b.fields().collect());
            assert_eq!(a, b);
            for ((_, x), (_, y)) in a.iter().zip(&b) {
                if let (Field::Float(x), Field::Float(y)) = (x, y) {
                    assert_eq!(x.to_bits(), y.to_bits());
                }
            }
        }
        (Ok(Event::Other(a, x)), Ok(Event::Other(b, y))) => assert_eq!((a, x), (b, y)),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        (a, b) => panic!("the readers disagree: {a:?} / {b:?}"),
    }
    let one_pass = subject.decode_message("fuzz", body);
    if let Ok(r) = &one_pass {
        r.check().expect("a decoded message fits its dataset");
    }
    // Read in one pass or through a `serde_json` tree, an event decodes
    // to the same record or the same reason.
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(body) {
        let tree = subject.decode(&Event::Object(Object::from_map(&map)));
        match (&one_pass, &tree) {
            (Ok(a), Ok(b)) => assert_eq!(a.values, b.values),
            (Err(a), Err(b)) => assert_eq!(a.reason, b.0),
            _ => panic!("one pass {one_pass:?} and tree {tree:?} disagree"),
        }
    }
}

/// WAL entries and segments. An entry that decodes encodes to bytes that
/// decode and encode to themselves; a segment's frames and unreadable
/// regions tile it exactly, and each frame is where the parser says.
pub fn wal_codec(data: &[u8]) {
    // An entry that decodes (records or columns) re-encodes as columns to
    // the same rows, and that encoding is stable.
    if let Ok((from_log, parts)) = decode_entry(data) {
        let mut once = Vec::new();
        encode_entry(&parts, from_log, &mut once).expect("decoded columns encode");
        let (flag, again) = decode_entry(&once).expect("re-encoded entry decodes");
        assert_eq!(flag, from_log);
        let shape = |ps: &[tally_pipeline::batch::Columns]| -> Vec<(u8, usize)> {
            ps.iter().map(|c| (c.dataset() as u8, c.rows())).collect()
        };
        assert_eq!(shape(&parts), shape(&again));
        let mut twice = Vec::new();
        encode_entry(&again, flag, &mut twice).expect("decoded columns encode");
        assert_eq!(once, twice);
    }
    let seg = parse_segment(data, 0);
    let mut covered = 0usize;
    for ((seq, payload), &offset) in seg.frames.iter().zip(&seg.offsets) {
        let mut frame = Vec::new();
        encode_frame(*seq, payload, &mut frame);
        let at = offset as usize;
        assert_eq!(&data[at..at + frame.len()], &frame[..]);
        covered += HEADER_LEN + payload.len();
    }
    covered += seg.damaged.iter().map(|r| r.len as usize).sum::<usize>();
    covered += seg.tail.map_or(0, |t| t.len as usize);
    assert_eq!(covered, data.len());
}

/// `tally.records` messages from Kafka: a record that passes the schema
/// check always becomes an Arrow batch (so it can never stall the flusher).
pub fn tally_records(data: &[u8]) {
    if let Ok(records) = decode_records(data) {
        for r in records.iter().filter(|r| r.check().is_ok()) {
            records_to_batch(r.dataset, std::iter::once(r))
                .expect("a record that fits its schema becomes a batch");
        }
    }
}

/// `POST /api/usage/config` bodies and the stored configuration file. An
/// accepted change survives the round trip through its file.
pub fn usage_config(data: &[u8]) {
    if let Ok(serde_json::Value::Object(changes)) = serde_json::from_slice(data) {
        let mut config = UsageConfig::defaults(0);
        if config.apply(&changes).is_ok() {
            let bytes = serde_json::to_vec(&config).expect("serialises");
            let mut back: UsageConfig = serde_json::from_slice(&bytes).expect("reads back");
            let (a, b) = (back.refresh_per_second, config.refresh_per_second);
            assert!(
                (a - b).abs() <= f64::EPSILON * a.abs().max(1.0),
                "{a} vs {b}"
            );
            back.refresh_per_second = b;
            assert_eq!(back, config);
        }
    }
    let _ = serde_json::from_slice::<UsageConfig>(data);
}

/// `vm.metrics` messages from Kafka (protobuf): what is accepted fits
/// `vm_metrics`.
pub fn kafka_vm_metrics(data: &[u8]) {
    if let Ok(columns) = decode_vm_metrics(data, NOW_NS) {
        // Columns are checked against the schema when made; as records,
        // every row fits too.
        for r in &columns.to_records() {
            r.check().expect("accepted rows fit vm_metrics");
        }
    }
}
