//! A Hive Metastore, through its Thrift API (`ThriftHiveMetastore`: `get_database`,
//! `create_database`, `get_table`, `create_table`, `alter_table`; unframed binary protocol, no
//! SASL — the metastore's defaults). Blocking calls with timeouts, made from a table's
//! maintenance thread.

use std::collections::BTreeMap;
use std::net::{TcpStream, ToSocketAddrs};

use super::thrift::{call, Reply, STRING, STRUCT, T};
use super::{decide, Action, Entry, Existing, Wanted};

/// What a registration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// The catalog had the table as it is.
    Unchanged,
    /// The table was created (and its database, if missing).
    Created,
    /// Its properties (the schema) were updated.
    Altered,
}

/// Registers `wanted` as `entry` in the metastore (see [`super`]); `Err` is one line.
pub fn register(entry: &Entry, wanted: &Wanted) -> Result<Registered, String> {
    let mut session = Session::open(entry).map_err(|e| named(entry, e))?;
    session.register(entry, wanted).map_err(|e| named(entry, format!("{}: {e}", entry.label())))
}

/// Whether the metastore answers, for `exactly check`: whether it has `entry`'s database
/// (registration creates it when missing). `Err` is one line.
pub fn check(entry: &Entry) -> Result<bool, String> {
    let mut session = Session::open(entry).map_err(|e| named(entry, e))?;
    let got = session.call("get_database", vec![(1, T::str(&entry.database))]).map_err(|e| named(entry, e))?;
    if got.field(0).is_some() {
        return Ok(true);
    }
    match got.field(1) {
        Some(_) => Ok(false),
        None => declared_exception(&got, "get_database").map(|()| false).map_err(|e| named(entry, e)),
    }
}

/// What the metastore holds as `entry` (`None`: no such table, or no such database).
pub fn lookup(entry: &Entry) -> Result<Option<Existing>, String> {
    let mut session = Session::open(entry).map_err(|e| named(entry, e))?;
    let table = session.get_table(&entry.database, &entry.name).map_err(|e| named(entry, e))?;
    Ok(table.as_ref().map(existing))
}

/// `e` as one line naming the metastore.
fn named(entry: &Entry, e: impl std::fmt::Display) -> String {
    format!("Hive Metastore {}: {e}", entry.address)
}

/// One connection and its call numbers.
struct Session {
    stream: TcpStream,
    seq: i32,
}

impl Session {
    fn open(entry: &Entry) -> std::io::Result<Session> {
        let address = entry
            .address
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "the address resolves to nothing"))?;
        let stream = TcpStream::connect_timeout(&address, entry.timeout)?;
        stream.set_read_timeout(Some(entry.timeout))?;
        stream.set_write_timeout(Some(entry.timeout))?;
        stream.set_nodelay(true)?;
        Ok(Session { stream, seq: 0 })
    }

    /// Calls `method`; its result struct, or the server's failure as an error.
    fn call(&mut self, method: &str, args: Vec<(i16, T)>) -> Result<T, String> {
        self.seq += 1;
        match call(&mut self.stream, method, self.seq, &T::Struct(args)).map_err(|e| format!("{method}: {e}"))? {
            Reply::Result(result) => Ok(result),
            Reply::Failed(why) => Err(format!("{method}: {why}")),
        }
    }

    fn register(&mut self, entry: &Entry, wanted: &Wanted) -> Result<Registered, String> {
        let created_database = self.ensure_database(&entry.database)?;
        let table = self.get_table(&entry.database, &entry.name)?;
        let existing = table.as_ref().map(existing);
        match decide(existing.as_ref(), wanted, &entry.pipeline)? {
            Action::Nothing => Ok(if created_database { Registered::Created } else { Registered::Unchanged }),
            Action::Create => {
                let result = self.call("create_table", vec![(1, new_table(entry, wanted))])?;
                declared_exception(&result, "create_table")?;
                Ok(Registered::Created)
            }
            Action::Alter(properties) => {
                let mut table = table.expect("an alter is decided for a table the catalog has");
                table.set(9, T::string_map(properties.iter().map(|(k, v)| (k.as_str(), v.as_str()))));
                let result =
                    self.call("alter_table", vec![(1, T::str(&entry.database)), (2, T::str(&entry.name)), (3, table)])?;
                declared_exception(&result, "alter_table")?;
                Ok(Registered::Altered)
            }
        }
    }

    /// Creates the database if the metastore lacks it; whether it did.
    fn ensure_database(&mut self, name: &str) -> Result<bool, String> {
        let got = self.call("get_database", vec![(1, T::str(name))])?;
        if got.field(0).is_some() {
            return Ok(false);
        }
        // 1: NoSuchObjectException; anything else is a failure.
        if got.field(1).is_none() {
            declared_exception(&got, "get_database")?;
        }
        let database = T::Struct(vec![(1, T::str(name)), (2, T::str("")), (4, T::string_map([]))]);
        let created = self.call("create_database", vec![(1, database)])?;
        // 1: AlreadyExistsException: another writer made it meanwhile.
        if created.field(1).is_none() {
            declared_exception(&created, "create_database")?;
        }
        Ok(true)
    }

    /// The table `db.name`, if the metastore has it.
    fn get_table(&mut self, db: &str, name: &str) -> Result<Option<T>, String> {
        let got = self.call("get_table", vec![(1, T::str(db)), (2, T::str(name))])?;
        if let Some(table) = got.field(0) {
            return Ok(Some(table.clone()));
        }
        // 2: NoSuchObjectException.
        if got.field(2).is_some() {
            return Ok(None);
        }
        declared_exception(&got, "get_table")?;
        Err("get_table: an empty reply".into())
    }
}

/// `Err` with the message of the declared exception a reply struct carries (any field but 0).
fn declared_exception(result: &T, method: &str) -> Result<(), String> {
    if let T::Struct(fields) = result {
        if let Some((_, e)) = fields.iter().find(|(id, _)| *id != 0) {
            let message = e.field(1).and_then(T::as_str).unwrap_or("(no message)");
            return Err(format!("{method}: {message}"));
        }
    }
    Ok(())
}

/// What the catalog's table says of itself: its location and properties.
fn existing(table: &T) -> Existing {
    let sd = table.field(7);
    let location = sd.and_then(|sd| sd.field(2)).and_then(T::as_str).filter(|l| !l.is_empty()).map(String::from).or_else(|| {
        let serde = sd.and_then(|sd| sd.field(7)).and_then(|s| s.field(3))?;
        serde.as_string_map().into_iter().find(|(k, _)| k == "path").map(|(_, v)| v)
    });
    let properties: BTreeMap<String, String> = table.field(9).map(T::as_string_map).unwrap_or_default().into_iter().collect();
    // The metastore's own bookkeeping is not the table's description.
    let properties = properties.into_iter().filter(|(k, _)| k != "transient_lastDdlTime").collect();
    Existing { location, properties }
}

/// A new external Delta table as Spark's Delta catalog registers one.
fn new_table(entry: &Entry, wanted: &Wanted) -> T {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i32);
    let column = T::Struct(vec![(1, T::str("col")), (2, T::str("array<string>")), (3, T::str("from deserializer"))]);
    let serde = T::Struct(vec![
        (2, T::str("org.apache.hadoop.hive.serde2.lazy.LazySimpleSerDe")),
        (3, T::string_map([("path", wanted.location.as_str()), ("serialization.format", "1")])),
    ]);
    let sd = T::Struct(vec![
        (1, T::List(STRUCT, vec![column])),
        (2, T::str(&wanted.location)),
        (3, T::str("org.apache.hadoop.mapred.SequenceFileInputFormat")),
        (4, T::str("org.apache.hadoop.hive.ql.io.HiveSequenceFileOutputFormat")),
        (5, T::Bool(false)),
        (6, T::I32(-1)),
        (7, serde),
        (8, T::List(STRING, Vec::new())),
        (9, T::List(STRUCT, Vec::new())),
        (10, T::string_map([])),
    ]);
    let properties = wanted.properties(&entry.pipeline);
    T::Struct(vec![
        (1, T::str(&entry.name)),
        (2, T::str(&entry.database)),
        (3, T::str("exactly")),
        (4, T::I32(now)),
        (5, T::I32(0)),
        (6, T::I32(0)),
        (7, sd),
        (8, T::List(STRUCT, Vec::new())),
        (9, T::string_map(properties.iter().map(|(k, v)| (k.as_str(), v.as_str())))),
        (12, T::str("EXTERNAL_TABLE")),
        (14, T::Bool(false)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_table_says_what_it_is_and_reads_back() {
        let entry = Entry {
            address: "127.0.0.1:1".into(),
            timeout: std::time::Duration::from_secs(1),
            database: "db".into(),
            name: "orders".into(),
            pipeline: "p".into(),
        };
        let wanted = Wanted { location: "file:///data/orders".into(), schema: "{}".into(), partition_by: Vec::new() };
        let table = new_table(&entry, &wanted);
        let read = existing(&table);
        assert_eq!(read.location.as_deref(), Some("file:///data/orders"));
        assert_eq!(read.properties, wanted.properties("p"));
        assert_eq!(decide(Some(&read), &wanted, "p"), Ok(Action::Nothing));
        assert_eq!(table.field(12).and_then(T::as_str), Some("EXTERNAL_TABLE"));
    }

    #[test]
    fn a_metastore_that_does_not_answer_is_one_line() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let entry = Entry {
            address: format!("127.0.0.1:{port}"),
            timeout: std::time::Duration::from_millis(300),
            database: "db".into(),
            name: "t".into(),
            pipeline: "p".into(),
        };
        let wanted = Wanted { location: "file:///x".into(), schema: "{}".into(), partition_by: Vec::new() };
        let e = register(&entry, &wanted).unwrap_err();
        assert!(e.starts_with(&format!("Hive Metastore 127.0.0.1:{port}: ")) && !e.contains('\n'), "{e}");
    }
}
