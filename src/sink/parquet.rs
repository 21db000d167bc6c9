//! How the sink encodes Parquet: the writer properties of the files an epoch adds. (Compaction's
//! rewrites, off the commit path, keep delta-rs's defaults.)
//!
//! Dictionary encoding pays for columns with few distinct values and costs for columns whose
//! values are nearly all distinct (ids, offsets, timestamps): every value is interned into a
//! hash table until the dictionary page fills (1 MiB) and the writer falls back to plain
//! encoding anyway. The rows about to be written are sampled, and columns whose sample is mostly
//! distinct are written without a dictionary. Readers see ordinary Parquet either way.

use std::collections::HashSet;

use deltalake::arrow::array::{Array, ArrayRef, AsArray};
use deltalake::arrow::datatypes::DataType;
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::parquet::basic::{BrotliLevel, Compression, GzipLevel, ZstdLevel};
use deltalake::parquet::file::properties::{WriterProperties, WriterPropertiesBuilder};

use crate::config::{Codec, ParquetConfig};
use deltalake::parquet::schema::types::ColumnPath;

/// Rows sampled per column (from the first batches).
const SAMPLE: usize = 8_192;
/// Fewer sampled rows than this say nothing: Parquet's own fallback decides.
const MIN_SAMPLE: usize = 256;

/// The writer properties for a file holding `rows`: `config`'s, and no dictionary for the
/// top-level columns that are mostly distinct in a sample of `rows`.
pub fn writer_properties(rows: &[RecordBatch], config: &ParquetConfig) -> WriterProperties {
    let mut builder = builder(config);
    for name in mostly_distinct_columns(rows) {
        builder = builder.set_column_dictionary_enabled(ColumnPath::from(name), false);
    }
    builder.build()
}

/// The writer properties `config` stands for (`sink.parquet`): compression, row groups, Bloom
/// filters.
pub fn properties(config: &ParquetConfig) -> WriterProperties {
    builder(config).build()
}

/// The codec `config` names (`sink.parquet.compression`).
pub fn compression(config: &ParquetConfig) -> Compression {
    // (Validated with the config: a codec it names exists.)
    match config.codec().unwrap_or(Codec::Snappy) {
        Codec::None => Compression::UNCOMPRESSED,
        Codec::Snappy => Compression::SNAPPY,
        Codec::Lz4 => Compression::LZ4_RAW,
        Codec::Zstd(l) => Compression::ZSTD(ZstdLevel::try_new(l).unwrap_or_default()),
        Codec::Gzip(l) => Compression::GZIP(GzipLevel::try_new(l).unwrap_or_default()),
        Codec::Brotli(l) => Compression::BROTLI(BrotliLevel::try_new(l).unwrap_or_default()),
    }
}

fn builder(config: &ParquetConfig) -> WriterPropertiesBuilder {
    let mut builder = WriterProperties::builder().set_compression(compression(config));
    if let Some(rows) = config.row_group_rows {
        builder = builder.set_max_row_group_row_count(Some(rows));
    }
    for column in &config.bloom_filters {
        builder = builder.set_column_bloom_filter_enabled(ColumnPath::from(column.as_str()), true);
    }
    builder
}

/// The top-level flat columns whose first `SAMPLE` values are more than half distinct.
pub fn mostly_distinct_columns(rows: &[RecordBatch]) -> Vec<String> {
    let Some(first) = rows.first() else { return Vec::new() };
    let mut out = Vec::new();
    for (i, field) in first.schema().fields().iter().enumerate() {
        let mut seen = Seen::default();
        let mut sampled = 0;
        for batch in rows {
            if sampled >= SAMPLE {
                break;
            }
            let Some(col) = batch.columns().get(i) else { break };
            if batch.schema().field(i).name() != field.name() {
                break; // batches of another shape (a grown schema): judge by the first ones
            }
            let take = (SAMPLE - sampled).min(col.len());
            if !seen.add(col, take) {
                sampled = 0; // not a flat column: left to Parquet
                break;
            }
            sampled += take;
        }
        if sampled >= MIN_SAMPLE && seen.len() * 2 > sampled {
            out.push(field.name().clone());
        }
    }
    out
}

/// The distinct values sampled from one column: strings and binaries by their bytes, fixed-width
/// values (numbers, dates, timestamps, decimals) by their bits.
#[derive(Default)]
struct Seen<'a> {
    bytes: HashSet<&'a [u8], foldhash::fast::RandomState>,
    fixed: HashSet<u128, foldhash::fast::RandomState>,
}

impl<'a> Seen<'a> {
    fn len(&self) -> usize {
        self.bytes.len() + self.fixed.len()
    }

    /// Adds `col`'s first `n` values; false for a type not sampled (nested, boolean, ...).
    fn add(&mut self, col: &'a ArrayRef, n: usize) -> bool {
        match col.data_type() {
            DataType::Utf8 => {
                let a = col.as_string::<i32>();
                self.bytes.extend((0..n).map(|i| a.value(i).as_bytes()));
            }
            DataType::LargeUtf8 => {
                let a = col.as_string::<i64>();
                self.bytes.extend((0..n).map(|i| a.value(i).as_bytes()));
            }
            DataType::Binary => {
                let a = col.as_binary::<i32>();
                self.bytes.extend((0..n).map(|i| a.value(i)));
            }
            t => {
                let Some(width) = t.primitive_width().filter(|w| *w <= 16) else { return false };
                let data = col.to_data();
                let Some(buffer) = data.buffers().first() else { return false };
                let start = data.offset() * width;
                // Null slots hold arbitrary values; they only make a column look more distinct
                // when it is mostly null, where the encoding matters little.
                self.fixed.extend(buffer.as_slice()[start..start + n * width].chunks_exact(width).map(|c| {
                    let mut v = [0u8; 16];
                    v[..width].copy_from_slice(c);
                    u128::from_le_bytes(v)
                }));
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use deltalake::arrow::array::{Int64Array, StringArray};
    use deltalake::arrow::datatypes::{Field, Schema};

    use super::*;

    #[test]
    fn ids_lose_the_dictionary_and_low_cardinality_columns_keep_it() {
        let n = 10_000i64;
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("value", DataType::Utf8, true),
            Field::new("offset", DataType::Int64, false),
        ]));
        let batch = |from: i64| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from_iter_values(from..from + n / 2)),
                    Arc::new(StringArray::from_iter_values((from..from + n / 2).map(|i| format!("v{}", i % 1_000)))),
                    Arc::new(Int64Array::from_iter_values((from..from + n / 2).map(|i| i * 2))),
                ],
            )
            .unwrap()
        };
        let rows = vec![batch(0), batch(n / 2)];
        assert_eq!(mostly_distinct_columns(&rows), vec!["id".to_string(), "offset".to_string()]);
        let props = writer_properties(&rows, &ParquetConfig::default());
        assert!(!props.dictionary_enabled(&ColumnPath::from("id")));
        assert!(props.dictionary_enabled(&ColumnPath::from("value")));
        // A sliced batch is read from its own offset; a handful of rows says nothing.
        assert_eq!(mostly_distinct_columns(&[rows[0].slice(100, 4_000)]), vec!["id".to_string(), "offset".to_string()]);
        assert!(mostly_distinct_columns(&[rows[0].slice(0, 10)]).is_empty());
    }
}
