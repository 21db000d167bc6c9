//! The column builders decoded values go into (flat, decimal, list, map and struct columns, from
//! one recursive value type), and the Delta and Arrow types of declared fields.

use super::*;

/// One column under construction.
pub(super) enum Col {
    Str(StringBuilder),
    Long(Int64Builder),
    Int(Int32Builder),
    Double(Float64Builder),
    Float(Float32Builder),
    Bool(BooleanBuilder),
    Ts(TimestampMicrosecondBuilder),
    Date(Date32Builder),
    Bin(BinaryBuilder),
    Dec(Decimal128Builder),
    List { item: FieldRef, values: Box<Col>, offsets: Vec<i32>, nulls: NullBufferBuilder },
    Map { entries: FieldRef, keys: StringBuilder, values: Box<Col>, offsets: Vec<i32>, nulls: NullBufferBuilder },
    Struct { fields: Fields, cols: Vec<Col>, nulls: NullBufferBuilder },
}

/// One decoded value, checked before anything is appended so columns stay aligned.
pub(super) enum Val<'a> {
    Null,
    Str(Cow<'a, str>),
    Long(i64),
    Int(i32),
    Double(f64),
    Float(f32),
    Bool(bool),
    /// Days since 1970-01-01.
    Date(i32),
    Bin(&'a [u8]),
    /// Bytes decoded from the record (base64).
    Bytes(Vec<u8>),
    /// A decimal's unscaled value.
    Dec(i128),
    List(Vec<Val<'a>>),
    Map(Vec<(Cow<'a, str>, Val<'a>)>),
    Struct(Vec<Val<'a>>),
}

impl Col {
    /// A column builder for `t`, whose Arrow type is `arrow` (from [`arrow_field`]).
    pub(super) fn for_type(t: &FieldType, arrow: &DataType, rows: usize) -> Col {
        match (t, arrow) {
            // Sized for short strings: a batch's text then grows its buffer once or twice, not
            // a dozen times from StringBuilder's 1 KiB.
            (FieldType::String, _) => Col::Str(StringBuilder::with_capacity(rows, rows * 16)),
            (FieldType::Long, _) => Col::Long(Int64Builder::with_capacity(rows)),
            (FieldType::Int, _) => Col::Int(Int32Builder::with_capacity(rows)),
            (FieldType::Double, _) => Col::Double(Float64Builder::with_capacity(rows)),
            (FieldType::Float, _) => Col::Float(Float32Builder::with_capacity(rows)),
            (FieldType::Boolean, _) => Col::Bool(BooleanBuilder::with_capacity(rows)),
            (FieldType::Timestamp, _) => Col::Ts(TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC")),
            (FieldType::Date, _) => Col::Date(Date32Builder::with_capacity(rows)),
            (FieldType::Binary, _) => Col::Bin(BinaryBuilder::new()),
            // The Arrow type came from `arrow_field` of this very type: a Decimal128.
            (FieldType::Decimal { .. }, arrow) => Col::Dec(Decimal128Builder::with_capacity(rows).with_data_type(arrow.clone())),
            (FieldType::List(elem), DataType::List(item)) => Col::List {
                item: item.clone(),
                values: Box::new(Col::for_type(elem, item.data_type(), 0)),
                offsets: vec![0],
                nulls: NullBufferBuilder::new(rows),
            },
            (FieldType::Map(value), DataType::Map(entries, _)) => {
                let DataType::Struct(kv) = entries.data_type() else { unreachable!("a map's entries are a struct") };
                Col::Map {
                    entries: entries.clone(),
                    keys: StringBuilder::new(),
                    values: Box::new(Col::for_type(value, kv[1].data_type(), 0)),
                    offsets: vec![0],
                    nulls: NullBufferBuilder::new(rows),
                }
            }
            (FieldType::Struct(members), DataType::Struct(fields)) => Col::Struct {
                fields: fields.clone(),
                cols: members.iter().zip(fields.iter()).map(|(m, f)| Col::for_type(&m.kind, f.data_type(), rows)).collect(),
                nulls: NullBufferBuilder::new(rows),
            },
            (t, a) => unreachable!("{t} is not built as {a}"),
        }
    }

    pub(super) fn push(&mut self, v: Val<'_>) {
        match (self, v) {
            (Col::Str(b), Val::Str(s)) => b.append_value(s),
            (Col::Str(b), _) => b.append_null(),
            (Col::Long(b), Val::Long(x)) => b.append_value(x),
            (Col::Long(b), _) => b.append_null(),
            (Col::Int(b), Val::Int(x)) => b.append_value(x),
            (Col::Int(b), _) => b.append_null(),
            (Col::Double(b), Val::Double(x)) => b.append_value(x),
            (Col::Double(b), _) => b.append_null(),
            (Col::Float(b), Val::Float(x)) => b.append_value(x),
            (Col::Float(b), _) => b.append_null(),
            (Col::Bool(b), Val::Bool(x)) => b.append_value(x),
            (Col::Bool(b), _) => b.append_null(),
            (Col::Ts(b), Val::Long(x)) => b.append_value(x),
            (Col::Ts(b), _) => b.append_null(),
            (Col::Date(b), Val::Date(x)) => b.append_value(x),
            (Col::Date(b), _) => b.append_null(),
            (Col::Bin(b), Val::Bin(x)) => b.append_value(x),
            (Col::Bin(b), Val::Bytes(x)) => b.append_value(x),
            (Col::Bin(b), _) => b.append_null(),
            (Col::Dec(b), Val::Dec(x)) => b.append_value(x),
            (Col::Dec(b), _) => b.append_null(),
            (Col::List { values, offsets, nulls, .. }, Val::List(items)) => {
                let end = offsets.last().copied().unwrap_or(0) + items.len() as i32;
                items.into_iter().for_each(|v| values.push(v));
                offsets.push(end);
                nulls.append_non_null();
            }
            (Col::Map { keys, values, offsets, nulls, .. }, Val::Map(entries)) => {
                let end = offsets.last().copied().unwrap_or(0) + entries.len() as i32;
                for (k, v) in entries {
                    keys.append_value(k);
                    values.push(v);
                }
                offsets.push(end);
                nulls.append_non_null();
            }
            (Col::List { offsets, nulls, .. } | Col::Map { offsets, nulls, .. }, _) => {
                offsets.push(offsets.last().copied().unwrap_or(0));
                nulls.append_null();
            }
            (Col::Struct { cols, nulls, .. }, Val::Struct(vals)) => {
                cols.iter_mut().zip(vals).for_each(|(c, v)| c.push(v));
                nulls.append_non_null();
            }
            (Col::Struct { cols, nulls, .. }, _) => {
                cols.iter_mut().for_each(|c| c.push(Val::Null));
                nulls.append_null();
            }
        }
    }

    pub(super) fn finish(self) -> ArrayRef {
        match self {
            Col::Str(mut b) => Arc::new(b.finish()),
            Col::Long(mut b) => Arc::new(b.finish()),
            Col::Int(mut b) => Arc::new(b.finish()),
            Col::Double(mut b) => Arc::new(b.finish()),
            Col::Float(mut b) => Arc::new(b.finish()),
            Col::Bool(mut b) => Arc::new(b.finish()),
            Col::Ts(mut b) => Arc::new(b.finish()),
            Col::Date(mut b) => Arc::new(b.finish()),
            Col::Bin(mut b) => Arc::new(b.finish()),
            Col::Dec(mut b) => Arc::new(b.finish()),
            Col::List { item, values, offsets, mut nulls } => Arc::new(
                ListArray::try_new(item, OffsetBuffer::new(offsets.into()), values.finish(), nulls.finish())
                    .expect("list offsets built with their values"),
            ),
            Col::Map { entries, mut keys, values, offsets, mut nulls } => {
                let DataType::Struct(kv) = entries.data_type() else { unreachable!("a map's entries are a struct") };
                let kv = StructArray::try_new(kv.clone(), vec![Arc::new(keys.finish()), values.finish()], None)
                    .expect("map keys and values built together");
                Arc::new(
                    MapArray::try_new(entries, OffsetBuffer::new(offsets.into()), kv, nulls.finish(), false)
                        .expect("map offsets built with their entries"),
                )
            }
            Col::Struct { fields, cols, mut nulls } => Arc::new(
                StructArray::try_new(fields, cols.into_iter().map(Col::finish).collect(), nulls.finish())
                    .expect("struct members built row by row"),
            ),
        }
    }
}

/// The Delta type a declared type is stored as (the one Spark writes for it); `Err` for a
/// decimal Delta cannot hold or a struct naming a member twice.
pub fn delta_type(t: &FieldType) -> Result<DeltaType, String> {
    Ok(match t {
        FieldType::String => DeltaType::STRING,
        FieldType::Long => DeltaType::LONG,
        FieldType::Int => DeltaType::INTEGER,
        FieldType::Double => DeltaType::DOUBLE,
        FieldType::Float => DeltaType::FLOAT,
        FieldType::Boolean => DeltaType::BOOLEAN,
        FieldType::Timestamp => DeltaType::TIMESTAMP,
        FieldType::Date => DeltaType::DATE,
        FieldType::Binary => DeltaType::BINARY,
        FieldType::Decimal { precision, scale } => DeltaType::decimal(*precision, *scale).map_err(|e| format!("{t}: {e}"))?,
        FieldType::List(elem) => ArrayType::new(delta_type(elem)?, true).into(),
        FieldType::Map(value) => MapType::new(DeltaType::STRING, delta_type(value)?, true).into(),
        FieldType::Struct(members) => {
            let members = members.iter().map(delta_field).collect::<Result<Vec<_>, String>>()?;
            StructType::try_new(members).map_err(|e| format!("{t}: {e}"))?.into()
        }
    })
}

/// The Delta column of a declared field.
pub fn delta_field(f: &FieldConfig) -> Result<StructField, String> {
    Ok(StructField::new(&f.name, delta_type(&f.kind)?, f.nullable))
}

/// The Arrow field of a declared field: the Delta type's Arrow form, so decoded batches have
/// exactly the schema delta-rs reads the table with (list items named `element`, map entries
/// `key_value`).
pub(super) fn arrow_field(f: &FieldConfig) -> Result<Field, String> {
    (&delta_field(f)?).try_into_arrow().map_err(|e| format!("column `{}`: {e}", f.name))
}
