//! Group and dedup keys: a row's key columns encoded into one byte string (typed, so distinct
//! values never collide), decoded back for the result rows, and the bucket hash.

use super::*;

/// A value of a key column.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Scalar {
    Null,
    I64(i64),
    F64(f64),
    Bool(bool),
    Str(String),
    Bin(Vec<u8>),
}

/// A key column, downcast once per batch: [`KeyCol::encode`] appends a row's value to a key
/// (a tag byte, then the value; strings and bytes length-prefixed; null is the tag alone).
pub(super) enum KeyCol<'a> {
    I64(&'a Int64Array),
    I32(&'a Int32Array),
    Date(&'a Date32Array),
    Ts(&'a TimestampMicrosecondArray),
    F64(&'a Float64Array),
    Bool(&'a BooleanArray),
    Str(&'a StringArray),
    Bin(&'a BinaryArray),
}

impl<'a> KeyCol<'a> {
    pub(super) fn new(col: &'a ArrayRef) -> Result<KeyCol<'a>> {
        Ok(match col.data_type() {
            DataType::Int64 => KeyCol::I64(col.as_primitive()),
            DataType::Int32 => KeyCol::I32(col.as_primitive()),
            DataType::Date32 => KeyCol::Date(col.as_primitive()),
            DataType::Timestamp(TimeUnit::Microsecond, _) => KeyCol::Ts(col.as_primitive()),
            DataType::Float64 => KeyCol::F64(col.as_primitive()),
            DataType::Boolean => KeyCol::Bool(col.as_boolean()),
            DataType::Utf8 => KeyCol::Str(col.as_string()),
            DataType::Binary => KeyCol::Bin(col.as_binary()),
            other => return Err(Error::Sink(format!("cannot use a {other} column as a key"))),
        })
    }

    /// The key columns `cols` of `batch`.
    pub(super) fn of(batch: &'a RecordBatch, cols: &[usize]) -> Result<Vec<KeyCol<'a>>> {
        cols.iter().map(|c| KeyCol::new(batch.column(*c))).collect()
    }

    pub(super) fn encode(&self, i: usize, out: &mut Vec<u8>) {
        match self {
            KeyCol::I64(a) if a.is_valid(i) => push_i64(out, 1, a.value(i)),
            KeyCol::I32(a) if a.is_valid(i) => push_i64(out, 1, a.value(i) as i64),
            KeyCol::Date(a) if a.is_valid(i) => push_i64(out, 1, a.value(i) as i64),
            KeyCol::Ts(a) if a.is_valid(i) => push_i64(out, 1, a.value(i)),
            KeyCol::F64(a) if a.is_valid(i) => push_i64(out, 2, a.value(i).to_bits() as i64),
            KeyCol::Bool(a) if a.is_valid(i) => out.extend([3, u8::from(a.value(i))]),
            KeyCol::Str(a) if a.is_valid(i) => push_bytes(out, 4, a.value(i).as_bytes()),
            KeyCol::Bin(a) if a.is_valid(i) => push_bytes(out, 5, a.value(i)),
            _ => out.push(0),
        }
    }
}

pub(super) fn push_i64(out: &mut Vec<u8>, tag: u8, v: i64) {
    out.push(tag);
    out.extend(v.to_be_bytes());
}

pub(super) fn push_bytes(out: &mut Vec<u8>, tag: u8, b: &[u8]) {
    out.push(tag);
    out.extend((b.len() as u32).to_be_bytes());
    out.extend(b);
}

pub(super) fn decode_key(mut b: &[u8]) -> Vec<Scalar> {
    let mut out = Vec::new();
    let take = |b: &mut &[u8], n: usize| {
        let (h, t) = b.split_at(n);
        *b = t;
        h.to_vec()
    };
    while let Some((&tag, rest)) = b.split_first() {
        b = rest;
        out.push(match tag {
            0 => Scalar::Null,
            1 => Scalar::I64(i64::from_be_bytes(take(&mut b, 8).try_into().unwrap())),
            2 => Scalar::F64(f64::from_bits(u64::from_be_bytes(take(&mut b, 8).try_into().unwrap()))),
            3 => Scalar::Bool(take(&mut b, 1)[0] != 0),
            4 | 5 => {
                let n = u32::from_be_bytes(take(&mut b, 4).try_into().unwrap()) as usize;
                let bytes = take(&mut b, n);
                if tag == 4 {
                    Scalar::Str(String::from_utf8(bytes).unwrap_or_default())
                } else {
                    Scalar::Bin(bytes)
                }
            }
            _ => break,
        });
    }
    out
}

/// FNV-1a: a hash that never changes between versions (bucket numbers are persisted).
pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let a: ArrayRef = Arc::new(StringArray::from(vec![Some("x"), None]));
        let b: ArrayRef = Arc::new(Int64Array::from(vec![7, -3]));
        let cols = [KeyCol::new(&a).unwrap(), KeyCol::new(&b).unwrap()];
        let key = |i| {
            let mut k = Vec::new();
            cols.iter().for_each(|c| c.encode(i, &mut k));
            k
        };
        assert_eq!(decode_key(&key(0)), vec![Scalar::Str("x".into()), Scalar::I64(7)]);
        assert_eq!(decode_key(&key(1)), vec![Scalar::Null, Scalar::I64(-3)]);
        let f: ArrayRef = Arc::new(deltalake::arrow::array::Float32Array::from(vec![1.0]));
        assert!(KeyCol::new(&f).is_err(), "a float32 column is not a key");
    }
}
