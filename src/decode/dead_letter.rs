//! A record that could not be decoded (or that a later stage rejected): its coordinates, its
//! bytes and the reason, and the dead-letter table's rows.

use super::*;

/// A record that could not be decoded, with everything needed to find and fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Where it came from.
    pub tp: TopicPartition,
    /// Its offset.
    pub offset: i64,
    /// Its Kafka timestamp (ms).
    pub timestamp_ms: Option<i64>,
    /// Its key bytes.
    pub key: Option<Vec<u8>>,
    /// Its value bytes, as received.
    pub value: Option<Vec<u8>>,
    /// Why it was rejected.
    pub reason: String,
    /// The reason's category.
    pub kind: Rejection,
}

impl DeadLetter {
    /// Row `i` of decoded rows as a dead letter, with the record's bytes when the decoder kept
    /// them ([`RAW_KEY_COL`] / [`RAW_VALUE_COL`]): for stages after decoding that reject a row.
    pub fn of_row(batch: &RecordBatch, i: usize, kind: Rejection, reason: String) -> DeadLetter {
        use deltalake::arrow::array::{BinaryArray, Int32Array, Int64Array, StringArray, TimestampMicrosecondArray};
        let topic = batch
            .column_by_name(TOPIC_COL)
            .and_then(|c| c.as_any().downcast_ref::<StringArray>().map(|a| a.value(i).to_string()));
        let partition =
            batch.column_by_name(PARTITION_COL).and_then(|c| c.as_any().downcast_ref::<Int32Array>().map(|a| a.value(i)));
        let offset = batch.column_by_name(OFFSET_COL).and_then(|c| c.as_any().downcast_ref::<Int64Array>().map(|a| a.value(i)));
        let ts = batch
            .column_by_name(TIMESTAMP_COL)
            .and_then(|c| {
                c.as_any().downcast_ref::<TimestampMicrosecondArray>().map(|a| (!a.is_null(i)).then(|| a.value(i) / 1000))
            })
            .flatten();
        let raw = |name: &str| {
            let col = batch.column_by_name(name)?.as_any().downcast_ref::<BinaryArray>()?;
            (!col.is_null(i)).then(|| col.value(i).to_vec())
        };
        DeadLetter {
            tp: TopicPartition::new(&topic.unwrap_or_default(), partition.unwrap_or(-1)),
            offset: offset.unwrap_or(-1),
            timestamp_ms: ts,
            key: raw(RAW_KEY_COL),
            value: raw(RAW_VALUE_COL),
            reason,
            kind,
        }
    }

    /// Record `r` as a dead letter, with its bytes.
    pub fn of<R: RecordView>(r: &R, reason: String, kind: Rejection) -> DeadLetter {
        DeadLetter {
            tp: TopicPartition::new(r.topic(), r.partition()),
            offset: r.offset(),
            timestamp_ms: r.timestamp_ms(),
            key: r.key().map(<[u8]>::to_vec),
            value: r.payload().map(<[u8]>::to_vec),
            reason,
            kind,
        }
    }
}

/// The dead-letter table's schema (including `_epoch`).
pub fn dead_letter_schema() -> SchemaRef {
    let mut fields = meta_fields();
    fields.push(Field::new("key", DataType::Binary, true));
    fields.push(Field::new("value", DataType::Binary, true));
    fields.push(Field::new(REASON_COL, DataType::Utf8, false));
    fields.push(Field::new(EPOCH_COL, DataType::Int64, false));
    Arc::new(Schema::new(fields))
}

/// Dead letters as a batch of the dead-letter schema.
pub fn dead_letter_batch(dead: &[DeadLetter], epoch: u64) -> Result<RecordBatch, ArrowError> {
    let mut topic = StringBuilder::new();
    let mut partition = Int32Builder::new();
    let mut offset = Int64Builder::new();
    let mut ts = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let mut key = BinaryBuilder::new();
    let mut value = BinaryBuilder::new();
    let mut reason = StringBuilder::new();
    for d in dead {
        topic.append_value(&d.tp.topic);
        partition.append_value(d.tp.partition);
        offset.append_value(d.offset);
        ts.append_option(d.timestamp_ms.map(|t| t.saturating_mul(1000)));
        key.append_option(d.key.as_deref());
        value.append_option(d.value.as_deref());
        reason.append_value(&d.reason);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(topic.finish()),
        Arc::new(partition.finish()),
        Arc::new(offset.finish()),
        Arc::new(ts.finish()),
        Arc::new(key.finish()),
        Arc::new(value.finish()),
        Arc::new(reason.finish()),
        Arc::new(Int64Array::from(vec![epoch as i64; dead.len()])),
    ];
    RecordBatch::try_new(dead_letter_schema(), cols)
}
