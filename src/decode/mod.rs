//! The decode stage: Kafka records -> Arrow rows with a declared schema, or dead letters.
//!
//! Decoding is deterministic (it depends only on the record), so an epoch replayed after a
//! crash yields exactly the same rows and dead letters. Consumers run it, one per partition, so
//! it runs in parallel; the aggregator and committer only ever see Arrow batches.
//!
//! Every row carries its Kafka coordinates: `_kafka_topic`, `_kafka_partition`, `_kafka_offset`,
//! `_kafka_timestamp`; the committer adds `_epoch`.

use std::borrow::Cow;
use std::sync::Arc;

use crate::config::{DecodeConfig, DecodeFormat, FieldConfig, FieldType};
use crate::model::{RecordView, TopicPartition};
use deltalake::arrow::array::builder::NullBufferBuilder;
use deltalake::arrow::array::{
    Array, ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder, Float64Builder,
    Int32Builder, Int64Array, Int64Builder, ListArray, ListBuilder, MapArray, StringBuilder, StructArray, StructBuilder,
    TimestampMicrosecondBuilder,
};
use deltalake::arrow::buffer::OffsetBuffer;
use deltalake::arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef, TimeUnit};
use deltalake::arrow::error::ArrowError;
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::kernel::engine::arrow_conversion::TryIntoArrow;
use deltalake::kernel::{ArrayType, DataType as DeltaType, MapType, StructField, StructType};

pub mod avro;
mod builders;
mod change;
mod dead_letter;
mod evolve;
mod json;
mod json_schema;
pub mod protobuf;
pub mod registry;

use builders::{arrow_field, Col, Val};
pub use builders::{delta_field, delta_type};
pub use dead_letter::{dead_letter_batch, dead_letter_schema, DeadLetter};

use crate::model::{
    Rejection, CHANGE_DELETE_COL, CHANGE_SEQUENCE_COL, EPOCH_COL, HEADERS_COL, KEY_COL, OFFSET_COL, PARTITION_COL, RAW_KEY_COL,
    RAW_VALUE_COL, REASON_COL, TIMESTAMP_COL, TOPIC_COL,
};

/// A rejection and its reason text.
type Rejected = (Rejection, String);

/// The output of decoding one batch of records.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// Rows that decoded, in offset order.
    pub rows: RecordBatch,
    /// Records that did not.
    pub dead: Vec<DeadLetter>,
    /// Records the transform's filter dropped (`transform.where`): neither rows nor dead
    /// letters, counted.
    pub filtered: Vec<(TopicPartition, i64)>,
    /// The earliest Kafka timestamp of the records decoded (rows, dead letters and filtered
    /// alike), read once per record with the row's.
    pub min_timestamp_ms: Option<i64>,
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The type of `_kafka_headers`: a list of `{key, value}`.
fn headers_type() -> DataType {
    DataType::List(Arc::new(Field::new("element", DataType::Struct(header_fields()), true)))
}

fn header_fields() -> deltalake::arrow::datatypes::Fields {
    vec![Field::new("key", DataType::Utf8, false), Field::new("value", DataType::Binary, true)].into()
}

fn meta_fields() -> Vec<Field> {
    vec![
        Field::new(TOPIC_COL, DataType::Utf8, false),
        Field::new(PARTITION_COL, DataType::Int32, false),
        Field::new(OFFSET_COL, DataType::Int64, false),
        Field::new(TIMESTAMP_COL, ts_type(), true),
    ]
}

/// `schema` with the `_epoch` column appended.
pub fn with_epoch_field(schema: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(EPOCH_COL, DataType::Int64, false));
    Arc::new(Schema::new(fields))
}

/// Appends the constant `_epoch` column.
pub fn with_epoch(batch: &RecordBatch, epoch: u64) -> Result<RecordBatch, ArrowError> {
    let mut fields: Vec<Field> = batch.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(EPOCH_COL, DataType::Int64, false));
    let mut cols: Vec<ArrayRef> = batch.columns().to_vec();
    cols.push(Arc::new(Int64Array::from(vec![epoch as i64; batch.num_rows()])));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
}

/// The `_kafka_*` columns of decoded rows, built row by row.
struct MetaColumns {
    topic: StringBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    timestamp: TimestampMicrosecondBuilder,
    /// With `decode.include_key` / `decode.include_headers`.
    key: Option<BinaryBuilder>,
    headers: Option<ListBuilder<StructBuilder>>,
}

impl MetaColumns {
    /// Columns for `n` records of topics named in about `topic_len` bytes.
    fn new(n: usize, topic_len: usize, (key, headers): (bool, bool)) -> MetaColumns {
        let element = Field::new("element", DataType::Struct(header_fields()), true);
        MetaColumns {
            topic: StringBuilder::with_capacity(n, n * topic_len),
            partition: Int32Builder::with_capacity(n),
            offset: Int64Builder::with_capacity(n),
            timestamp: TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC"),
            key: key.then(|| BinaryBuilder::with_capacity(n, 0)),
            headers: headers.then(|| ListBuilder::new(StructBuilder::from_fields(header_fields(), 0)).with_field(element)),
        }
    }

    fn push<R: RecordView>(&mut self, r: &R, timestamp_ms: Option<i64>) {
        self.topic.append_value(r.topic());
        self.partition.append_value(r.partition());
        self.offset.append_value(r.offset());
        self.timestamp.append_option(timestamp_ms.map(|t| t.saturating_mul(1000)));
        if let Some(key) = &mut self.key {
            key.append_option(r.key());
        }
        if let Some(column) = &mut self.headers {
            let entries = column.values();
            for (name, value) in r.headers() {
                entries.field_builder::<StringBuilder>(0).expect("key builder").append_value(name);
                entries.field_builder::<BinaryBuilder>(1).expect("value builder").append_option(value);
                entries.append(true);
            }
            column.append(true);
        }
    }

    fn finish(mut self, arrays: &mut Vec<ArrayRef>) {
        arrays.push(Arc::new(self.topic.finish()));
        arrays.push(Arc::new(self.partition.finish()));
        arrays.push(Arc::new(self.offset.finish()));
        arrays.push(Arc::new(self.timestamp.finish()));
        if let Some(key) = &mut self.key {
            arrays.push(Arc::new(key.finish()));
        }
        if let Some(headers) = &mut self.headers {
            arrays.push(Arc::new(headers.finish()));
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        s.to_string()
    } else {
        let mut end = n;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    }
}

/// `b` as text, or why it is no UTF-8 (`what`: the key or the value).
fn utf8<'a>(what: &str, b: &'a [u8]) -> Result<&'a str, Rejected> {
    std::str::from_utf8(b).map_err(|e| (Rejection::NotUtf8, format!("{what} is not valid UTF-8: {e}")))
}

fn is_raw(column: &str) -> bool {
    column == RAW_KEY_COL || column == RAW_VALUE_COL
}

/// Whether `column` is one no table gets: the raw key and value, a change's kind and sequence.
fn is_hidden(column: &str) -> bool {
    is_raw(column) || column == CHANGE_DELETE_COL || column == CHANGE_SEQUENCE_COL
}

/// `batch` without the hidden raw key/value columns (unchanged if it has none).
pub fn without_raw(batch: &RecordBatch) -> RecordBatch {
    let schema = batch.schema();
    let keep: Vec<usize> = (0..schema.fields().len()).filter(|i| !is_raw(schema.field(*i).name())).collect();
    if keep.len() == schema.fields().len() {
        return batch.clone();
    }
    batch.project(&keep).expect("projection of existing columns")
}

/// Where a decoder's columns and its records' writer schemas come from.
#[derive(Debug, Clone)]
enum Schemas {
    /// `decode.fields` (JSON), or the fixed columns of `raw` and `text`.
    Declared,
    /// Avro's reader and writer schemas.
    Avro(Arc<avro::Avro>),
    /// Protobuf's reader message and writer schemas.
    Protobuf(Arc<protobuf::Protobuf>),
    /// A registry's JSON Schema (`decode.json`): the columns, the framing, the ids it knows.
    JsonSchema(Arc<json_schema::JsonSchema>),
}

impl Schemas {
    /// The schemas `config` names, and the declared columns; `Err`: one line.
    fn load(config: &DecodeConfig) -> Result<(Schemas, Vec<FieldConfig>), String> {
        Ok(match (config.format, &config.avro, &config.protobuf, &config.json) {
            (DecodeFormat::Avro, Some(c), _, _) => {
                let row = (config.envelope == crate::config::Envelope::Debezium).then_some("after");
                let avro = avro::Avro::load(c, row)?;
                let fields = avro.fields().to_vec();
                (Schemas::Avro(Arc::new(avro)), fields)
            }
            (DecodeFormat::Avro, None, _, _) => return Err("`format = \"avro\"` needs [decode.avro]".into()),
            (DecodeFormat::Protobuf, _, Some(c), _) => {
                let protobuf = protobuf::Protobuf::load(c)?;
                let fields = protobuf.fields().to_vec();
                (Schemas::Protobuf(Arc::new(protobuf)), fields)
            }
            (DecodeFormat::Protobuf, _, None, _) => return Err("`format = \"protobuf\"` needs [decode.protobuf]".into()),
            (DecodeFormat::Json, _, _, Some(c)) => {
                let (json, fields) = json_schema::JsonSchema::load(c)?;
                (Schemas::JsonSchema(Arc::new(json)), fields)
            }
            _ => (Schemas::Declared, config.fields.clone()),
        })
    }

    /// The Avro schemas, if these are.
    fn avro(&self) -> Option<&Arc<avro::Avro>> {
        match self {
            Schemas::Avro(avro) => Some(avro),
            _ => None,
        }
    }

    /// The columns writer schemas added so far (`None`: no writer schemas, `decode.fields`).
    fn added(&self) -> Option<Vec<(FieldConfig, Field)>> {
        match self {
            Schemas::Avro(avro) => Some(avro.added()),
            Schemas::Protobuf(protobuf) => Some(protobuf.added()),
            Schemas::JsonSchema(json) => Some(json.added()),
            Schemas::Declared => None,
        }
    }
}

/// Decodes records against a declared schema.
#[derive(Debug, Clone)]
pub struct Decoder {
    format: DecodeFormat,
    fields: Vec<FieldConfig>,
    max_bytes: usize,
    schema: SchemaRef,
    keep_raw: bool,
    /// Where the columns and the writer schemas come from.
    schemas: Schemas,
    /// With writer schemas (Avro, Protobuf, a registry's JSON Schema): whether the fields they
    /// have beyond the reader schema's are columns too (`sink.schema_evolution =
    /// "add-columns"`).
    writer_columns: bool,
    /// `[transform]`, applied to the decoded rows.
    transform: Option<Arc<crate::transform::Transform>>,
    /// `[upsert]`: how records become changes; rows then carry [`CHANGE_DELETE_COL`] (and
    /// [`CHANGE_SEQUENCE_COL`]), and every declared column is nullable in them (a delete has
    /// its key columns only).
    changes: Option<Arc<change::Changes>>,
    /// With `changes`: the schema of the table's rows (the declared nullability).
    table_schema: Option<SchemaRef>,
    /// `decode.include_key` / `decode.include_headers`: rows carry [`KEY_COL`] /
    /// [`HEADERS_COL`] after the other `_kafka_*` columns.
    include: (bool, bool),
}

impl Decoder {
    /// A decoder for the configured format and schema; `Err` when the Avro schemas cannot be
    /// read or do not parse (built once, by `plan::Plan`).
    pub fn new(config: &DecodeConfig) -> Result<Self, String> {
        let (schemas, declared) = Schemas::load(config)?;
        let mut fields: Vec<Field> = match config.format {
            DecodeFormat::Raw => vec![Field::new("key", DataType::Binary, true), Field::new("value", DataType::Binary, true)],
            DecodeFormat::Text => vec![Field::new("key", DataType::Utf8, true), Field::new("value", DataType::Utf8, true)],
            DecodeFormat::Json | DecodeFormat::Avro | DecodeFormat::Protobuf => {
                declared.iter().map(arrow_field).collect::<Result<_, String>>()?
            }
        };
        fields.extend(meta_fields());
        if config.include_key {
            fields.push(Field::new(KEY_COL, DataType::Binary, true));
        }
        if config.include_headers {
            fields.push(Field::new(HEADERS_COL, headers_type(), true));
        }
        Ok(Decoder {
            format: config.format,
            fields: declared,
            max_bytes: config.max_record_bytes,
            schema: Arc::new(Schema::new(fields)),
            keep_raw: false,
            schemas,
            writer_columns: false,
            transform: None,
            changes: None,
            table_schema: None,
            include: (config.include_key, config.include_headers),
        })
    }

    /// This decoder, reading each record as a change of its key's row (`[upsert]`) in
    /// `envelope`; `Err`: a key or sequence column that is not declared or cannot be one.
    pub fn changing(
        mut self,
        upsert: Option<&crate::config::UpsertConfig>,
        envelope: crate::config::Envelope,
    ) -> Result<Self, String> {
        let Some(upsert) = upsert else { return Ok(self) };
        let changes = change::Changes::new(upsert, envelope, &self.fields, self.schemas.avro().cloned())?;
        self.table_schema = Some(self.schema.clone());
        let mut fields: Vec<Field> = self.schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect();
        fields.push(Field::new(CHANGE_DELETE_COL, DataType::Boolean, false));
        if changes.sequenced() {
            fields.push(Field::new(CHANGE_SEQUENCE_COL, DataType::Int64, true));
        }
        self.schema = Arc::new(Schema::new(fields));
        self.changes = Some(Arc::new(changes));
        Ok(self)
    }

    /// Gets ready to decode `records`: fetches the writer schemas they name from the schema
    /// registry (Avro with `decode.avro.registry`; nothing to do otherwise). `Err`: the registry
    /// could not be asked, and the records must not be decoded — the caller fails and is
    /// restarted, so no record is ever skipped for it.
    ///
    /// When writer schemas' fields are columns ([`Decoder::taking_writer_columns`]), this is
    /// also where the columns grow; `Err` when two writer schemas give one column two types.
    pub async fn prepare<R: RecordView>(&self, records: &[R]) -> crate::error::Result<()> {
        let values = || records.iter().filter_map(RecordView::payload);
        let avro = match &self.schemas {
            Schemas::Declared => return Ok(()),
            Schemas::JsonSchema(json) => {
                json.prepare(values()).await.map_err(crate::error::Error::SchemaRegistry)?;
                if self.writer_columns {
                    json.grow(values()).map_err(crate::error::Error::Schema)?;
                }
                return Ok(());
            }
            Schemas::Protobuf(protobuf) => {
                protobuf.prepare(values()).await.map_err(crate::error::Error::SchemaRegistry)?;
                if self.writer_columns {
                    protobuf.grow(values()).map_err(crate::error::Error::Schema)?;
                }
                return Ok(());
            }
            Schemas::Avro(avro) => avro,
        };
        // With `[upsert]`, a tombstone's Kafka key gives the key columns: its schema too.
        let keys = records.iter().filter(|r| self.changes.is_some() && r.payload().is_none()).filter_map(RecordView::key);
        avro.prepare(records.iter().filter_map(RecordView::payload).chain(keys))
            .await
            .map_err(crate::error::Error::SchemaRegistry)?;
        if self.writer_columns {
            avro.grow(records.iter().filter_map(RecordView::payload)).map_err(crate::error::Error::Schema)?;
        }
        Ok(())
    }

    /// For `exactly check`: asks the schema registry (Avro with `decode.avro.registry`) whether
    /// it answers and takes the credentials; its address when one is configured and answers.
    pub async fn check_registry(&self) -> crate::error::Result<Option<String>> {
        let checked = match &self.schemas {
            Schemas::Avro(avro) => avro.check_registry().await,
            Schemas::Protobuf(protobuf) => protobuf.check_registry().await,
            Schemas::JsonSchema(json) => json.check_registry().await.map(Some),
            Schemas::Declared => Ok(None),
        };
        checked.map_err(crate::error::Error::SchemaRegistry)
    }

    /// The declared columns (`json`: `decode.fields`; `avro`: the reader schema's fields).
    pub fn fields(&self) -> &[FieldConfig] {
        &self.fields
    }

    /// This decoder, applying `transform` (if any) to the rows it decodes; `Err`: one line
    /// naming the setting and the expression that does not plan.
    pub fn transforming(mut self, transform: Option<&crate::config::TransformConfig>) -> Result<Self, String> {
        self.transform = match transform {
            Some(t) => Some(Arc::new(crate::transform::Transform::new(t, &self.schema)?)),
            None => None,
        };
        Ok(self)
    }

    /// This decoder, making the fields Avro writer schemas have beyond the reader schema's
    /// columns too, when `take` is set. Such a column is nullable, and each row holds what its
    /// own writer schema gives there: a row never depends on which records came before it.
    /// Rows then carry the columns the writer schemas seen so far added, after the reader
    /// schema's and before the `_kafka_*` ones; the sink brings them to the table.
    pub fn taking_writer_columns(mut self, take: bool) -> Self {
        self.writer_columns = take && self.schemas.added().is_some();
        self
    }

    /// This decoder, keeping the raw key and value in [`RAW_KEY_COL`] / [`RAW_VALUE_COL`] when
    /// `keep` is set (the stage that drops rows removes them with [`without_raw`]).
    pub fn keeping_raw(mut self, keep: bool) -> Self {
        if keep && !self.keep_raw {
            let mut fields: Vec<Field> = self.schema.fields().iter().map(|f| f.as_ref().clone()).collect();
            fields.push(Field::new(RAW_KEY_COL, DataType::Binary, true));
            fields.push(Field::new(RAW_VALUE_COL, DataType::Binary, true));
            self.schema = Arc::new(Schema::new(fields));
            self.keep_raw = true;
        }
        self
    }

    /// The schema of the rows this decoder gives: decoded, then transformed (without `_epoch`;
    /// with the hidden raw columns if kept).
    pub fn schema(&self) -> SchemaRef {
        match &self.transform {
            Some(t) => t.output_schema(&self.schema),
            None => self.schema.clone(),
        }
    }

    /// The schema of committed rows (with `_epoch`, never the hidden columns).
    pub fn output_schema(&self) -> SchemaRef {
        let schema = self.table_schema.clone().unwrap_or_else(|| self.schema());
        let visible: Vec<Field> = schema.fields().iter().filter(|f| !is_hidden(f.name())).map(|f| f.as_ref().clone()).collect();
        with_epoch_field(&Schema::new(visible))
    }

    /// The column values of one record into `vals`, or why it cannot be decoded. Nothing is
    /// appended to a column until every value is known, so a bad record never leaves columns
    /// misaligned.
    fn values<'a, R: RecordView>(
        &self,
        r: &'a R,
        vals: &mut Vec<Val<'a>>,
        slots: &mut json::Slots<'a>,
        added: Option<&[FieldConfig]>,
    ) -> Result<change::Change, Rejected> {
        vals.clear();
        let size = r.payload().map_or(0, <[u8]>::len);
        if size > self.max_bytes {
            return Err((
                Rejection::TooLarge,
                format!("record value of {size} bytes exceeds decode.max_record_bytes = {}", self.max_bytes),
            ));
        }
        if let Some(changes) = &self.changes {
            return changes.values(&self.fields, r, vals, slots);
        }
        match self.format {
            DecodeFormat::Raw => {
                vals.push(r.key().map_or(Val::Null, Val::Bin));
                vals.push(r.payload().map_or(Val::Null, Val::Bin));
            }
            DecodeFormat::Text => {
                for (what, bytes) in [("key", r.key()), ("value", r.payload())] {
                    match bytes {
                        None => vals.push(Val::Null),
                        Some(b) => vals.push(Val::Str(Cow::Borrowed(utf8(what, b)?))),
                    }
                }
            }
            DecodeFormat::Json => {
                let bytes = r
                    .payload()
                    .ok_or_else(|| (Rejection::NullValue, "value is null (a tombstone); expected a JSON object".to_string()))?;
                match &self.schemas {
                    Schemas::JsonSchema(framed) => framed.values(bytes, added, vals, slots)?,
                    _ => json::values(&self.fields, utf8("value", bytes)?, vals, slots)?,
                }
            }
            DecodeFormat::Avro => {
                let bytes = r
                    .payload()
                    .ok_or_else(|| (Rejection::NullValue, "value is null (a tombstone); expected an Avro record".to_string()))?;
                let Schemas::Avro(avro) = &self.schemas else { unreachable!("Decoder::new loads every Avro decoder's schemas") };
                avro.values(bytes, vals, added)?;
            }
            DecodeFormat::Protobuf => {
                let bytes = r.payload().ok_or_else(|| {
                    (Rejection::NullValue, "value is null (a tombstone); expected a Protobuf message".to_string())
                })?;
                let Schemas::Protobuf(protobuf) = &self.schemas else {
                    unreachable!("Decoder::new loads every Protobuf decoder's schemas")
                };
                protobuf.values(bytes, vals, added)?;
            }
        }
        Ok(change::Change::default())
    }

    /// Decodes records (of one or more partitions, owned or borrowed from librdkafka) into rows
    /// and dead letters.
    pub fn decode<R: RecordView>(&self, records: &[R]) -> Decoded {
        let n = records.len();
        let mut cols: Vec<Col> = match self.format {
            DecodeFormat::Raw => vec![Col::Bin(BinaryBuilder::new()), Col::Bin(BinaryBuilder::new())],
            DecodeFormat::Text => vec![Col::Str(StringBuilder::new()), Col::Str(StringBuilder::new())],
            DecodeFormat::Json | DecodeFormat::Avro | DecodeFormat::Protobuf => {
                self.fields.iter().zip(self.schema.fields()).map(|(f, a)| Col::for_type(&f.kind, a.data_type(), n)).collect()
            }
        };
        // The columns writer schemas added (those of these records included: `prepare` took
        // them), and the schema of rows that carry them.
        let (added, schema) = match (self.schemas.added(), self.writer_columns) {
            (Some(grown), true) => {
                // `prepare` grew them; a record whose writer schema it did not see is a dead
                // letter saying so (`WriterColumns::in_batch`), never a row missing its columns.
                let (added, fields): (Vec<FieldConfig>, Vec<Field>) = grown.into_iter().unzip();
                cols.extend(added.iter().zip(&fields).map(|(f, a)| Col::for_type(&f.kind, a.data_type(), n)));
                let mut all: Vec<Field> = self.schema.fields().iter().map(|f| f.as_ref().clone()).collect();
                all.splice(self.fields.len()..self.fields.len(), fields);
                (Some(added), Arc::new(Schema::new(all)))
            }
            _ => (None, self.schema.clone()),
        };
        let mut meta = MetaColumns::new(n, records.first().map_or(0, |r| r.topic().len()), self.include);
        let raw_capacity = if self.keep_raw { n } else { 0 };
        let (mut raw_key, mut raw_value) =
            (BinaryBuilder::with_capacity(raw_capacity, 0), BinaryBuilder::with_capacity(raw_capacity, 0));
        let change_capacity = if self.changes.is_some() { n } else { 0 };
        let (mut deletes, mut sequences) =
            (BooleanBuilder::with_capacity(change_capacity), Int64Builder::with_capacity(change_capacity));
        let mut dead = Vec::new();
        let (mut vals, mut slots) = (Vec::with_capacity(self.fields.len().max(2)), Vec::with_capacity(self.fields.len()));
        // Which record each row is, for the transform's dead letters and filtered records.
        let mut row_records: Vec<usize> = Vec::with_capacity(if self.transform.is_some() { n } else { 0 });
        let mut min_timestamp_ms: Option<i64> = None;
        for (index, r) in records.iter().enumerate() {
            let timestamp_ms = r.timestamp_ms();
            if let Some(t) = timestamp_ms {
                min_timestamp_ms = Some(min_timestamp_ms.map_or(t, |m| m.min(t)));
            }
            match self.values(r, &mut vals, &mut slots, added.as_deref()) {
                Ok(change) => {
                    if self.changes.is_some() {
                        deletes.append_value(change.delete);
                        sequences.append_option(change.sequence);
                    }
                    if self.transform.is_some() {
                        row_records.push(index);
                    }
                    for (c, v) in cols.iter_mut().zip(vals.drain(..)) {
                        c.push(v);
                    }
                    meta.push(r, timestamp_ms);
                    if self.keep_raw {
                        raw_key.append_option(r.key());
                        raw_value.append_option(r.payload());
                    }
                }
                Err((kind, reason)) => dead.push(DeadLetter::of(r, reason, kind)),
            }
        }
        let mut arrays: Vec<ArrayRef> = cols.into_iter().map(Col::finish).collect();
        meta.finish(&mut arrays);
        if let Some(changes) = &self.changes {
            arrays.push(Arc::new(deletes.finish()));
            if changes.sequenced() {
                arrays.push(Arc::new(sequences.finish()));
            }
        }
        if self.keep_raw {
            arrays.push(Arc::new(raw_key.finish()));
            arrays.push(Arc::new(raw_value.finish()));
        }
        let rows = RecordBatch::try_new(schema, arrays).expect("decoder builds columns of its own schema");
        let Some(transform) = &self.transform else { return Decoded { rows, dead, filtered: Vec::new(), min_timestamp_ms } };
        let applied = transform.apply(&rows);
        let at = |i: usize| &records[row_records[i]];
        if !applied.failed.is_empty() {
            for (i, reason) in applied.failed {
                dead.push(DeadLetter::of(at(i), reason, Rejection::Transform));
            }
            dead.sort_by(|a, b| (&a.tp, a.offset).cmp(&(&b.tp, b.offset)));
        }
        let filtered =
            applied.filtered.iter().map(|i| (TopicPartition::new(at(*i).topic(), at(*i).partition()), at(*i).offset())).collect();
        Decoded { rows: applied.rows, dead, filtered, min_timestamp_ms }
    }
}

/// The offsets column of a decoded or committed batch.
pub fn offsets(batch: &RecordBatch) -> Option<&Int64Array> {
    batch.column_by_name(OFFSET_COL)?.as_any().downcast_ref::<Int64Array>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DecodeConfig;
    use crate::model::Record;

    pub(super) fn rec(offset: i64, value: &[u8]) -> Record {
        Record {
            tp: TopicPartition::new("t", 0),
            offset,
            timestamp_ms: Some(1_000),
            key: Some(b"k".to_vec()),
            payload: Some(value.to_vec()),
            headers: Vec::new(),
        }
    }

    fn json_decoder() -> Decoder {
        let config: DecodeConfig = toml::from_str(
            r#"format = "json"
               fields = [{ name = "id", type = "long", nullable = false }, { name = "value", type = "string" }, { name = "ts", type = "timestamp" }]"#,
        )
        .unwrap();
        Decoder::new(&config).unwrap()
    }

    #[test]
    fn json_rows_and_every_kind_of_dead_letter() {
        let d = json_decoder();
        let out = d.decode(&[
            rec(0, br#"{"id":1,"value":"a","ts":5}"#),
            rec(1, b"not json"),
            rec(2, br#"{"id":"x","value":"a"}"#),
            rec(3, br#"{"value":"a"}"#),
            rec(4, &[0xff, 0xfe]),
            rec(5, br#"[1,2]"#),
            rec(6, br#"{"id":2,"extra":true}"#),
        ]);
        assert_eq!(out.rows.num_rows(), 2);
        assert_eq!(offsets(&out.rows).unwrap().values(), &[0, 6]);
        let reasons: Vec<&str> = out.dead.iter().map(|d| d.reason.as_str()).collect();
        assert_eq!(out.dead.iter().map(|d| d.offset).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
        assert!(reasons[0].contains("not valid JSON"), "{reasons:?}");
        assert!(reasons[1].contains("field `id`: expected long, got string"), "{reasons:?}");
        assert!(reasons[2].contains("missing field `id`"), "{reasons:?}");
        assert!(reasons[3].contains("not valid UTF-8"), "{reasons:?}");
        assert!(reasons[4].contains("expected a JSON object, got array"), "{reasons:?}");
        assert_eq!(out.dead[3].value.as_deref(), Some(&[0xff, 0xfe][..]), "raw bytes kept");
    }

    #[test]
    fn the_earliest_timestamp_counts_dead_letters_and_skips_records_without_one() {
        let d = json_decoder();
        let at = |offset, ts, value: &[u8]| Record { timestamp_ms: ts, ..rec(offset, value) };
        let out = d.decode(&[
            at(0, Some(500), br#"{"id":1}"#),
            at(1, Some(200), b"not json"),
            at(2, None, br#"{"id":2}"#),
            at(3, Some(300), br#"{"id":3}"#),
        ]);
        assert_eq!((out.rows.num_rows(), out.dead.len()), (3, 1));
        assert_eq!(out.min_timestamp_ms, Some(200));
        assert_eq!(d.decode(&[at(0, None, br#"{"id":1}"#)]).min_timestamp_ms, None);
    }

    #[test]
    fn typed_fast_path_matches_the_general_rules() {
        use deltalake::arrow::array::{StringArray, TimestampMicrosecondArray};
        let d = json_decoder();
        let out = d.decode(&[
            rec(0, br#"{"id":1,"value":"plain","ts":5}"#),
            rec(1, br#"{"value":"esc\"aped\u00e9","id":2,"nested":{"a":[1,{"b":null}]}}"#),
            rec(2, br#"{"id":3,"value":"first","value":"last"}"#),
            rec(3, br#"{"id":4,"value":{"an":"object"}}"#),
            rec(4, br#"{"id":18446744073709551615}"#),
            rec(5, br#"{"id":5.0}"#),
            rec(6, br#"{"id":6,"value":null,"ts":null}"#),
            rec(7, br#"{"id":7} trailing"#),
            rec(8, br#" {"id":8,"value":[1],"value":"scalar wins"} "#),
        ]);
        assert_eq!(offsets(&out.rows).unwrap().values(), &[0, 1, 2, 6, 8]);
        let value = out.rows.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        let got: Vec<Option<&str>> = value.iter().collect();
        assert_eq!(got, vec![Some("plain"), Some("esc\"aped\u{e9}"), Some("last"), None, Some("scalar wins")]);
        let ts = out.rows.column(2).as_any().downcast_ref::<TimestampMicrosecondArray>().unwrap();
        assert_eq!(ts.value(0), 5_000);
        assert!(ts.is_null(3));
        let reasons: Vec<(i64, &str)> = out.dead.iter().map(|d| (d.offset, d.reason.as_str())).collect();
        assert!(reasons[0].0 == 3 && reasons[0].1.contains("field `value`: expected string, got object"), "{reasons:?}");
        assert!(reasons[1].0 == 4 && reasons[1].1.contains("field `id`: expected long, got integer"), "{reasons:?}");
        assert!(reasons[2].0 == 5 && reasons[2].1.contains("field `id`: expected long, got number"), "{reasons:?}");
        assert!(reasons[3].0 == 7 && reasons[3].1.contains("not valid JSON"), "{reasons:?}");
        assert_eq!(reasons.len(), 4);
    }

    #[test]
    fn timestamps_from_epoch_milliseconds_or_rfc_3339_strings() {
        let d = json_decoder();
        let at = |ts: &str| rec(0, format!(r#"{{"id":1,"value":"v","ts":{ts}}}"#).as_bytes());
        let recs = [
            at("1764158400123"),
            at(r#""2025-11-26T12:00:00.123Z""#),
            at(r#""2025-11-26T14:00:00.123456789+02:00""#),
            at(r#""2025-11-26 12:00:00.000001Z""#),
            at(r#""26/11/2025""#),
            at(r#""2025-11-26T12:00:00""#),
        ];
        let out = d.decode(&recs);
        let ts = out
            .rows
            .column_by_name("ts")
            .unwrap()
            .as_any()
            .downcast_ref::<deltalake::arrow::array::TimestampMicrosecondArray>()
            .unwrap();
        let got: Vec<i64> = (0..ts.len()).map(|i| ts.value(i)).collect();
        // 2025-11-26T12:00:00Z is 1764158400 s; microseconds kept, digits past them truncated.
        assert_eq!(got, [1_764_158_400_123_000, 1_764_158_400_123_000, 1_764_158_400_123_456, 1_764_158_400_000_001]);
        assert_eq!(out.dead.len(), 2, "a date in another form, and a timestamp without a zone, are dead letters");
        assert!(out.dead.iter().all(|d| d.kind == Rejection::WrongType && d.reason.contains("RFC 3339")), "{:?}", out.dead);
        // The general path (a record the fast path hands over) decodes strings the same way.
        let slow = d.decode(&[rec(0, br#"{"id":1,"value":"v","ts":"2025-11-26T12:00:00.123Z","x":[1,{"y":2}]}"#)]);
        assert_eq!(slow.rows.num_rows(), 1);
    }

    #[test]
    fn dates_from_iso_8601_strings() {
        let config: DecodeConfig = toml::from_str(
            r#"format = "json"
               fields = [{ name = "day", type = "date" }]"#,
        )
        .unwrap();
        let d = Decoder::new(&config).unwrap();
        let recs = [
            rec(0, br#"{"day":"1970-01-02"}"#),
            rec(1, br#"{"day":"2026-11-26"}"#),
            rec(2, br#"{"day":"1969-12-31"}"#),
            rec(3, br#"{"day":null}"#),
            rec(4, br#"{"day":"2026-02-30"}"#),
            rec(5, br#"{"day":20261126}"#),
        ];
        let out = d.decode(&recs);
        let days = out.rows.column(0).as_any().downcast_ref::<deltalake::arrow::array::Date32Array>().unwrap();
        let got: Vec<Option<i32>> = (0..days.len()).map(|i| days.is_valid(i).then(|| days.value(i))).collect();
        assert_eq!(got, [Some(1), Some(20_783), Some(-1), None]);
        assert_eq!(
            out.dead.iter().map(|d| d.offset).collect::<Vec<_>>(),
            [4, 5],
            "an impossible date and a number are dead letters"
        );
        assert!(out.dead.iter().all(|d| d.reason.contains("ISO 8601")));
    }

    #[test]
    fn nested_values_decode_on_the_fast_and_general_paths_alike() {
        use deltalake::arrow::util::display::{ArrayFormatter, FormatOptions};
        let config: DecodeConfig = toml::from_str(
            r#"format = "json"
               fields = [
                 { name = "id", type = "long" },
                 { name = "s", type = "struct<a: int not null, l: array<decimal(5, 2)>>" },
                 { name = "m", type = "map<string, array<string>>" },
               ]"#,
        )
        .unwrap();
        let d = Decoder::new(&config).unwrap();
        let out = d.decode(&[
            rec(0, br#"{"id":1,"s":{"a":1,"l":[1.5,null,"2.25"]},"m":{"k":["x"],"e":[]}}"#),
            // The general path (a duplicate key holding an array first) decodes the same way.
            rec(1, br#"{"id":[0],"id":2,"s":{"a":2,"l":[]},"m":{"k":null,"k":["last"]}}"#),
            rec(2, br#"{"id":3,"s":null,"m":null}"#),
            rec(3, br#"{"id":4,"s":{"l":[]}}"#),
            rec(4, br#"{"id":5,"s":{"a":1,"l":[1.234]}}"#),
            rec(5, br#"{"id":6,"m":{"k":[1]}}"#),
            rec(6, br#"{"id":7,"s":[1]}"#),
        ]);
        let show = |col: &str, i: usize| {
            let c = out.rows.column_by_name(col).unwrap();
            ArrayFormatter::try_new(c.as_ref(), &FormatOptions::default()).unwrap().value(i).to_string()
        };
        assert_eq!(offsets(&out.rows).unwrap().values(), &[0, 1, 2]);
        assert_eq!(show("s", 0), "{a: 1, l: [1.50, , 2.25]}");
        assert_eq!(show("m", 0), "{k: [x], e: []}");
        assert_eq!(show("s", 1), "{a: 2, l: []}");
        assert_eq!(show("m", 1), "{k: [last]}");
        assert_eq!((show("s", 2), show("m", 2)), (String::new(), String::new()));
        let reasons: Vec<&str> = out.dead.iter().map(|d| d.reason.as_str()).collect();
        assert_eq!(reasons.len(), 4, "{reasons:?}");
        assert!(reasons[0].contains("missing field `s.a`"), "{reasons:?}");
        assert!(reasons[1].contains("field `s.l[0]`: 1.234 has more fraction digits than the scale"), "{reasons:?}");
        assert!(reasons[2].contains(r#"field `m["k"][0]`: expected string, got integer 1"#), "{reasons:?}");
        assert!(reasons[3].contains("field `s`: expected object, got array"), "{reasons:?}");
        // The schema is the Delta types' Arrow form, and a batch of it writes.
        assert_eq!(out.rows.schema(), d.schema());
    }

    #[test]
    fn oversized_records_are_dead_lettered() {
        let config = DecodeConfig { max_record_bytes: 10, ..Default::default() };
        let out = Decoder::new(&config).unwrap().decode(&[rec(0, b"0123456789"), rec(1, b"0123456789A")]);
        assert_eq!(out.rows.num_rows(), 1);
        assert!(out.dead[0].reason.contains("11 bytes exceeds"));
    }

    #[test]
    fn epoch_column_and_dead_letter_batch() {
        let d = json_decoder();
        let out = d.decode(&[rec(0, br#"{"id":1}"#), rec(1, b"{")]);
        let b = with_epoch(&out.rows, 7).unwrap();
        assert_eq!(b.schema(), d.output_schema());
        let dl = dead_letter_batch(&out.dead, 7).unwrap();
        assert_eq!(dl.num_rows(), 1);
        assert_eq!(dl.schema(), dead_letter_schema());
    }
}
