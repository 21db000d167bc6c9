//! Thrift's binary protocol (strict, unframed — what the Hive Metastore speaks by default), over
//! one value type: a call's arguments are built as a [`T::Struct`] and its reply read back as
//! one, any field the caller does not look at skipped by type. Enough for a handful of calls,
//! without generated code.

use std::io::{Read, Write};

/// A Thrift value. Containers keep their element types, so an empty one still encodes.
#[derive(Debug, Clone, PartialEq)]
pub enum T {
    /// `bool`
    Bool(bool),
    /// `byte`
    Byte(i8),
    /// `i16`
    I16(i16),
    /// `i32` (and enums)
    I32(i32),
    /// `i64`
    I64(i64),
    /// `double`
    Double(f64),
    /// `string` / `binary`
    Str(Vec<u8>),
    /// A struct: (field id, value), in any order.
    Struct(Vec<(i16, T)>),
    /// A map: key type, value type, entries.
    Map(u8, u8, Vec<(T, T)>),
    /// A list (or a set): element type, elements.
    List(u8, Vec<T>),
}

/// Type codes.
const BOOL: u8 = 2;
const BYTE: u8 = 3;
const DOUBLE: u8 = 4;
const I16: u8 = 6;
const I32: u8 = 8;
const I64: u8 = 10;
/// `string`
pub const STRING: u8 = 11;
/// `struct`
pub const STRUCT: u8 = 12;
const MAP: u8 = 13;
const SET: u8 = 14;
const LIST: u8 = 15;

/// Message types.
const CALL: u8 = 1;
const REPLY: u8 = 2;
const EXCEPTION: u8 = 3;
const VERSION_1: u32 = 0x8001_0000;

/// Nesting deeper than this is refused (a reply is never that deep; a bad stream could be).
const MAX_DEPTH: usize = 64;
/// A string or container longer than this is refused.
const MAX_LEN: usize = 64 * 1024 * 1024;

impl T {
    /// A string value.
    pub fn str(s: &str) -> T {
        T::Str(s.as_bytes().to_vec())
    }

    /// A `map<string, string>`.
    pub fn string_map<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> T {
        T::Map(STRING, STRING, entries.into_iter().map(|(k, v)| (T::str(k), T::str(v))).collect())
    }

    fn code(&self) -> u8 {
        match self {
            T::Bool(_) => BOOL,
            T::Byte(_) => BYTE,
            T::I16(_) => I16,
            T::I32(_) => I32,
            T::I64(_) => I64,
            T::Double(_) => DOUBLE,
            T::Str(_) => STRING,
            T::Struct(_) => STRUCT,
            T::Map(..) => MAP,
            T::List(..) => LIST,
        }
    }

    /// Field `id` of a struct.
    pub fn field(&self, id: i16) -> Option<&T> {
        match self {
            T::Struct(fields) => fields.iter().find(|(i, _)| *i == id).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Field `id` of a struct, mutable (`None`: not a struct, or no such field).
    pub fn field_mut(&mut self, id: i16) -> Option<&mut T> {
        match self {
            T::Struct(fields) => fields.iter_mut().find(|(i, _)| *i == id).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Sets field `id` of a struct (added if absent).
    pub fn set(&mut self, id: i16, value: T) {
        match self.field_mut(id) {
            Some(v) => *v = value,
            None => {
                if let T::Struct(fields) = self {
                    fields.push((id, value));
                }
            }
        }
    }

    /// The text of a string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            T::Str(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The entries of a `map<string, string>`.
    pub fn as_string_map(&self) -> Vec<(String, String)> {
        match self {
            T::Map(_, _, entries) => {
                entries.iter().filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string()))).collect()
            }
            _ => Vec::new(),
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            T::Bool(b) => out.push(u8::from(*b)),
            T::Byte(b) => out.push(*b as u8),
            T::I16(x) => out.extend(x.to_be_bytes()),
            T::I32(x) => out.extend(x.to_be_bytes()),
            T::I64(x) => out.extend(x.to_be_bytes()),
            T::Double(x) => out.extend(x.to_be_bytes()),
            T::Str(b) => {
                out.extend((b.len() as i32).to_be_bytes());
                out.extend(b);
            }
            T::Struct(fields) => {
                for (id, v) in fields {
                    out.push(v.code());
                    out.extend(id.to_be_bytes());
                    v.write(out);
                }
                out.push(0);
            }
            T::Map(k, v, entries) => {
                out.extend([*k, *v]);
                out.extend((entries.len() as i32).to_be_bytes());
                for (key, value) in entries {
                    key.write(out);
                    value.write(out);
                }
            }
            T::List(e, items) => {
                out.push(*e);
                out.extend((items.len() as i32).to_be_bytes());
                for i in items {
                    i.write(out);
                }
            }
        }
    }
}

/// Reads values of a known type from a byte stream.
struct Reader<'r, R: Read>(&'r mut R);

impl<R: Read> Reader<'_, R> {
    fn bytes<const N: usize>(&mut self) -> std::io::Result<[u8; N]> {
        let mut b = [0u8; N];
        self.0.read_exact(&mut b)?;
        Ok(b)
    }

    fn len(&mut self) -> std::io::Result<usize> {
        let n = i32::from_be_bytes(self.bytes()?);
        usize::try_from(n).ok().filter(|n| *n <= MAX_LEN).ok_or_else(|| invalid(format!("a length of {n}")))
    }

    fn value(&mut self, code: u8, depth: usize) -> std::io::Result<T> {
        if depth > MAX_DEPTH {
            return Err(invalid("values nested too deep".into()));
        }
        Ok(match code {
            BOOL => T::Bool(self.bytes::<1>()?[0] != 0),
            BYTE => T::Byte(self.bytes::<1>()?[0] as i8),
            I16 => T::I16(i16::from_be_bytes(self.bytes()?)),
            I32 => T::I32(i32::from_be_bytes(self.bytes()?)),
            I64 => T::I64(i64::from_be_bytes(self.bytes()?)),
            DOUBLE => T::Double(f64::from_be_bytes(self.bytes()?)),
            STRING => {
                let mut b = vec![0; self.len()?];
                self.0.read_exact(&mut b)?;
                T::Str(b)
            }
            STRUCT => {
                let mut fields = Vec::new();
                loop {
                    let [code] = self.bytes()?;
                    if code == 0 {
                        break T::Struct(fields);
                    }
                    let id = i16::from_be_bytes(self.bytes()?);
                    fields.push((id, self.value(code, depth + 1)?));
                }
            }
            MAP => {
                let [k, v] = self.bytes()?;
                let n = self.len()?;
                let mut entries = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    entries.push((self.value(k, depth + 1)?, self.value(v, depth + 1)?));
                }
                T::Map(k, v, entries)
            }
            SET | LIST => {
                let [e] = self.bytes()?;
                let n = self.len()?;
                let mut items = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    items.push(self.value(e, depth + 1)?);
                }
                T::List(e, items)
            }
            other => return Err(invalid(format!("unknown type code {other}"))),
        })
    }
}

fn invalid(why: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not a Thrift reply: {why}"))
}

/// What a call returned: its reply struct (field 0 the result, others the declared exceptions),
/// or the server's application exception (an unknown method, an internal error).
#[derive(Debug, PartialEq)]
pub enum Reply {
    /// The result struct.
    Result(T),
    /// The server's application exception message.
    Failed(String),
}

/// Calls `method` with the argument struct `args` over `stream` and reads its reply.
pub fn call<S: Read + Write>(stream: &mut S, method: &str, seq: i32, args: &T) -> std::io::Result<Reply> {
    let mut out = Vec::new();
    out.extend((VERSION_1 | u32::from(CALL)).to_be_bytes());
    T::str(method).write(&mut out);
    out.extend(seq.to_be_bytes());
    args.write(&mut out);
    stream.write_all(&out)?;
    stream.flush()?;
    let mut reader = Reader(stream);
    let head = u32::from_be_bytes(reader.bytes()?);
    if head & 0xffff_0000 != VERSION_1 {
        return Err(invalid(format!("a message header {head:08x}")));
    }
    let name = reader.value(STRING, 0)?;
    let got_seq = i32::from_be_bytes(reader.bytes()?);
    let body = reader.value(STRUCT, 0)?;
    if name.as_str() != Some(method) || got_seq != seq {
        return Err(invalid(format!("a reply to {:?} #{got_seq}, not {method} #{seq}", name.as_str())));
    }
    match (head & 0xff) as u8 {
        REPLY => Ok(Reply::Result(body)),
        EXCEPTION => Ok(Reply::Failed(body.field(1).and_then(T::as_str).unwrap_or("(no message)").to_string())),
        other => Err(invalid(format!("message type {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_back_as_written() {
        let value = T::Struct(vec![
            (1, T::str("t")),
            (2, T::I32(-7)),
            (3, T::List(STRUCT, vec![T::Struct(vec![(1, T::str("col")), (2, T::Bool(true))])])),
            (4, T::string_map([("a", "b")])),
            (5, T::Map(STRING, STRING, Vec::new())),
            (6, T::I64(1 << 40)),
            (7, T::Double(0.5)),
            (8, T::I16(3)),
            (9, T::Byte(-1)),
        ]);
        let mut bytes = Vec::new();
        value.write(&mut bytes);
        let read = Reader(&mut bytes.as_slice()).value(STRUCT, 0).unwrap();
        assert_eq!(read, value);
        assert_eq!(read.field(4).unwrap().as_string_map(), [("a".to_string(), "b".to_string())]);
        // A length beyond the stream, or an unknown type code, is an error, never a panic.
        assert!(Reader(&mut &bytes[..bytes.len() - 3]).value(STRUCT, 0).is_err());
        assert!(Reader(&mut [200u8, 0, 1].as_slice()).value(STRUCT, 0).is_err());
    }

    #[test]
    fn a_call_writes_the_message_and_reads_its_reply() {
        struct Duplex {
            written: Vec<u8>,
            reply: std::io::Cursor<Vec<u8>>,
        }
        impl Read for Duplex {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.reply.read(buf)
            }
        }
        impl Write for Duplex {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.written.extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let reply = |kind: u8, name: &str, seq: i32, body: T| {
            let mut b = (VERSION_1 | u32::from(kind)).to_be_bytes().to_vec();
            T::str(name).write(&mut b);
            b.extend(seq.to_be_bytes());
            body.write(&mut b);
            b
        };
        let ok = T::Struct(vec![(0, T::str("db"))]);
        let mut s = Duplex { written: Vec::new(), reply: std::io::Cursor::new(reply(REPLY, "get_database", 4, ok.clone())) };
        assert_eq!(call(&mut s, "get_database", 4, &T::Struct(vec![(1, T::str("db"))])).unwrap(), Reply::Result(ok));
        assert_eq!(&s.written[..4], &[0x80, 1, 0, 1], "a strict CALL header");
        let failed = T::Struct(vec![(1, T::str("Invalid method name")), (2, T::I32(1))]);
        let mut s = Duplex { written: Vec::new(), reply: std::io::Cursor::new(reply(EXCEPTION, "nope", 1, failed)) };
        assert_eq!(call(&mut s, "nope", 1, &T::Struct(vec![])).unwrap(), Reply::Failed("Invalid method name".into()));
        let mut s = Duplex { written: Vec::new(), reply: std::io::Cursor::new(reply(REPLY, "other", 1, T::Struct(vec![]))) };
        assert!(call(&mut s, "mine", 1, &T::Struct(vec![])).is_err(), "a reply to another call");
    }
}
