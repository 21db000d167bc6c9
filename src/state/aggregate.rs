//! Keyed aggregation: each group's running state in RocksDB, the epoch's groups combined with
//! it, and the result rows of the buckets an epoch touched.

use super::*;

/// A number in an aggregate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Num {
    I(i64),
    F(f64),
}

/// The state of one group.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct AggState {
    pub(super) count: i64,
    pub(super) vals: Vec<Option<Num>>,
}

impl AggState {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = self.count.to_be_bytes().to_vec();
        for v in &self.vals {
            match v {
                None => out.extend([0u8; 9]),
                Some(Num::I(x)) => {
                    out.push(1);
                    out.extend(x.to_be_bytes());
                }
                Some(Num::F(x)) => {
                    out.push(2);
                    out.extend(x.to_bits().to_be_bytes());
                }
            }
        }
        out
    }

    pub(super) fn decode(b: &[u8], n: usize) -> AggState {
        let count = i64::from_be_bytes(b[..8].try_into().unwrap());
        let vals = (0..n)
            .map(|i| {
                let at = 8 + i * 9;
                let raw: [u8; 8] = b[at + 1..at + 9].try_into().unwrap();
                match b[at] {
                    1 => Some(Num::I(i64::from_be_bytes(raw))),
                    2 => Some(Num::F(f64::from_bits(u64::from_be_bytes(raw)))),
                    _ => None,
                }
            })
            .collect();
        AggState { count, vals }
    }
}

/// A column aggregated by value, downcast once per batch (`None` for a type no aggregate reads:
/// its values count as null).
pub(super) enum NumCol<'a> {
    I64(&'a Int64Array),
    I32(&'a Int32Array),
    Ts(&'a TimestampMicrosecondArray),
    F64(&'a Float64Array),
    F32(&'a Float32Array),
}

impl<'a> NumCol<'a> {
    pub(super) fn new(col: &'a ArrayRef) -> Option<NumCol<'a>> {
        Some(match col.data_type() {
            DataType::Int64 => NumCol::I64(col.as_primitive()),
            DataType::Int32 => NumCol::I32(col.as_primitive()),
            DataType::Timestamp(TimeUnit::Microsecond, _) => NumCol::Ts(col.as_primitive()),
            DataType::Float64 => NumCol::F64(col.as_primitive()),
            DataType::Float32 => NumCol::F32(col.as_primitive()),
            _ => return None,
        })
    }

    pub(super) fn get(&self, i: usize) -> Option<Num> {
        Some(match self {
            NumCol::I64(a) if a.is_valid(i) => Num::I(a.value(i)),
            NumCol::I32(a) if a.is_valid(i) => Num::I(a.value(i) as i64),
            NumCol::Ts(a) if a.is_valid(i) => Num::I(a.value(i)),
            NumCol::F64(a) if a.is_valid(i) => Num::F(a.value(i)),
            NumCol::F32(a) if a.is_valid(i) => Num::F(a.value(i) as f64),
            _ => return None,
        })
    }
}

pub(super) fn combine(op: AggregateOp, acc: Option<Num>, v: Option<Num>) -> Option<Num> {
    let Some(v) = v else { return acc };
    let Some(a) = acc else { return Some(v) };
    Some(match (op, a, v) {
        (AggregateOp::Sum, Num::I(a), Num::I(b)) => Num::I(a.wrapping_add(b)),
        (AggregateOp::Sum, Num::F(a), Num::F(b)) => Num::F(a + b),
        (AggregateOp::Min, Num::I(a), Num::I(b)) => Num::I(a.min(b)),
        (AggregateOp::Min, Num::F(a), Num::F(b)) => Num::F(a.min(b)),
        (AggregateOp::Max, Num::I(a), Num::I(b)) => Num::I(a.max(b)),
        (AggregateOp::Max, Num::F(a), Num::F(b)) => Num::F(a.max(b)),
        (_, a, _) => a,
    })
}

/// The type an aggregate column has in the result table.
pub(super) fn agg_type(op: AggregateOp, field: Option<&DataType>) -> DataType {
    match (op, field) {
        (AggregateOp::Count, _) => DataType::Int64,
        (_, Some(DataType::Float64 | DataType::Float32)) => DataType::Float64,
        (AggregateOp::Min | AggregateOp::Max, Some(t @ DataType::Timestamp(..))) => t.clone(),
        _ => DataType::Int64,
    }
}

/// The result table's schema (without `_epoch`, which the sink adds): group columns, aggregate
/// columns, `_bucket`.
/// `Err` names a group column the rows do not have.
pub fn result_schema(decoded: &Schema, config: &AggregateConfig) -> std::result::Result<SchemaRef, String> {
    let mut fields: Vec<Field> = config
        .group_by
        .iter()
        .map(|g| {
            Ok(decoded
                .field_with_name(g)
                .map_err(|_| format!("names {g:?}, which is not a decoded column"))?
                .clone()
                .with_nullable(true))
        })
        .collect::<std::result::Result<_, String>>()?;
    for a in &config.aggregates {
        let ft = a.field.as_ref().and_then(|f| decoded.field_with_name(f).ok()).map(|f| f.data_type().clone());
        fields.push(Field::new(a.column(), agg_type(a.op, ft.as_ref()), a.op != AggregateOp::Count));
    }
    fields.push(Field::new(BUCKET_COL, DataType::Int32, false));
    Ok(Arc::new(Schema::new(fields)))
}

pub(super) fn build_column(t: &DataType, vals: impl Iterator<Item = Scalar>) -> Result<ArrayRef> {
    Ok(match t {
        DataType::Int64 => {
            let mut b = Int64Builder::new();
            vals.for_each(|v| b.append_option(if let Scalar::I64(x) = v { Some(x) } else { None }));
            Arc::new(b.finish())
        }
        DataType::Int32 => {
            let mut b = Int32Builder::new();
            vals.for_each(|v| b.append_option(if let Scalar::I64(x) = v { Some(x as i32) } else { None }));
            Arc::new(b.finish())
        }
        DataType::Date32 => {
            let mut b = Date32Builder::new();
            vals.for_each(|v| b.append_option(if let Scalar::I64(x) = v { Some(x as i32) } else { None }));
            Arc::new(b.finish())
        }
        DataType::Float64 => {
            let mut b = Float64Builder::new();
            vals.for_each(|v| b.append_option(if let Scalar::F64(x) = v { Some(x) } else { None }));
            Arc::new(b.finish())
        }
        DataType::Boolean => {
            let mut b = BooleanBuilder::new();
            vals.for_each(|v| b.append_option(if let Scalar::Bool(x) = v { Some(x) } else { None }));
            Arc::new(b.finish())
        }
        DataType::Utf8 => {
            let mut b = StringBuilder::new();
            vals.for_each(|v| b.append_option(if let Scalar::Str(x) = v { Some(x) } else { None }));
            Arc::new(b.finish())
        }
        DataType::Binary => {
            let mut b = BinaryBuilder::new();
            vals.for_each(|v| b.append_option(if let Scalar::Bin(x) = v { Some(x) } else { None }));
            Arc::new(b.finish())
        }
        DataType::Timestamp(TimeUnit::Microsecond, tz) => {
            let mut b = TimestampMicrosecondBuilder::new();
            vals.for_each(|v| b.append_option(if let Scalar::I64(x) = v { Some(x) } else { None }));
            Arc::new(b.finish().with_timezone_opt(tz.clone()))
        }
        other => return Err(Error::Sink(format!("cannot build a {other} result column"))),
    })
}

impl Processor {
    pub(super) fn aggregate(&self, a: &Agg, epoch: u64, rows: &[RecordBatch], changes: &mut StateChanges) -> Result<Output> {
        let _ = epoch;
        // The epoch's groups: full key (bucket ++ group values) -> slot in `keys` / `states`.
        // Rows find their group by hash with one reused key buffer; a group's key is copied,
        // and its stored state read, only when the epoch first meets it.
        let mut slot_of: HashMap<Box<[u8]>, usize, foldhash::fast::RandomState> = HashMap::default();
        let mut keys: Vec<Box<[u8]>> = Vec::new();
        let mut states: Vec<(AggState, bool)> = Vec::new();
        let mut key = Vec::with_capacity(64);
        let mut slots = Vec::new();
        for batch in rows {
            let group = KeyCol::of(batch, &a.group)?;
            let values: Vec<Option<NumCol>> = a
                .aggs
                .iter()
                .map(|(op, f)| f.filter(|_| *op != AggregateOp::Count).and_then(|f| NumCol::new(batch.column(f))))
                .collect();
            let first_new = keys.len();
            slots.clear();
            for i in 0..batch.num_rows() {
                key.clear();
                key.extend([0, 0]);
                for c in &group {
                    c.encode(i, &mut key);
                }
                let bucket = (a.base as u64 + fnv1a(&key[2..]) % a.buckets as u64) as u16;
                key[..2].copy_from_slice(&bucket.to_be_bytes());
                let slot = match slot_of.get(key.as_slice()) {
                    Some(s) => *s,
                    None => {
                        let s = keys.len();
                        keys.push(key.as_slice().into());
                        slot_of.insert(key.as_slice().into(), s);
                        s
                    }
                };
                slots.push(slot);
            }
            let fresh: Vec<Vec<u8>> = keys[first_new..].iter().map(|k| k.to_vec()).collect();
            for v in self.store.agg_get(&fresh)? {
                states.push(match v {
                    Some(b) => (AggState::decode(&b, a.aggs.len()), false),
                    None => (AggState { count: 0, vals: vec![None; a.aggs.len()] }, true),
                });
            }
            for (i, slot) in slots.iter().enumerate() {
                let (state, _) = &mut states[*slot];
                state.count += 1;
                for (j, col) in values.iter().enumerate() {
                    if let Some(col) = col {
                        state.vals[j] = combine(a.aggs[j].0, state.vals[j], col.get(i));
                    }
                }
            }
        }
        let updated: BTreeMap<Vec<u8>, (AggState, bool)> = keys.into_iter().map(Vec::from).zip(states).collect();
        let touched: BTreeSet<u16> = updated.keys().map(|k| u16::from_be_bytes([k[0], k[1]])).collect();
        changes.agg_put = updated.iter().map(|(k, (s, new))| (k.clone(), s.encode(), *new)).collect();
        // The rows to write: the stored state of every key in the affected buckets, with this
        // epoch's updates applied over it.
        let prefixes: Vec<Vec<u8>> = match a.mode {
            OutputMode::Complete => vec![Vec::new()],
            OutputMode::Update => touched.iter().map(|b| b.to_be_bytes().to_vec()).collect(),
        };
        let mut current: BTreeMap<Vec<u8>, AggState> = BTreeMap::new();
        for p in &prefixes {
            for (k, v) in self.store.agg_scan(p)? {
                current.insert(k, AggState::decode(&v, a.aggs.len()));
            }
        }
        for (k, (s, _)) in updated {
            current.insert(k, s);
        }
        let rows = self.result_rows(a, &current)?;
        Ok(Output::Replace {
            buckets: match a.mode {
                OutputMode::Complete => None,
                OutputMode::Update => Some(touched.iter().map(|b| *b as u32).collect()),
            },
            rows: if rows.num_rows() > 0 { vec![rows] } else { Vec::new() },
            mode: a.mode,
        })
    }

    pub(super) fn result_rows(&self, a: &Agg, states: &BTreeMap<Vec<u8>, AggState>) -> Result<RecordBatch> {
        let schema = &a.schema;
        let mut cols: Vec<ArrayRef> = Vec::new();
        let keys: Vec<(u16, Vec<Scalar>)> =
            states.keys().map(|k| (u16::from_be_bytes([k[0], k[1]]), decode_key(&k[2..]))).collect();
        for (gi, _) in a.group.iter().enumerate() {
            let f = schema.field(gi);
            let vals = keys.iter().map(|(_, k)| k.get(gi).cloned().unwrap_or(Scalar::Null));
            cols.push(build_column(f.data_type(), vals)?);
        }
        for (j, (op, _)) in a.aggs.iter().enumerate() {
            let f = schema.field(a.group.len() + j);
            let vals = states.values().map(|s| match op {
                AggregateOp::Count => Scalar::I64(s.count),
                _ => match s.vals[j] {
                    None => Scalar::Null,
                    Some(Num::I(x)) => Scalar::I64(x),
                    Some(Num::F(x)) => Scalar::F64(x),
                },
            });
            cols.push(build_column(f.data_type(), vals)?);
        }
        cols.push(Arc::new(Int32Array::from(keys.iter().map(|(b, _)| *b as i32).collect::<Vec<_>>())));
        RecordBatch::try_new(schema.clone(), cols).map_err(|e| Error::Sink(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agg_state_round_trips() {
        let s = AggState { count: 3, vals: vec![Some(Num::I(-4)), None, Some(Num::F(2.5))] };
        assert_eq!(AggState::decode(&s.encode(), 3), s);
    }
}
