//! `exactly-bench json` (feature `json-candidates`): JSON parsers measured on the bench's
//! records before one is chosen for the decoder (issue #32).
//!
//! Every candidate reads the seed's three declared keys (`id`, `value`, `ts`) of each record
//! into the same Arrow builders, on one core, in chunks of 8,192 records as the pipeline
//! decodes them: the differences are the parsers'. `decoder` is the pipeline's own decoder
//! (with the `_kafka_*` columns it adds), the reference every candidate must match.

use std::time::Instant;

use deltalake::arrow::array::{Array, Int64Builder, StringBuilder};
use exactly::config::DecodeConfig;
use exactly::decode::Decoder;
use exactly::model::Record;

/// The seed's event with borrowed text (the bench's values hold no escapes).
#[derive(serde::Deserialize)]
struct Event<'a> {
    id: i64,
    value: &'a str,
    ts: i64,
}

/// The columns a candidate fills.
struct Columns {
    id: Int64Builder,
    value: StringBuilder,
    ts: Int64Builder,
}

impl Columns {
    fn new(n: usize) -> Self {
        Columns {
            id: Int64Builder::with_capacity(n),
            value: StringBuilder::with_capacity(n, n * 12),
            ts: Int64Builder::with_capacity(n),
        }
    }

    fn push(&mut self, id: i64, value: &str, ts_ms: i64) {
        self.id.append_value(id);
        self.value.append_value(value);
        self.ts.append_value(ts_ms * 1_000);
    }

    /// The rows built, and a checksum of the ids (the same for every candidate).
    fn finish(mut self) -> (usize, i64) {
        let id = self.id.finish();
        let _ = (self.value.finish(), self.ts.finish());
        (id.len(), id.values().iter().fold(0i64, |a, v| a.wrapping_add(*v)))
    }
}

/// `c`'s records parsed by `parse` into the seed's event, into the columns.
fn typed(c: &[Record], parse: impl for<'a> Fn(&'a [u8]) -> Event<'a>) -> (usize, i64) {
    let mut cols = Columns::new(c.len());
    for r in c {
        let e = parse(r.payload.as_deref().unwrap_or_default());
        cols.push(e.id, e.value, e.ts);
    }
    cols.finish()
}

/// One candidate's pass over `records`: `(records per second, rows, id checksum)`.
fn run(records: &[Record], mut chunk: impl FnMut(&[Record]) -> (usize, i64)) -> (f64, usize, i64) {
    let t0 = Instant::now();
    let (mut rows, mut sum) = (0, 0i64);
    for c in records.chunks(8192) {
        let (r, s) = chunk(c);
        rows += r;
        sum = sum.wrapping_add(s);
    }
    (records.len() as f64 / t0.elapsed().as_secs_f64(), rows, sum)
}

/// Each candidate's records per second (best of `rounds`), as JSON.
pub fn measure(records: &[Record], rounds: usize) -> serde_json::Value {
    let decoder = Decoder::new(&DecodeConfig::seed()).expect("the seed's decoder");
    let mut tree = sonic_rs::PointerTree::new();
    for key in ["id", "value", "ts"] {
        tree.add_path([key]);
    }
    let mut scratch = Vec::new();
    let mut candidates: Vec<(&str, Box<dyn FnMut(&[Record]) -> (usize, i64) + '_>)> = vec![
        (
            "decoder",
            Box::new(|c: &[Record]| {
                let rows = decoder.decode(c).rows;
                let id = rows.column_by_name("id").expect("id");
                let ids = id.as_any().downcast_ref::<deltalake::arrow::array::Int64Array>().expect("long");
                (rows.num_rows(), ids.values().iter().fold(0i64, |a, v| a.wrapping_add(*v)))
            }),
        ),
        ("serde_json (typed struct)", Box::new(|c: &[Record]| typed(c, |b| serde_json::from_slice(b).expect("json")))),
        ("sonic-rs (typed struct)", Box::new(|c: &[Record]| typed(c, |b| sonic_rs::from_slice(b).expect("json")))),
        (
            "sonic-rs (get_many, lazy values)",
            Box::new(|c: &[Record]| {
                use sonic_rs::JsonValueTrait;
                let mut cols = Columns::new(c.len());
                for r in c {
                    let got = sonic_rs::get_many(r.payload.as_deref().unwrap_or_default(), &tree).expect("json");
                    let (id, value, ts) = match &got[..] {
                        [Some(id), Some(value), Some(ts)] => (id.as_i64(), value.as_str(), ts.as_i64()),
                        _ => panic!("a key missing"),
                    };
                    cols.push(id.expect("id"), value.expect("value"), ts.expect("ts"));
                }
                cols.finish()
            }),
        ),
        (
            "simd-json (typed struct, from a copy)",
            Box::new(|c: &[Record]| {
                let mut cols = Columns::new(c.len());
                for r in c {
                    scratch.clear();
                    scratch.extend_from_slice(r.payload.as_deref().unwrap_or_default());
                    let e: Event = simd_json::serde::from_slice(&mut scratch).expect("json");
                    cols.push(e.id, e.value, e.ts);
                }
                cols.finish()
            }),
        ),
    ];
    let mut out = serde_json::Map::new();
    let mut reference = None;
    for (name, f) in candidates.iter_mut() {
        let mut best = 0f64;
        for _ in 0..rounds {
            let (rate, rows, sum) = run(records, &mut *f);
            assert_eq!(rows, records.len(), "{name}: every record");
            // Every candidate reads the same ids.
            assert_eq!(*reference.get_or_insert(sum), sum, "{name}: ids differ from the decoder's");
            best = best.max(rate);
        }
        out.insert(name.to_string(), serde_json::json!({"records_per_s": best}));
    }
    serde_json::Value::Object(out)
}
