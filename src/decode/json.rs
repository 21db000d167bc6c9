//! The JSON format: a record's value is a JSON object decoded against `decode.fields`.
//!
//! The fast path reads the declared keys straight into typed values in one pass, borrowing the
//! text (nested and decimal values as their exact text). Whatever it does not take (bad JSON, a
//! wrong type, a missing field) goes through the general path, which reads each declared
//! member's text and says why, naming the value's place. Nested values and decimals are decoded
//! from their text by [`typed`] on both paths, so both accept exactly the same records.

use std::borrow::Cow;

use serde_json::value::RawValue;
use serde_json::Value;

use self::fast::Scalar;
use super::{truncate, Rejected, Rejection, Val};
use crate::config::{FieldConfig, FieldType};

/// The fast path's per-record scratch: one slot per declared field.
pub(super) type Slots<'a> = Vec<Option<Scalar<'a>>>;

/// The values of `fields` in the JSON object `text`, into `vals`, or why it cannot be decoded.
pub(super) fn values<'a>(
    fields: &[FieldConfig],
    text: &'a str,
    vals: &mut Vec<Val<'a>>,
    slots: &mut Slots<'a>,
) -> Result<(), Rejected> {
    if fast::read_object(text, fields, slots).is_ok()
        && fields.iter().zip(slots.iter_mut()).all(|(f, slot)| match scalar_value(f, slot.take()) {
            Some(v) => {
                vals.push(v);
                true
            }
            None => false,
        })
    {
        return Ok(());
    }
    vals.clear();
    let doc =
        serde_json::from_str::<&RawValue>(text).map_err(|e| (Rejection::InvalidJson, format!("value is not valid JSON: {e}")))?;
    if !doc.get().starts_with('{') {
        let got = serde_json::from_str::<Value>(doc.get()).map_or("invalid", |v| kind(&v));
        return Err((Rejection::NotObject, format!("expected a JSON object, got {got}")));
    }
    let mut members = Vec::new();
    fast::read_members(doc.get(), fields, &mut members)
        .map_err(|e| (Rejection::InvalidJson, format!("value is not valid JSON: {e}")))?;
    for (f, raw) in fields.iter().zip(members) {
        vals.push(typed(&f.kind, f.nullable, raw, Path::Field(&f.name))?);
    }
    Ok(())
}

/// The value of column `name` of type `ty` from its JSON text `raw` (not nullable).
pub(super) fn typed_column<'a>(ty: &FieldType, raw: &'a RawValue, name: &str) -> Result<Val<'a>, Rejected> {
    typed(ty, false, Some(raw), Path::Field(name))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Where a value sits in a record, for reasons: `a`, `a.b`, `a.b[2]`, `a["k"]`. Built only
/// when a reason is written.
#[derive(Clone, Copy)]
enum Path<'p> {
    Field(&'p str),
    Member(&'p Path<'p>, &'p str),
    Index(&'p Path<'p>, usize),
    Key(&'p Path<'p>, &'p str),
}

impl std::fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Field(name) => f.write_str(name),
            Path::Member(p, name) => write!(f, "{p}.{name}"),
            Path::Index(p, i) => write!(f, "{p}[{i}]"),
            Path::Key(p, k) => write!(f, "{p}[{k:?}]"),
        }
    }
}

/// The value of `raw` (absent: `None`) as `kind`, or why it is not one. Nested values are read
/// from their text, so a decimal anywhere keeps every digit.
fn typed<'a>(ty: &FieldType, nullable: bool, raw: Option<&'a RawValue>, at: Path<'_>) -> Result<Val<'a>, Rejected> {
    let raw = match raw {
        Some(r) if r.get() != "null" => r,
        _ if nullable => return Ok(Val::Null),
        None => return Err((Rejection::MissingField, format!("missing field `{at}`"))),
        Some(_) => return Err((Rejection::NullField, format!("field `{at}` is null but not nullable"))),
    };
    let wrong = |want: &str| {
        let got = serde_json::from_str::<Value>(raw.get()).map_or("invalid", |v| kind(&v));
        (Rejection::WrongType, format!("field `{at}`: expected {want}, got {got} {}", truncate(raw.get(), 40)))
    };
    Ok(match ty {
        FieldType::Decimal { precision, scale } => {
            let text = raw.get();
            let digits = match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
                Some(quoted) => quoted,
                None => text,
            };
            match decimal(digits, *precision, *scale) {
                Ok(x) => Val::Dec(x),
                Err(why) => {
                    let want = format!("decimal({precision}, {scale})");
                    return Err((Rejection::WrongType, format!("field `{at}`: {} {why} for {want}", truncate(text, 40))));
                }
            }
        }
        FieldType::List(elem) => {
            let items: Vec<&'a RawValue> = serde_json::from_str(raw.get()).map_err(|_| wrong("array"))?;
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                out.push(typed(elem, true, Some(item), Path::Index(&at, i))?);
            }
            Val::List(out)
        }
        FieldType::Map(value) => {
            let entries = fast::read_entries(raw.get()).map_err(|_| wrong("object (a map)"))?;
            let mut out: Vec<(Cow<'a, str>, Val<'a>)> = Vec::with_capacity(entries.len());
            for (k, v) in entries {
                let v = typed(value, true, Some(v), Path::Key(&at, &k))?;
                match out.iter_mut().find(|(seen, _)| *seen == k) {
                    Some(slot) => slot.1 = v, // the last of a repeated key wins, as for fields
                    None => out.push((k, v)),
                }
            }
            Val::Map(out)
        }
        FieldType::Struct(members) => {
            let mut slots = Vec::new();
            fast::read_members(raw.get(), members, &mut slots).map_err(|_| wrong("object"))?;
            let mut out = Vec::with_capacity(members.len());
            for (m, slot) in members.iter().zip(slots) {
                out.push(typed(&m.kind, m.nullable, slot, Path::Member(&at, &m.name))?);
            }
            Val::Struct(out)
        }
        scalar => {
            let v: Value = serde_json::from_str(raw.get()).map_err(|_| wrong(&scalar.to_string()))?;
            scalar_json(scalar, &v, at)?
        }
    })
}

/// A scalar type's value from a parsed, non-null JSON value.
fn scalar_json(t: &FieldType, v: &Value, at: Path<'_>) -> Result<Val<'static>, Rejected> {
    let wrong = |want: &str| {
        (Rejection::WrongType, format!("field `{at}`: expected {want}, got {} {}", kind(v), truncate(&v.to_string(), 40)))
    };
    Ok(match t {
        FieldType::String => Val::Str(Cow::Owned(v.as_str().ok_or_else(|| wrong("string"))?.to_owned())),
        FieldType::Long => Val::Long(v.as_i64().ok_or_else(|| wrong("long"))?),
        FieldType::Int => Val::Int(v.as_i64().and_then(|x| i32::try_from(x).ok()).ok_or_else(|| wrong("int"))?),
        FieldType::Double => Val::Double(v.as_f64().ok_or_else(|| wrong("double"))?),
        FieldType::Float => Val::Float(v.as_f64().ok_or_else(|| wrong("float"))? as f32),
        FieldType::Boolean => Val::Bool(v.as_bool().ok_or_else(|| wrong("boolean"))?),
        FieldType::Date => {
            Val::Date(v.as_str().and_then(iso_date).ok_or_else(|| wrong("date (an ISO 8601 string like 2026-11-26)"))?)
        }
        FieldType::Binary => Val::Bytes(v.as_str().and_then(base64).ok_or_else(|| wrong("binary (a base64 string)"))?),
        FieldType::Timestamp => match v.as_str() {
            Some(text) => Val::Long(rfc3339_micros(text).ok_or_else(|| wrong(TIMESTAMP_FORMS))?),
            None => {
                let ms = v.as_i64().ok_or_else(|| wrong(TIMESTAMP_FORMS))?;
                Val::Long(ms.checked_mul(1000).ok_or_else(|| wrong("timestamp in range"))?)
            }
        },
        nested => unreachable!("{nested} is read by `typed`"),
    })
}

/// The unscaled value of decimal text (`-12.30`, `1.5e3`) at `scale`, or why it does not fit
/// `decimal(precision, scale)` exactly.
fn decimal(text: &str, precision: u8, scale: u8) -> Result<i128, &'static str> {
    let t = text.trim();
    let (negative, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (mantissa, exp) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], t[i + 1..].parse::<i32>().map_err(|_| "is not a number")?),
        None => (t, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return Err("is not a number");
    }
    // value = digits × 10^(exp − frac.len()); unscaled = value × 10^scale.
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    let shift = exp as i64 - frac.len() as i64 + scale as i64;
    let (kept, dropped) = if shift >= 0 {
        (digits, "")
    } else {
        let cut = digits.len().saturating_sub((-shift) as usize);
        digits.split_at(cut)
    };
    if dropped.bytes().any(|b| b != b'0') {
        return Err("has more fraction digits than the scale");
    }
    let zeros = shift.max(0) as usize;
    if kept.len() + zeros > precision as usize && !kept.is_empty() {
        return Err("has more digits than the precision allows");
    }
    let mut x: i128 = if kept.is_empty() { 0 } else { kept.parse().map_err(|_| "has more digits than the precision allows")? };
    for _ in 0..zeros {
        x = x.checked_mul(10).ok_or("has more digits than the precision allows")?;
    }
    Ok(if negative { -x } else { x })
}

/// Days since 1970-01-01 of an ISO 8601 calendar date (`2026-11-26`); `None` for anything else,
/// an impossible date (`2026-02-30`) included.
fn iso_date(text: &str) -> Option<i32> {
    let d = chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d").ok()?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    i32::try_from((d - epoch).num_days()).ok()
}

/// The bytes of a base64 string (RFC 4648 standard alphabet, with or without `=` padding);
/// `None` for any other character or a length no encoding has.
pub(super) fn base64(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let body = text.trim_end_matches('=').as_bytes();
    let padded = text.len() != body.len();
    if text.len() - body.len() > 2 || body.len() % 4 == 1 || (padded && text.len() % 4 != 0) {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    for chunk in body.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= digit(*c)? << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    Some(out)
}

/// What a `timestamp` field takes, for dead-letter reasons.
const TIMESTAMP_FORMS: &str = "timestamp (epoch milliseconds, or an RFC 3339 / ISO 8601 string like 2026-11-26T12:00:00.123456Z)";

/// Microseconds since the epoch of an RFC 3339 timestamp (`2026-11-26T12:00:00.123456Z`,
/// `…+02:00`; a space for the `T` is accepted, as ISO 8601 writers often use it). Digits past
/// the microsecond are truncated; `None` when the text is no such timestamp.
pub(super) fn rfc3339_micros(text: &str) -> Option<i64> {
    let t = chrono::DateTime::parse_from_rfc3339(text.trim())
        .or_else(|_| chrono::DateTime::parse_from_str(text.trim(), "%Y-%m-%d %H:%M:%S%.f%:z"))
        .ok()?;
    Some(t.timestamp_micros())
}

/// A declared field's value from the fast path's scalar, or `None` when the general path must
/// look at the record (missing, null, or of another type).
fn scalar_value<'a>(f: &FieldConfig, v: Option<Scalar<'a>>) -> Option<Val<'a>> {
    let long = |v: &Scalar<'_>| match *v {
        Scalar::I64(x) => Some(x),
        Scalar::U64(x) => i64::try_from(x).ok(),
        _ => None,
    };
    Some(match (&f.kind, v) {
        (_, None | Some(Scalar::Null)) => f.nullable.then_some(Val::Null)?,
        (t, Some(Scalar::Raw(raw))) => typed(t, f.nullable, Some(raw), Path::Field(&f.name)).ok()?,
        (FieldType::String, Some(Scalar::Str(s))) => Val::Str(s),
        (FieldType::Long, Some(v)) => Val::Long(long(&v)?),
        (FieldType::Int, Some(v)) => Val::Int(i32::try_from(long(&v)?).ok()?),
        (FieldType::Double, Some(Scalar::I64(x))) => Val::Double(x as f64),
        (FieldType::Double, Some(Scalar::U64(x))) => Val::Double(x as f64),
        (FieldType::Double, Some(Scalar::F64(x))) => Val::Double(x),
        (FieldType::Float, Some(Scalar::I64(x))) => Val::Float(x as f32),
        (FieldType::Float, Some(Scalar::U64(x))) => Val::Float(x as f32),
        (FieldType::Float, Some(Scalar::F64(x))) => Val::Float(x as f32),
        (FieldType::Boolean, Some(Scalar::Bool(b))) => Val::Bool(b),
        (FieldType::Timestamp, Some(Scalar::Str(s))) => Val::Long(rfc3339_micros(&s)?),
        (FieldType::Date, Some(Scalar::Str(s))) => Val::Date(iso_date(&s)?),
        (FieldType::Binary, Some(Scalar::Str(s))) => Val::Bytes(base64(&s)?),
        (FieldType::Timestamp, Some(v)) => Val::Long(long(&v)?.checked_mul(1000)?),
        _ => return None,
    })
}

/// Every entry of one JSON object, keys decoded, values as text, in order.
pub(super) fn entries(text: &str) -> Result<Vec<(Cow<'_, str>, &RawValue)>, serde_json::Error> {
    fast::read_entries(text)
}

/// The fast JSON path: one pass over an object's text, keeping only the declared keys' scalar
/// values (strings borrowed when they have no escapes) and the text of nested or decimal
/// values, skipping everything else unparsed into values.
mod fast {
    use std::borrow::Cow;
    use std::fmt;

    use serde::de::{DeserializeSeed, Deserializer, Error, IgnoredAny, MapAccess, Visitor};
    use serde_json::value::RawValue;

    use crate::config::{FieldConfig, FieldType};

    /// A JSON scalar, or the text of a value read later by its declared type.
    pub enum Scalar<'a> {
        Null,
        Bool(bool),
        I64(i64),
        U64(u64),
        F64(f64),
        Str(Cow<'a, str>),
        Raw(&'a RawValue),
    }

    /// Whether a field's value is kept as text (nested values, and decimals, whose digits a
    /// float would lose).
    fn as_text(t: &FieldType) -> bool {
        matches!(t, FieldType::Decimal { .. } | FieldType::List(_) | FieldType::Map(_) | FieldType::Struct(_))
    }

    /// Reads one JSON object: `slots[i]` gets the value of `fields[i]`'s key (last one wins, as
    /// in `serde_json::Value`), `None` when absent. Fails on anything else: not an object, a
    /// declared scalar key holding an array or object, invalid JSON, trailing text.
    pub fn read_object<'a>(
        text: &'a str,
        fields: &[FieldConfig],
        slots: &mut Vec<Option<Scalar<'a>>>,
    ) -> Result<(), serde_json::Error> {
        read(text, fields, slots, false)
    }

    /// [`read_object`], keeping every declared value as text when `all_text` is set.
    fn read<'a>(
        text: &'a str,
        fields: &[FieldConfig],
        slots: &mut Vec<Option<Scalar<'a>>>,
        all_text: bool,
    ) -> Result<(), serde_json::Error> {
        slots.clear();
        slots.resize_with(fields.len(), || None);
        let mut de = serde_json::Deserializer::from_str(text);
        (&mut de).deserialize_map(Object { fields, slots, all_text })?;
        de.end()
    }

    /// Reads one JSON object's declared members as text: `slots[i]` gets `fields[i]`'s value
    /// (last one wins), `None` when absent.
    pub fn read_members<'a>(
        text: &'a str,
        fields: &[FieldConfig],
        slots: &mut Vec<Option<&'a RawValue>>,
    ) -> Result<(), serde_json::Error> {
        let mut all = Vec::with_capacity(fields.len());
        read(text, fields, &mut all, true)?;
        slots.clear();
        slots.extend(all.into_iter().map(|s| match s {
            Some(Scalar::Raw(raw)) => Some(raw),
            _ => None,
        }));
        Ok(())
    }

    /// Every entry of one JSON object, keys decoded, values as text, in order.
    pub fn read_entries(text: &str) -> Result<Vec<(Cow<'_, str>, &RawValue)>, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(text);
        let out = (&mut de).deserialize_map(Entries)?;
        de.end()?;
        Ok(out)
    }

    struct Entries;

    impl<'de> Visitor<'de> for Entries {
        type Value = Vec<(Cow<'de, str>, &'de RawValue)>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(key) = map.next_key_seed(Text)? {
                out.push((key, map.next_value::<&'de RawValue>()?));
            }
            Ok(out)
        }
    }

    /// A key as text, borrowed when it has no escapes.
    struct Text;

    impl<'de> DeserializeSeed<'de> for Text {
        type Value = Cow<'de, str>;

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
            d.deserialize_str(self)
        }
    }

    impl<'de> Visitor<'de> for Text {
        type Value = Cow<'de, str>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a key")
        }
        fn visit_borrowed_str<E: Error>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
            Ok(Cow::Borrowed(v))
        }
        fn visit_str<E: Error>(self, v: &str) -> Result<Cow<'de, str>, E> {
            Ok(Cow::Owned(v.to_owned()))
        }
    }

    struct Object<'s, 'a> {
        fields: &'s [FieldConfig],
        slots: &'s mut Vec<Option<Scalar<'a>>>,
        all_text: bool,
    }

    impl<'de> Visitor<'de> for Object<'_, 'de> {
        type Value = ();

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            // Producers write the keys in one order, usually the declared one: the field after
            // the last one found is tried first.
            let mut next = 0;
            while let Some(key) = map.next_key_seed(Key { fields: self.fields, first: next })? {
                if let Some(i) = key {
                    next = i + 1;
                }
                match key {
                    Some(i) if self.all_text || as_text(&self.fields[i].kind) => {
                        self.slots[i] = Some(Scalar::Raw(map.next_value::<&'de RawValue>()?))
                    }
                    Some(i) => self.slots[i] = Some(map.next_value_seed(ScalarSeed)?),
                    None => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(())
        }
    }

    /// A key, as the index of the declared field it names; `fields[first]` is tried first.
    struct Key<'s> {
        fields: &'s [FieldConfig],
        first: usize,
    }

    impl<'de> DeserializeSeed<'de> for Key<'_> {
        type Value = Option<usize>;

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
            d.deserialize_str(self)
        }
    }

    impl<'de> Visitor<'de> for Key<'_> {
        type Value = Option<usize>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a key")
        }

        fn visit_str<E: Error>(self, v: &str) -> Result<Option<usize>, E> {
            if self.fields.get(self.first).is_some_and(|f| f.name == v) {
                return Ok(Some(self.first));
            }
            Ok(self.fields.iter().position(|f| f.name == v))
        }
    }

    struct ScalarSeed;

    impl<'de> DeserializeSeed<'de> for ScalarSeed {
        type Value = Scalar<'de>;

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Scalar<'de>, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for ScalarSeed {
        type Value = Scalar<'de>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON scalar")
        }
        fn visit_unit<E: Error>(self) -> Result<Scalar<'de>, E> {
            Ok(Scalar::Null)
        }
        fn visit_bool<E: Error>(self, v: bool) -> Result<Scalar<'de>, E> {
            Ok(Scalar::Bool(v))
        }
        fn visit_i64<E: Error>(self, v: i64) -> Result<Scalar<'de>, E> {
            Ok(Scalar::I64(v))
        }
        fn visit_u64<E: Error>(self, v: u64) -> Result<Scalar<'de>, E> {
            Ok(Scalar::U64(v))
        }
        fn visit_f64<E: Error>(self, v: f64) -> Result<Scalar<'de>, E> {
            Ok(Scalar::F64(v))
        }
        fn visit_borrowed_str<E: Error>(self, v: &'de str) -> Result<Scalar<'de>, E> {
            Ok(Scalar::Str(Cow::Borrowed(v)))
        }
        fn visit_str<E: Error>(self, v: &str) -> Result<Scalar<'de>, E> {
            Ok(Scalar::Str(Cow::Owned(v.to_owned())))
        }
        fn visit_string<E: Error>(self, v: String) -> Result<Scalar<'de>, E> {
            Ok(Scalar::Str(Cow::Owned(v)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::rec;
    use super::super::Decoder;
    use super::*;

    #[test]
    fn binary_from_base64_strings() {
        assert_eq!(base64("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(base64("aGVsbG8").as_deref(), Some(&b"hello"[..]));
        assert_eq!(base64("").as_deref(), Some(&b""[..]));
        assert_eq!(base64("AP8=").as_deref(), Some(&[0u8, 255][..]));
        assert_eq!(base64("+/+/").as_deref(), Some(&[0xfb, 0xff, 0xbf][..]));
        for bad in ["a", "aGVsbG8===", "aGV*bG8=", "aGVsbG8=x", "aGVsbG8=="] {
            assert_eq!(base64(bad), None, "{bad}");
        }
        let config: crate::config::DecodeConfig = toml::from_str(
            r#"format = "json"
               fields = [{ name = "blob", type = "binary" }]"#,
        )
        .unwrap();
        let out = Decoder::new(&config).unwrap().decode(&[rec(0, br#"{"blob":"AP8="}"#), rec(1, br#"{"blob":"%%"}"#)]);
        let blob = out.rows.column(0).as_any().downcast_ref::<deltalake::arrow::array::BinaryArray>().unwrap();
        assert_eq!(blob.value(0), [0, 255]);
        assert_eq!(out.dead.len(), 1);
        assert!(out.dead[0].reason.contains("base64"), "{}", out.dead[0].reason);
    }

    #[test]
    fn decimals_are_read_exactly_from_their_text() {
        let at = |text: &str, p: u8, s: u8| decimal(text, p, s);
        assert_eq!(at("0", 5, 2), Ok(0));
        assert_eq!(at("-0.5", 5, 2), Ok(-50));
        assert_eq!(at("007.10", 5, 2), Ok(710));
        assert_eq!(at("1.50", 5, 1), Ok(15), "trailing zeros past the scale lose nothing");
        assert_eq!(at("1e-2", 5, 2), Ok(1));
        assert_eq!(at("1.5E+3", 6, 2), Ok(150_000));
        assert_eq!(at("+3", 3, 0), Ok(3));
        assert_eq!(at(".5", 2, 1), Ok(5));
        assert_eq!(at("5.", 2, 1), Ok(50));
        assert_eq!(at("99.99", 4, 2), Ok(9_999));
        assert_eq!(at("0.000", 1, 0), Ok(0));
        let max = "9".repeat(38);
        assert_eq!(at(&max, 38, 0), Ok(max.parse::<i128>().unwrap()));
        assert_eq!(at("12345678901234567890.123456789012345678", 38, 18), Ok(12_345_678_901_234_567_890_123_456_789_012_345_678));
        assert_eq!(at("1.55", 5, 1), Err("has more fraction digits than the scale"));
        assert_eq!(at("1e-3", 5, 2), Err("has more fraction digits than the scale"));
        assert_eq!(at("100.00", 4, 2), Err("has more digits than the precision allows"));
        assert_eq!(at("1e40", 38, 0), Err("has more digits than the precision allows"));
        assert_eq!(at("1e999999999", 38, 0), Err("has more digits than the precision allows"));
        for bad in ["", "-", ".", "1e", "abc", "1.2.3", "0x10", "1,5", "--1", "NaN", "Infinity"] {
            assert_eq!(at(bad, 10, 2), Err("is not a number"), "{bad:?}");
        }
    }
}
