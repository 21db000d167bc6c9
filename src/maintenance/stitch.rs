//! Compaction by copying row groups: files whose row groups are already big are merged by
//! copying their encoded column chunks into one file, without decoding or encoding a value.
//!
//! A fast pipeline writes epoch files of hundreds of thousands of rows, one row group each.
//! Decoding and re-encoding them on every tier merge (each byte about twice, 128 MiB target)
//! cost as much CPU as writing them in the first place (bench/README.md, "Performance (#32)");
//! what the merge is for — fewer files for readers to list and open — needs none of it. Row
//! groups are only copied when they are big (an eighth of `sink.parquet.row_group_rows`, 131,072
//! rows by default): small ones are still re-encoded together, so a slow pipeline's files end in
//! row groups of a useful size and are copied from then on.
//!
//! The merged file's Delta statistics are those of its inputs folded together ([`merged_stats`]):
//! every row comes from exactly one input, so counts add up and each column's bounds are the
//! widest of the inputs' — a bound not every input has is left out, which only lets a reader skip
//! less.

use std::sync::Arc;

use deltalake::kernel::{DataType, PrimitiveType, StructType};
use deltalake::logstore::object_store::ObjectStoreExt;
use deltalake::parquet::basic::Compression;
use deltalake::parquet::bloom_filter::Sbbf;
use deltalake::parquet::column::writer::ColumnCloseResult;
use deltalake::parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::parquet::file::writer::SerializedFileWriter;
use deltalake::DeltaTable;
use serde_json::{Map, Value};

use super::compaction::{Group, Policy};
use crate::config::TableLocation;
use crate::error::Result;
use crate::sink::delta::table::delta_err;

/// Parquet's own cap on a row group's rows, when `sink.parquet.row_group_rows` sets none.
const DEFAULT_ROW_GROUP_ROWS: usize = 1024 * 1024;

/// The fewest rows a row group needs to be copied as it is.
pub fn min_copied_rows(policy: &Policy) -> usize {
    policy.parquet.row_group_rows.unwrap_or(DEFAULT_ROW_GROUP_ROWS) / 8
}

/// Whether files with these footers can be merged by copying their row groups: one Parquet
/// schema and one Arrow schema between them, every row group at least `min_rows`, every column
/// chunk in the codec the table writes (`codec`: a merge also applies a changed
/// `sink.parquet.compression`).
pub fn copyable(footers: &[ParquetMetaData], min_rows: usize, codec: Compression) -> bool {
    let Some(first) = footers.first() else { return false };
    let arrow_schema = |m: &ParquetMetaData| {
        m.file_metadata()
            .key_value_metadata()
            .and_then(|kv| kv.iter().find(|kv| kv.key == "ARROW:schema").and_then(|kv| kv.value.clone()))
    };
    footers.iter().all(|m| {
        m.file_metadata().schema() == first.file_metadata().schema()
            && arrow_schema(m) == arrow_schema(first)
            && m.row_groups()
                .iter()
                .all(|rg| rg.num_rows() >= min_rows as i64 && rg.columns().iter().all(|c| c.compression() == codec))
    })
}

/// The footer of the Parquet file at `location` of `size` bytes (one ranged read of its tail,
/// a second if the footer is longer than that).
pub async fn footer(table: &DeltaTable, path: &TableLocation, location: &deltalake::Path, size: u64) -> Result<ParquetMetaData> {
    const TAIL: u64 = 64 * 1024;
    let store = table.object_store();
    let bad = |what: &str| delta_err(path, format!("{location}: {what}"));
    if size < 12 {
        return Err(bad("not a Parquet file"));
    }
    let start = size.saturating_sub(TAIL);
    let mut tail = store.get_range(location, start..size).await.map_err(|e| delta_err(path, e))?;
    let n = tail.len();
    if &tail[n - 4..] != b"PAR1" {
        return Err(bad("not a Parquet file"));
    }
    let len = u32::from_le_bytes(tail[n - 8..n - 4].try_into().expect("four bytes")) as u64;
    if len + 8 > size {
        return Err(bad("footer longer than the file"));
    }
    if len + 8 > n as u64 {
        tail = store.get_range(location, size - len - 8..size).await.map_err(|e| delta_err(path, e))?;
    }
    let n = tail.len();
    ParquetMetaDataReader::decode_metadata(&tail[n - 8 - len as usize..n - 8]).map_err(|e| delta_err(path, e))
}

/// Merges `group` into one file by copying its row groups (with their bloom filters and page
/// indexes) and returns the file's add action (`dataChange = false`, the inputs' statistics
/// merged), not yet committed; `schema`: the table's, for the statistics.
pub async fn stitch(
    table: &DeltaTable,
    path: &TableLocation,
    group: &Group,
    first: &ParquetMetaData,
    schema: &StructType,
) -> Result<deltalake::kernel::Add> {
    let store = table.object_store();
    let mut props = WriterProperties::builder();
    if let Some(kv) = first.file_metadata().key_value_metadata() {
        props = props.set_key_value_metadata(Some(kv.clone()));
    }
    let parquet_schema = first.file_metadata().schema_descr().root_schema_ptr();
    let mut writer =
        SerializedFileWriter::new(Vec::new(), parquet_schema, Arc::new(props.build())).map_err(|e| delta_err(path, e))?;
    for f in &group.files {
        let bytes =
            store.get(&f.location).await.map_err(|e| delta_err(path, e))?.bytes().await.map_err(|e| delta_err(path, e))?;
        let metadata = ParquetMetaDataReader::new()
            .with_page_index_policy(PageIndexPolicy::Optional)
            .parse_and_finish(&bytes)
            .map_err(|e| delta_err(path, e))?;
        for (i, rg) in metadata.row_groups().iter().enumerate() {
            let column_indexes = metadata.column_index().and_then(|c| c.get(i));
            let offset_indexes = metadata.offset_index().and_then(|o| o.get(i));
            let mut out = writer.next_row_group().map_err(|e| delta_err(path, e))?;
            for (c, column) in rg.columns().iter().enumerate() {
                let close = ColumnCloseResult {
                    bytes_written: column.compressed_size() as u64,
                    rows_written: rg.num_rows() as u64,
                    metadata: column.clone(),
                    bloom_filter: Sbbf::read_from_column_chunk(column, &bytes).ok().flatten(),
                    column_index: column_indexes.and_then(|row| row.get(c)).cloned(),
                    offset_index: offset_indexes.and_then(|row| row.get(c)).cloned(),
                };
                out.append_column(&bytes, close).map_err(|e| delta_err(path, e))?;
            }
            out.close().map_err(|e| delta_err(path, e))?;
        }
    }
    let bytes = writer.into_inner().map_err(|e| delta_err(path, e))?;
    // Beside its inputs: the partition's directory (all of a group's files share it).
    let name = format!("part-00000-{}-c000.parquet", uuid::Uuid::new_v4());
    let dir = |p: &str| p.rfind('/').map(|i| p[..=i].to_string()).unwrap_or_default();
    let first_file = &group.files[0];
    let location = deltalake::Path::from(format!("{}{name}", dir(first_file.location.as_ref())));
    let size = bytes.len() as i64;
    store.put(&location, bytes.into()).await.map_err(|e| delta_err(path, e))?;
    let inputs: Vec<Option<&str>> = group.files.iter().map(|f| f.stats.as_deref()).collect();
    Ok(deltalake::kernel::Add {
        path: format!("{}{name}", dir(&first_file.path)),
        partition_values: group.partition.clone().into_iter().collect(),
        size,
        modification_time: chrono::Utc::now().timestamp_millis(),
        data_change: false,
        stats: merged_stats(&inputs, schema),
        ..Default::default()
    })
}

/// The Delta statistics of a file holding exactly the rows of files with statistics `inputs`:
/// `numRecords` and each `nullCount` summed, each column's `minValues`/`maxValues` the widest of
/// the inputs' (compared as the column's type in `schema`), a value any input lacks left out.
/// `None` when an input has no statistics.
pub fn merged_stats(inputs: &[Option<&str>], schema: &StructType) -> Option<String> {
    let parsed: Vec<Map<String, Value>> =
        inputs.iter().map(|s| serde_json::from_str::<Value>((*s)?).ok()?.as_object().cloned()).collect::<Option<_>>()?;
    let mut out = Map::new();
    let records = parsed.iter().map(|p| p.get("numRecords")?.as_i64()).sum::<Option<i64>>()?;
    out.insert("numRecords".into(), records.into());
    let fold = |key: &str, f: &dyn Fn(&Value, &Value) -> Option<Value>| {
        let mut values = parsed.iter().map(|p| p.get(key));
        let first = values.next()??.clone();
        values.try_fold(first, |acc, v| f(&acc, v?))
    };
    let struct_type = DataType::Struct(Box::new(schema.clone()));
    if let Some(v) = fold("minValues", &|a, b| bound(a, b, &struct_type, false)) {
        out.insert("minValues".into(), v);
    }
    if let Some(v) = fold("maxValues", &|a, b| bound(a, b, &struct_type, true)) {
        out.insert("maxValues".into(), v);
    }
    if let Some(v) = fold("nullCount", &sum_counts) {
        out.insert("nullCount".into(), v);
    }
    if let Some(v) = fold("tightBounds", &|a, b| (a == b).then(|| a.clone())) {
        out.insert("tightBounds".into(), v);
    }
    Some(Value::Object(out).to_string())
}

/// `a` and `b` (null counts of one shape) added, member by member; members only one has left out.
fn sum_counts(a: &Value, b: &Value) -> Option<Value> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => Some((x.as_i64()? + y.as_i64()?).into()),
        (Value::Object(x), Value::Object(y)) => {
            Some(Value::Object(x.iter().filter_map(|(k, xv)| Some((k.clone(), sum_counts(xv, y.get(k)?)?))).collect()))
        }
        _ => None,
    }
}

/// The wider of two bounds of a column of type `t`: the larger if `max`, else the smaller.
/// Structs member by member (members only one has, or of a type without an order here, left out).
fn bound(a: &Value, b: &Value, t: &DataType, max: bool) -> Option<Value> {
    use std::cmp::Ordering;
    let order: Ordering = match (t, a, b) {
        (DataType::Struct(s), Value::Object(x), Value::Object(y)) => {
            let members: Map<String, Value> = x
                .iter()
                .filter_map(|(k, xv)| {
                    let field = s.field(k)?;
                    Some((k.clone(), bound(xv, y.get(k)?, field.data_type(), max)?))
                })
                .collect();
            return Some(Value::Object(members));
        }
        (DataType::Primitive(p), a, b) => match p {
            PrimitiveType::Byte | PrimitiveType::Short | PrimitiveType::Integer | PrimitiveType::Long => {
                a.as_i64()?.cmp(&b.as_i64()?)
            }
            PrimitiveType::Float | PrimitiveType::Double => a.as_f64()?.partial_cmp(&b.as_f64()?)?,
            PrimitiveType::Decimal(_) => {
                let (x, y) = (a.as_f64()?, b.as_f64()?);
                // Two bounds a double cannot tell apart: no bound rather than a wrong one.
                if x == y && a != b {
                    return None;
                }
                x.partial_cmp(&y)?
            }
            PrimitiveType::String | PrimitiveType::Date => a.as_str()?.cmp(b.as_str()?),
            PrimitiveType::Boolean => a.as_bool()?.cmp(&b.as_bool()?),
            PrimitiveType::Timestamp | PrimitiveType::TimestampNtz => instant(a)?.cmp(&instant(b)?),
            _ => return None,
        },
        _ => return None,
    };
    let a_wins = if max { order == Ordering::Greater } else { order == Ordering::Less };
    Some(if a_wins { a.clone() } else { b.clone() })
}

/// A timestamp bound as written in Delta statistics (RFC 3339; without a zone for
/// `timestamp_ntz`).
fn instant(v: &Value) -> Option<chrono::NaiveDateTime> {
    let s = v.as_str()?;
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.naive_utc())
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f"))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::kernel::StructField;

    fn schema() -> StructType {
        StructType::try_new([
            StructField::new("id", DataType::LONG, false),
            StructField::new("value", DataType::STRING, true),
            StructField::new("ts", DataType::TIMESTAMP, true),
            StructField::new(
                "nested",
                DataType::Struct(Box::new(
                    StructType::try_new([
                        StructField::new("x", DataType::DOUBLE, true),
                        StructField::new("raw", DataType::BINARY, true),
                    ])
                    .unwrap(),
                )),
                true,
            ),
        ])
        .unwrap()
    }

    #[test]
    fn merged_statistics_add_the_counts_and_take_the_widest_bounds() {
        let a = r#"{"numRecords":3,"minValues":{"id":5,"value":"b","ts":"2026-12-07T10:00:00.000Z","nested":{"x":1.5}},"maxValues":{"id":9,"value":"k","ts":"2026-12-07T10:00:00.900Z","nested":{"x":2.0}},"nullCount":{"id":0,"value":1,"ts":0,"nested":{"x":0,"raw":3}},"tightBounds":true}"#;
        let b = r#"{"numRecords":2,"minValues":{"id":-1,"value":"c","ts":"2026-12-07T09:59:59.999Z","nested":{"x":0.5}},"maxValues":{"id":7,"value":"z","ts":"2026-12-07T10:00:00.1Z","nested":{"x":1.0}},"nullCount":{"id":0,"value":0,"ts":2,"nested":{"x":1,"raw":2}},"tightBounds":true}"#;
        let merged: Value = serde_json::from_str(&merged_stats(&[Some(a), Some(b)], &schema()).unwrap()).unwrap();
        let want: Value = serde_json::from_str(
            r#"{"numRecords":5,"minValues":{"id":-1,"value":"b","ts":"2026-12-07T09:59:59.999Z","nested":{"x":0.5}},"maxValues":{"id":9,"value":"z","ts":"2026-12-07T10:00:00.900Z","nested":{"x":2.0}},"nullCount":{"id":0,"value":1,"ts":2,"nested":{"x":1,"raw":5}},"tightBounds":true}"#,
        )
        .unwrap();
        assert_eq!(merged, want);
    }

    #[test]
    fn a_bound_one_input_lacks_is_left_out_and_missing_statistics_give_none() {
        let a = r#"{"numRecords":1,"minValues":{"id":1,"value":"a"},"maxValues":{"id":1,"value":"a"},"nullCount":{"id":0,"value":0}}"#;
        let b = r#"{"numRecords":1,"minValues":{"id":2},"maxValues":{"id":2},"nullCount":{"id":0}}"#;
        let merged: Value = serde_json::from_str(&merged_stats(&[Some(a), Some(b)], &schema()).unwrap()).unwrap();
        assert_eq!(merged["minValues"], serde_json::json!({"id": 1}));
        assert_eq!(merged["maxValues"], serde_json::json!({"id": 2}));
        assert_eq!(merged["nullCount"], serde_json::json!({"id": 0}));
        assert!(merged.get("tightBounds").is_none());
        assert_eq!(merged_stats(&[Some(a), None], &schema()), None);
        let no_bounds = r#"{"numRecords":4}"#;
        assert_eq!(merged_stats(&[Some(a), Some(no_bounds)], &schema()).as_deref(), Some(r#"{"numRecords":5}"#));
    }
}
