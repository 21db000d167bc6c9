//! The columns the pipeline adds to every row, and why a record may be rejected.

/// Column: the record's topic.
pub const TOPIC_COL: &str = "_kafka_topic";
/// Column: the record's partition.
pub const PARTITION_COL: &str = "_kafka_partition";
/// Column: the record's offset.
pub const OFFSET_COL: &str = "_kafka_offset";
/// Column: the record's Kafka timestamp.
pub const TIMESTAMP_COL: &str = "_kafka_timestamp";
/// Column, with `decode.include_key`: the record's key bytes (Spark's `key`).
pub const KEY_COL: &str = "_kafka_key";
/// Column, with `decode.include_headers`: the record's headers, in order, repeated keys
/// included (Spark's `headers`): a list of `{key, value}`.
pub const HEADERS_COL: &str = "_kafka_headers";
/// Hidden column of decoded rows (never written to a table): the record's key bytes, kept when
/// a later stage may still dead-letter the row (`Decoder::keeping_raw`).
pub const RAW_KEY_COL: &str = "_kafka_raw_key";
/// Hidden column: the record's value bytes, kept like [`RAW_KEY_COL`].
pub const RAW_VALUE_COL: &str = "_kafka_raw_value";
/// Hidden column of decoded rows with `[upsert]` (never written): whether the record deletes its
/// key's row (a tombstone, a Debezium `d`).
pub const CHANGE_DELETE_COL: &str = "_change_delete";
/// Hidden column of decoded rows with `upsert.sequence_by`: the change's sequence (null: none,
/// a tombstone's).
pub const CHANGE_SEQUENCE_COL: &str = "_change_sequence";
/// Column: the epoch that committed the row.
pub const EPOCH_COL: &str = "_epoch";
/// Dead-letter column: why the record was rejected.
pub const REASON_COL: &str = "reason";

/// Column of the result table: the hash bucket of the group key (the table's partition column).
pub const BUCKET_COL: &str = "_bucket";

/// Why a record was rejected, as a small fixed category: the `reason` label of
/// `exactly_dead_letters_total` (the dead letter's `reason` text says the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rejection {
    /// Larger than `decode.max_record_bytes`.
    TooLarge,
    /// Key or value is not UTF-8 where text is expected.
    NotUtf8,
    /// The value does not parse as JSON.
    InvalidJson,
    /// The JSON value is not an object.
    NotObject,
    /// The value is null (a tombstone) where a JSON object is expected.
    NullValue,
    /// A non-nullable field is missing.
    MissingField,
    /// A non-nullable field is null.
    NullField,
    /// A field holds another type than declared.
    WrongType,
    /// Too late for the dedup watermark, or without an event time.
    Late,
    /// An event time further ahead of the record's Kafka timestamp than `dedup.max_future_ms`.
    Future,
    /// The value is not an Avro datum of its framing and writer schema.
    InvalidAvro,
    /// The value is not a Protobuf message of its framing and writer schema.
    InvalidProtobuf,
    /// The value names a writer schema (id or fingerprint) that is not known.
    UnknownSchema,
    /// A `[transform]` expression failed on the row (a cast, a division by zero).
    Transform,
    /// With `[upsert]`: not a change the table can take — not a Debezium change event, an
    /// operation other than create/read/update/delete, a tombstone whose Kafka key does not
    /// give the key columns, no `upsert.sequence_by` value.
    NotAChange,
}

impl Rejection {
    /// Every category, in a fixed order.
    pub const ALL: [Rejection; 15] = [
        Rejection::TooLarge,
        Rejection::NotUtf8,
        Rejection::InvalidJson,
        Rejection::NotObject,
        Rejection::NullValue,
        Rejection::MissingField,
        Rejection::NullField,
        Rejection::WrongType,
        Rejection::Late,
        Rejection::Future,
        Rejection::InvalidAvro,
        Rejection::InvalidProtobuf,
        Rejection::UnknownSchema,
        Rejection::Transform,
        Rejection::NotAChange,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::TooLarge => "too_large",
            Rejection::NotUtf8 => "not_utf8",
            Rejection::InvalidJson => "invalid_json",
            Rejection::NotObject => "not_object",
            Rejection::NullValue => "null_value",
            Rejection::MissingField => "missing_field",
            Rejection::NullField => "null_field",
            Rejection::WrongType => "wrong_type",
            Rejection::Late => "late",
            Rejection::Future => "future",
            Rejection::InvalidAvro => "invalid_avro",
            Rejection::InvalidProtobuf => "invalid_protobuf",
            Rejection::UnknownSchema => "unknown_schema",
            Rejection::Transform => "transform",
            Rejection::NotAChange => "not_a_change",
        }
    }
}
