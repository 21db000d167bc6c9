//! A table's rows as written: named columns of its Parquet files, read through its store,
//! with their partition values and without the rows deletion vectors mark deleted. The audit
//! reads them, and a group member rebuilds a partition's keyed state from them.

use std::collections::HashMap;
use std::sync::Arc;

use deltalake::arrow::array::BooleanArray;
use deltalake::arrow::datatypes::DataType;
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::logstore::object_store::path::Path as ObjectPath;
use deltalake::logstore::object_store::ObjectStoreExt;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::parquet::arrow::ProjectionMask;
use deltalake::DeltaTable;

use crate::error::{Error, Result};

/// The named columns of every row in these Parquet files of `table`, read through its store;
/// rows a deletion vector marks deleted are left out (an upsert table's superseded rows, or
/// rows another writer deleted).
pub async fn read_columns(table: &DeltaTable, files: &[ObjectPath], names: &[&str]) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    for_each_batch(table, files, names, &mut |b| {
        out.push(b);
        Ok(())
    })
    .await?;
    Ok(out)
}

/// [`read_columns`], each batch handed to `each` as its file is read (the rows are never held
/// all at once).
pub async fn for_each_batch(
    table: &DeltaTable,
    files: &[ObjectPath],
    names: &[&str],
    each: &mut (dyn FnMut(RecordBatch) -> Result<()> + Send),
) -> Result<()> {
    let store = table.log_store().object_store(None);
    let snapshot = table.snapshot().map_err(|e| Error::Delta { table: table.table_url().to_string(), detail: e.to_string() })?;
    // Partition columns are in the log, not in the files: each file's values, for the names asked.
    let schema = snapshot.snapshot().arrow_schema();
    let partitions: HashMap<ObjectPath, Vec<(String, Option<String>)>> = snapshot
        .log_data()
        .iter()
        .map(|f| {
            let values = f.partition_values_map().into_iter().filter(|(k, _)| names.contains(&k.as_str())).collect();
            (f.object_store_path(), values)
        })
        .collect();
    let vectors: HashMap<ObjectPath, deltalake::kernel::DeletionVectorDescriptor> =
        snapshot.log_data().iter().filter_map(|f| Some((f.object_store_path(), f.deletion_vector_descriptor()?))).collect();
    for path in files {
        let err = |e: String| Error::Delta { table: format!("{}{path}", table.table_url()), detail: e };
        let bytes = store.get(path).await.map_err(|e| err(e.to_string()))?.bytes().await.map_err(|e| err(e.to_string()))?;
        // Decoding is CPU work: off the async workers.
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let decoded = tokio::task::spawn_blocking(move || -> std::result::Result<Vec<RecordBatch>, String> {
            let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| e.to_string())?;
            let mask = ProjectionMask::columns(builder.parquet_schema(), names.iter().map(String::as_str));
            let mut batches = Vec::new();
            for batch in builder.with_projection(mask).build().map_err(|e| e.to_string())? {
                batches.push(plain_types(batch.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?);
            }
            Ok(batches)
        })
        .await
        .map_err(|e| err(e.to_string()))?;
        let mut batches = decoded.map_err(err)?;
        if let Some(dv) = vectors.get(path) {
            let deleted = crate::sink::delta::dv::read(store.as_ref(), dv).await?;
            batches = without_rows(batches, &deleted).map_err(|e| err(e.to_string()))?;
        }
        if let Some(values) = partitions.get(path).filter(|v| !v.is_empty()) {
            for batch in &mut batches {
                let (mut fields, mut columns): (Vec<_>, Vec<_>) =
                    (batch.schema().fields().iter().cloned().collect(), batch.columns().to_vec());
                for (name, value) in values {
                    let field = schema.field_with_name(name).map_err(|e| err(e.to_string()))?;
                    let column = crate::maintenance::compaction::partition_column(value, field.data_type(), batch.num_rows())
                        .map_err(|e| err(format!("partition value of {name}: {e}")))?;
                    fields.push(Arc::new(field.clone()));
                    columns.push(column);
                }
                *batch = RecordBatch::try_new(Arc::new(deltalake::arrow::datatypes::Schema::new(fields)), columns)
                    .map_err(|e| err(e.to_string()))?;
            }
        }
        for b in batches {
            each(b)?;
        }
    }
    Ok(())
}

/// A file's batches (in file order) without the rows at the positions `deleted` holds.
fn without_rows(
    batches: Vec<RecordBatch>,
    deleted: &roaring::RoaringTreemap,
) -> std::result::Result<Vec<RecordBatch>, deltalake::arrow::error::ArrowError> {
    let mut at = 0u64;
    let mut out = Vec::with_capacity(batches.len());
    for b in batches {
        let n = b.num_rows() as u64;
        let keep = BooleanArray::from((at..at + n).map(|i| !deleted.contains(i)).collect::<Vec<bool>>());
        at += n;
        out.push(deltalake::arrow::compute::filter_record_batch(&b, &keep)?);
    }
    Ok(out)
}

/// The batch with view, large and dictionary strings and binaries as plain `Utf8`/`Binary`: a
/// file rewritten by another writer (an OPTIMIZE through DataFusion writes `Utf8View`) holds the
/// same values under another Arrow type.
pub fn plain_types(batch: RecordBatch) -> std::result::Result<RecordBatch, deltalake::arrow::error::ArrowError> {
    use deltalake::arrow::datatypes::{Field, Schema};
    let plain = |t: &DataType| match t {
        DataType::Utf8View | DataType::LargeUtf8 => Some(DataType::Utf8),
        DataType::BinaryView | DataType::LargeBinary => Some(DataType::Binary),
        DataType::Dictionary(_, v) if matches!(**v, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8) => {
            Some(DataType::Utf8)
        }
        _ => None,
    };
    if batch.schema().fields().iter().all(|f| plain(f.data_type()).is_none()) {
        return Ok(batch);
    }
    let mut fields = Vec::new();
    let mut cols = Vec::new();
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        match plain(f.data_type()) {
            Some(t) => {
                cols.push(deltalake::arrow::compute::cast(c, &t)?);
                fields.push(Field::new(f.name(), t, f.is_nullable()));
            }
            None => {
                cols.push(c.clone());
                fields.push(f.as_ref().clone());
            }
        }
    }
    RecordBatch::try_new(std::sync::Arc::new(Schema::new(fields)), cols)
}
