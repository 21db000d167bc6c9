//! Reading what the audit compares: the tables' rows (through their stores, as written), the
//! offsets they record, and the topics' records.

use super::outputs::OutputTable;
use super::*;
pub(super) use crate::sink::delta::rows::read_columns;

/// How long the Kafka read may go without progress before the audit gives up.
pub(super) const KAFKA_STALL: Duration = Duration::from_secs(30);

/// Where each table row came from, per partition.
pub(super) type FoundOffsets = HashMap<TopicPartition, Vec<i64>>;

/// A cell as text, the same way for table rows and for rows decoded from Kafka: integers and
/// timestamps as their raw integer, doubles with 6 decimals, decimals and nested values as
/// Arrow prints them.
pub(super) fn cell(col: &ArrayRef, i: usize) -> String {
    if col.is_null(i) {
        return "null".into();
    }
    let any = col.as_any();
    match col.data_type() {
        DataType::Int64 => any.downcast_ref::<Int64Array>().map(|a| a.value(i).to_string()),
        DataType::Int32 => any.downcast_ref::<Int32Array>().map(|a| a.value(i).to_string()),
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            any.downcast_ref::<TimestampMicrosecondArray>().map(|a| a.value(i).to_string())
        }
        DataType::Date32 => any.downcast_ref::<Date32Array>().map(|a| a.value(i).to_string()),
        DataType::Float64 => any.downcast_ref::<Float64Array>().map(|a| format!("{:.6}", a.value(i))),
        DataType::Utf8 => any.downcast_ref::<StringArray>().map(|a| a.value(i).to_string()),
        DataType::Boolean => any.downcast_ref::<BooleanArray>().map(|a| a.value(i).to_string()),
        DataType::Binary => any.downcast_ref::<BinaryArray>().map(|a| format!("{:?}", a.value(i))),
        DataType::Struct(_) | DataType::List(_) | DataType::LargeList(_) | DataType::Map(..) => Some(nested(col.as_ref(), i)),
        // Decimals and the rest: Arrow's text form.
        _ => deltalake::arrow::util::display::ArrayFormatter::try_new(col.as_ref(), &Default::default())
            .ok()
            .map(|f| f.value(i).to_string()),
    }
    .unwrap_or_else(|| "?".into())
}

/// A nested value as text, the same for every layout of the same value: struct members sorted
/// by name and null ones left out (a file written before `sink.schema_evolution` added a member
/// has no such member, and reads it as null), lists and maps in order, leaves as [`cell`] does.
pub(super) fn nested(col: &dyn Array, i: usize) -> String {
    nested_masked(col, i, &[])
}

/// [`nested`] without the struct members at `masked` (paths of member names below `col`).
pub(super) fn nested_masked(col: &dyn Array, i: usize, masked: &[&[String]]) -> String {
    use deltalake::arrow::array::AsArray;
    if col.is_null(i) {
        return "null".into();
    }
    match col.data_type() {
        DataType::Struct(fields) => {
            let s = col.as_struct();
            let mut members: Vec<(String, String)> = fields
                .iter()
                .zip(s.columns())
                .filter(|(f, c)| !c.is_null(i) && !masked.iter().any(|m| m.len() == 1 && m[0] == *f.name()))
                .map(|(f, c)| {
                    let below: Vec<&[String]> =
                        masked.iter().filter(|m| m.len() > 1 && m[0] == *f.name()).map(|m| &m[1..]).collect();
                    let text = if below.is_empty() { cell(c, i) } else { nested_masked(c.as_ref(), i, &below) };
                    (f.name().clone(), text)
                })
                .collect();
            members.sort();
            format!("{{{}}}", members.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", "))
        }
        DataType::List(_) => {
            let items = col.as_list::<i32>().value(i);
            format!("[{}]", (0..items.len()).map(|j| cell(&items, j)).collect::<Vec<_>>().join(", "))
        }
        DataType::LargeList(_) => {
            let items = col.as_list::<i64>().value(i);
            format!("[{}]", (0..items.len()).map(|j| cell(&items, j)).collect::<Vec<_>>().join(", "))
        }
        DataType::Map(..) => {
            let m = col.as_map();
            let (start, end) = (m.value_offsets()[i] as usize, m.value_offsets()[i + 1] as usize);
            let entries = (start..end).map(|j| format!("{}: {}", cell(m.keys(), j), cell(m.values(), j)));
            format!("{{{}}}", entries.collect::<Vec<_>>().join(", "))
        }
        _ => "?".into(),
    }
}

pub(super) fn column<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    b.column_by_name(name).ok_or_else(|| Error::Sink(format!("table has no column {name}")))
}

/// `(partition, offset)` of every row, from the `_kafka_*` columns.
pub(super) fn coordinates(batches: &[RecordBatch]) -> Result<FoundOffsets> {
    let mut found = FoundOffsets::new();
    for b in batches {
        let topics =
            column(b, TOPIC_COL)?.as_any().downcast_ref::<StringArray>().ok_or_else(|| Error::Sink("bad topic column".into()))?;
        let parts = column(b, PARTITION_COL)?
            .as_any()
            .downcast_ref::<Int32Array>()
            .ok_or_else(|| Error::Sink("bad partition column".into()))?;
        let offs = column(b, OFFSET_COL)?
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| Error::Sink("bad offset column".into()))?;
        for i in 0..b.num_rows() {
            found.entry(TopicPartition::new(topics.value(i), parts.value(i))).or_default().push(offs.value(i));
        }
    }
    Ok(found)
}

/// Row `i` as text: the named columns' cells, `name=value`, joined (what a row is compared by).
pub(super) fn row_text(b: &RecordBatch, cols: &[String], i: usize) -> Result<String> {
    row_text_masked(b, cols, i, &[])
}

/// [`row_text`] with the columns and struct members at `masked` (paths: a column name, then
/// member names) read as null: those `sink.schema_evolution` added after the row was written.
pub(super) fn row_text_masked(b: &RecordBatch, cols: &[String], i: usize, masked: &[&[String]]) -> Result<String> {
    let mut out = Vec::with_capacity(cols.len());
    for c in cols {
        let here: Vec<&[String]> = masked.iter().filter(|m| m.first() == Some(c)).map(|m| &m[1..]).collect();
        // A column the file lacks (written before `sink.schema_evolution` added it) reads as
        // null, as Delta readers read it.
        let text = match b.column_by_name(c) {
            None => "null".to_string(),
            Some(_) if here.iter().any(|m| m.is_empty()) => "null".to_string(),
            Some(col) if here.is_empty() => cell(col, i),
            Some(col) => nested_masked(col.as_ref(), i, &here),
        };
        out.push(format!("{c}={text}"));
    }
    Ok(out.join(", "))
}

/// The columns and struct members `sink.schema_evolution` added, each with where rows begin to
/// carry it (table properties `exactly.addedAt.<path>`).
pub(super) fn added_columns(table: &DeltaTable) -> Result<Vec<(Vec<String>, AddedAt)>> {
    let snapshot = table.snapshot().map_err(|e| Error::Sink(e.to_string()))?;
    Ok(snapshot
        .metadata()
        .configuration()
        .iter()
        .filter_map(|(k, v)| {
            let path = k.strip_prefix(crate::sink::schema::ADDED_AT_PREFIX)?;
            Some((path.split('.').map(String::from).collect(), AddedAt::parse(v)?))
        })
        .collect())
}

/// Each row's text and `_epoch`, by partition and offset.
pub(super) type RowContents = HashMap<TopicPartition, HashMap<i64, (String, i64)>>;

/// Every row's text and epoch by partition and offset (the first row at a coordinate; copies
/// are counted as duplicates elsewhere).
pub(super) fn contents(batches: &[RecordBatch], cols: &[String]) -> Result<RowContents> {
    let mut out = RowContents::new();
    for b in batches {
        let (topics, parts, offs) = (column(b, TOPIC_COL)?, column(b, PARTITION_COL)?, column(b, OFFSET_COL)?);
        let epochs = column(b, EPOCH_COL)?;
        for i in 0..b.num_rows() {
            let tp = TopicPartition::new(&cell(topics, i), cell(parts, i).parse().unwrap_or(-1));
            let offset = cell(offs, i).parse().unwrap_or(-1);
            let epoch = cell(epochs, i).parse().unwrap_or(-1);
            out.entry(tp).or_default().entry(offset).or_insert((row_text(b, cols, i)?, epoch));
        }
    }
    Ok(out)
}

/// Each dead letter's key and value bytes, by partition and offset.
pub(super) type DeadBytes = HashMap<TopicPartition, HashMap<i64, (Option<Vec<u8>>, Option<Vec<u8>>)>>;

pub(super) fn dead_letter_bytes(batches: &[RecordBatch]) -> Result<DeadBytes> {
    let mut out = DeadBytes::new();
    for b in batches {
        let bin = |name: &str| -> Result<BinaryArray> {
            column(b, name)?
                .as_any()
                .downcast_ref::<BinaryArray>()
                .cloned()
                .ok_or_else(|| Error::Sink(format!("bad {name} column")))
        };
        let (key, value) = (bin("key")?, bin("value")?);
        let (topics, parts, offs) = (column(b, TOPIC_COL)?, column(b, PARTITION_COL)?, column(b, OFFSET_COL)?);
        for i in 0..b.num_rows() {
            let tp = TopicPartition::new(&cell(topics, i), cell(parts, i).parse().unwrap_or(-1));
            let bytes = |a: &BinaryArray| (!a.is_null(i)).then(|| a.value(i).to_vec());
            out.entry(tp).or_default().entry(cell(offs, i).parse().unwrap_or(-1)).or_insert((bytes(&key), bytes(&value)));
        }
    }
    Ok(out)
}

/// The files the table's current version references, relative to its root.
pub(super) fn active_files(table: &DeltaTable) -> Result<Vec<ObjectPath>> {
    let snapshot = table.snapshot().map_err(|e| Error::Delta { table: table.table_url().to_string(), detail: e.to_string() })?;
    Ok(snapshot.log_data().iter().map(|f| f.object_store_path()).collect())
}

/// Parquet files under the table's root (outside `_delta_log`) that its current version does
/// not reference, as `<table>/<file>`.
pub(super) async fn orphans(table: &DeltaTable, at: &TableLocation, active: &[ObjectPath]) -> Result<Vec<String>> {
    use futures::TryStreamExt;
    let live: HashSet<&ObjectPath> = active.iter().collect();
    let listed: Vec<_> = table
        .log_store()
        .object_store(None)
        .list(None)
        .try_collect()
        .await
        .map_err(|e| Error::Delta { table: at.to_string(), detail: e.to_string() })?;
    let mut out: Vec<String> = listed
        .into_iter()
        .map(|m| m.location)
        .filter(|p| p.extension() == Some("parquet") && !p.as_ref().starts_with("_delta_log/") && !live.contains(p))
        .map(|p| format!("{}/{p}", at.display().trim_end_matches('/')))
        .collect();
    out.sort();
    Ok(out)
}

/// The offsets Kafka holds for `tp` in `[from, to)` (read_committed, like the pipeline), and
/// the partition's low watermark.
pub(super) fn kafka_records(
    connection: &source::Connection,
    tp: &TopicPartition,
    from: i64,
    to: i64,
) -> Result<(Vec<Record>, i64)> {
    let consumer: BaseConsumer = connection
        .client_config()
        .set("group.id", "exactly-verify")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()?;
    let (low, high) = consumer.fetch_watermarks(&tp.topic, tp.partition, Duration::from_secs(10))?;
    let begin = from.max(low);
    let mut out = Vec::new();
    if begin >= to || begin >= high {
        return Ok((out, low));
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(begin))?;
    consumer.assign(&tpl)?;
    let mut last_progress = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                last_progress = Instant::now();
                if m.offset() < to {
                    out.push(Record {
                        tp: tp.clone(),
                        offset: m.offset(),
                        timestamp_ms: m.timestamp().to_millis(),
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().map(<[u8]>::to_vec),
                        headers: m
                            .headers()
                            .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec))).collect())
                            .unwrap_or_default(),
                    });
                }
                if m.offset() >= to - 1 {
                    break;
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => tracing::warn!(%tp, error = %e, "kafka error while auditing; retrying"),
            None => {}
        }
        if last_progress.elapsed() > KAFKA_STALL {
            return Err(Error::BrokerUnreachable {
                brokers: connection.brokers().to_string(),
                detail: format!("reading {tp} stalled for {KAFKA_STALL:?}"),
            });
        }
    }
    Ok((out, low))
}

/// Everything the audit reads before it compares: the tables, what they record, their rows.
pub(super) struct Tables {
    /// How the topics are read.
    pub connection: source::Connection,
    /// Every partition of the topics.
    pub partitions: Vec<TopicPartition>,
    /// The data table and where it is.
    pub table: DeltaTable,
    pub path: TableLocation,
    /// The dead-letter table (none until a record was rejected) and where it is.
    pub dead_table: Option<DeltaTable>,
    pub dead_path: TableLocation,
    /// The pipeline's last committed epoch (0: none, or a table written by a group).
    pub epoch: u64,
    /// The range `[start, end)` the data table recorded per partition.
    pub ranges: BTreeMap<TopicPartition, (i64, i64)>,
    /// The decoder whose rows the data table holds.
    pub decoder: Arc<crate::decode::Decoder>,
    /// `sink.outputs`' fan-out.
    pub fan_out: crate::transform::Outputs,
    /// A row per record (append, dedup), not a row per group (aggregation).
    pub per_record: bool,
    /// The columns compared with the decode of each row's record.
    pub content_cols: Vec<String>,
    /// Columns added to the table by schema evolution, and where rows begin to have them.
    pub added: Vec<(Vec<String>, AddedAt)>,
    /// The data table's rows (the columns the audit needs).
    pub data_rows: Vec<RecordBatch>,
    /// Where each data row and dead letter came from.
    pub rows: FoundOffsets,
    pub dead: FoundOffsets,
    /// Each data row's content, and each dead letter's bytes.
    pub row_content: RowContents,
    pub dead_bytes: DeadBytes,
    /// Parquet files no version references.
    pub orphan_files: Vec<String>,
    /// Offsets the pipeline skipped (`source.on_data_loss = "skip"`), as its commits record them.
    pub skipped: HashMap<TopicPartition, u64>,
    /// Partitions of matched topics the brokers no longer have (deleted): audited against the
    /// table's record alone.
    pub gone: BTreeSet<TopicPartition>,
}

/// Per partition, the offsets the data table's newest commits record as skipped
/// (`source.on_data_loss = "skip"`: Kafka deleted them before they were read).
async fn skipped_offsets(table: &DeltaTable) -> Result<HashMap<TopicPartition, u64>> {
    use futures::TryStreamExt;
    let infos: Vec<deltalake::kernel::CommitInfo> = table
        .history(Some(super::fencing::EPOCH_SCAN as usize))
        .try_collect()
        .await
        .map_err(|e| Error::Sink(format!("reading the table's history: {e}")))?;
    let mut out: HashMap<TopicPartition, u64> = HashMap::new();
    for s in infos.iter().filter_map(|i| i.info.get("exactly")?.get("skipped")?.as_array()).flatten() {
        let (Some(topic), Some(p), Some(from), Some(to)) =
            (s["topic"].as_str(), s["partition"].as_i64(), s["from"].as_i64(), s["to"].as_i64())
        else {
            continue;
        };
        *out.entry(TopicPartition::new(topic, p as i32)).or_default() += (to - from).max(0) as u64;
    }
    Ok(out)
}

impl Tables {
    /// Reads `config`'s tables and its topics' partitions; and its output tables.
    pub(super) async fn read(config: &PipelineConfig) -> Result<(Tables, Vec<OutputTable>)> {
        let (Some(path), Some(dead_path)) = (config.table_path(), config.dead_letter_path()) else {
            return Err(Error::Sink("verify audits a Delta table; this pipeline's sink is not `delta`".into()));
        };
        let src = &config.source;
        let connection = source::Connection::of(src)?;
        let partitions =
            source::preflight(&connection, src.subscription(), Duration::from_millis(src.connect_timeout_ms)).await?;
        let table = load_table(path.clone()).await?.ok_or_else(|| Error::Sink(format!("no Delta table at {path}")))?;
        let dead_table = load_table(dead_path.clone()).await?;
        let id = &config.id;
        let epoch = txn_version(&table, &path, id).await?.unwrap_or(0).max(0) as u64;
        let mut ranges = BTreeMap::new();
        for tp in &partitions {
            if let Some(range) = recorded_range(&table, &path, id, tp).await? {
                ranges.insert(tp.clone(), range);
            }
        }
        // What the data table holds: per-record rows (append, dedup), every decoded column so
        // each row can be compared with its Kafka record; or one row per group (aggregation).
        let decoder = crate::plan::Plan::new(config)?.table_decoder;
        let per_record = config.aggregate.is_none();
        let content_cols = content_columns(config, &table, &decoder)?;
        let mut data_cols: Vec<String> = Vec::new();
        if per_record {
            data_cols.extend(content_cols.iter().cloned());
            data_cols.push(EPOCH_COL.to_string());
        }
        if let Some(a) = &config.aggregate {
            data_cols.extend(a.group_by.iter().cloned());
            data_cols.extend(a.aggregates.iter().map(|s| s.column()));
            // A group's partition, when each partition's groups are its own.
            data_cols.push(crate::model::BUCKET_COL.to_string());
        }
        let added = added_columns(&table)?;
        let fan_out = crate::transform::Outputs::new(config.sink.outputs(), &decoder.schema()).map_err(Error::Sink)?;
        let mut outputs = Vec::new();
        for (o, schema) in config.sink.outputs().iter().zip(fan_out.schemas(&decoder.schema())) {
            outputs.push(OutputTable::read(config, o, &schema, &partitions).await?);
        }
        let data_files = active_files(&table)?;
        let names: Vec<&str> = data_cols.iter().map(String::as_str).collect();
        let data_rows = read_columns(&table, &data_files, &names).await?;
        let mut orphan_files = orphans(&table, &path, &data_files).await?;
        let dead_rows = match &dead_table {
            Some(t) => {
                let dead_files = active_files(t)?;
                orphan_files.extend(orphans(t, &dead_path, &dead_files).await?);
                read_columns(t, &dead_files, &[TOPIC_COL, PARTITION_COL, OFFSET_COL, "key", "value"]).await?
            }
            None => Vec::new(),
        };
        let skipped = skipped_offsets(&table).await?;
        let rows = if per_record { coordinates(&data_rows)? } else { FoundOffsets::new() };
        let dead = coordinates(&dead_rows)?;
        // Partitions of topics `source.topic_pattern` matched and the brokers no longer have:
        // the table's record of them is all there is to audit against.
        let mut gone = BTreeSet::new();
        let listed: BTreeSet<&str> = partitions.iter().map(|tp| &*tp.topic).collect();
        for tp in rows.keys().chain(dead.keys()) {
            let deleted = src.topic_pattern.as_ref().is_some_and(|p| p.matches(&tp.topic)) && !listed.contains(&*tp.topic);
            if deleted && gone.insert(tp.clone()) {
                if let Some(range) = recorded_range(&table, &path, id, tp).await? {
                    ranges.insert(tp.clone(), range);
                }
            }
        }
        let tables = Tables {
            skipped,
            gone,
            row_content: if per_record { contents(&data_rows, &content_cols)? } else { HashMap::new() },
            rows,
            dead,
            dead_bytes: dead_letter_bytes(&dead_rows)?,
            connection,
            partitions,
            table,
            path,
            dead_table,
            dead_path,
            epoch,
            ranges,
            decoder,
            fan_out,
            per_record,
            content_cols,
            added,
            data_rows,
            orphan_files,
        };
        Ok((tables, outputs))
    }

    /// Every partition of the topics, and any other partition the tables hold rows of.
    pub(super) fn partitions_seen(&self) -> Vec<TopicPartition> {
        let mut all: Vec<TopicPartition> = self.partitions.clone();
        for tp in self.rows.keys().chain(self.dead.keys()) {
            if !all.contains(tp) {
                all.push(tp.clone());
            }
        }
        all.sort();
        all
    }

    /// The records of `tp` in `[from, to)` as Kafka holds them now, and its low watermark.
    pub(super) async fn records(&self, tp: &TopicPartition, from: i64, to: i64) -> Result<(Vec<Record>, i64)> {
        let (connection, tp) = (self.connection.clone(), tp.clone());
        tokio::task::spawn_blocking(move || kafka_records(&connection, &tp, from, to))
            .await
            .map_err(|e| Error::Actor(e.to_string()))?
    }
}

/// The range `[start, end)` the data table recorded for `tp` (`None`: it never committed it).
async fn recorded_range(table: &DeltaTable, path: &TableLocation, id: &str, tp: &TopicPartition) -> Result<Option<(i64, i64)>> {
    let end = txn_version(table, path, &partition_app_id(id, tp)).await?;
    let start = txn_version(table, path, &start_app_id(id, tp)).await?;
    Ok(start.zip(end))
}

/// The columns compared with the decode of each row's record: the decoded ones, and the columns
/// the topic's writer schemas added (the decoder learns them as it reads).
fn content_columns(config: &PipelineConfig, table: &DeltaTable, decoder: &crate::decode::Decoder) -> Result<Vec<String>> {
    let mut cols: Vec<String> =
        decoder.output_schema().fields().iter().map(|f| f.name().clone()).filter(|n| n != EPOCH_COL).collect();
    if config.takes_writer_columns() {
        let snapshot = table.snapshot().map_err(|e| Error::Sink(e.to_string()))?;
        let extra: Vec<String> =
            snapshot.schema().fields().map(|f| f.name().clone()).filter(|n| n != EPOCH_COL && !cols.contains(n)).collect();
        cols.extend(extra);
    }
    Ok(cols)
}
