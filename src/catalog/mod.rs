//! Catalog registration (`[catalog]`): each Delta table the pipeline writes is registered in a
//! catalog as an external Delta table, so users and engines find it by name — after the table is
//! created, and again whenever its schema grows.
//!
//! A table is registered the way Spark's Delta catalog registers one in a Hive Metastore: an
//! `EXTERNAL_TABLE` whose `spark.sql.sources.provider` is `delta`, its location in the storage
//! descriptor and in the SerDe's `path`, its schema (Delta's schema JSON, Spark's `StructType`
//! JSON) in `spark.sql.sources.schema` (split in 4,000-character parts when longer, as Spark
//! splits it) and its partition columns in `spark.sql.sources.schema.partCol.<i>`; the Hive
//! columns are Spark's placeholder `col array<string>`. Spark, Trino and Hive-compatible engines
//! read the table through it.
//!
//! Registering is idempotent ([`decide`]): a table already registered with this location and
//! schema is left alone; one with this location and an older schema is altered; a table of that
//! name that is not this one (another location, not Delta) is never overwritten — that is an
//! error. Registration runs in each table's maintenance worker, never inside an epoch's commit:
//! a catalog that is away or refuses costs no epoch; the worker retries with a growing pause,
//! counts each failure (`exactly_catalog_errors_total`) and warns once per failing streak.

pub mod hive;
pub mod thrift;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::CatalogConfig;

/// The longest value Spark keeps in one table property; longer schemas are split in parts.
const SCHEMA_PART: usize = 4_000;

/// Where one table goes in the catalog: the catalog, the database, the name.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// `host:port` of the metastore.
    pub address: String,
    /// Per request.
    pub timeout: Duration,
    /// The database.
    pub database: String,
    /// The table's name.
    pub name: String,
    /// The pipeline, recorded in the table's properties (`exactly.pipeline`).
    pub pipeline: String,
}

impl Entry {
    /// The entry of the pipeline's table `suffix` names (`None`: the data table; else
    /// `dead_letters` or an output's name) in `config`'s catalog.
    pub fn of(config: &CatalogConfig, pipeline: &str, suffix: Option<&str>) -> Entry {
        Entry {
            address: config.address().unwrap_or_default().to_string(),
            timeout: Duration::from_millis(config.timeout_ms),
            database: config.database.to_lowercase(),
            name: config.name_of(pipeline, suffix),
            pipeline: pipeline.to_string(),
        }
    }

    /// `database.table`, for messages.
    pub fn label(&self) -> String {
        format!("{}.{}", self.database, self.name)
    }
}

/// What a table is: its location, schema and partition columns, as its Delta log says.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    /// The table's URL (`file:///…`, `s3://…`), without a trailing `/`.
    pub location: String,
    /// Delta's schema JSON.
    pub schema: String,
    /// Its partition columns, in order.
    pub partition_by: Vec<String>,
}

impl Wanted {
    /// The table properties that say what the table is (Spark's keys, and `exactly.pipeline`).
    pub fn properties(&self, pipeline: &str) -> BTreeMap<String, String> {
        let mut p = BTreeMap::from([
            ("EXTERNAL".to_string(), "TRUE".to_string()),
            (PROVIDER.to_string(), "delta".to_string()),
            ("exactly.pipeline".to_string(), pipeline.to_string()),
        ]);
        if self.schema.len() <= SCHEMA_PART {
            p.insert(SCHEMA.into(), self.schema.clone());
        } else {
            let parts: Vec<&str> = split(&self.schema, SCHEMA_PART);
            p.insert(format!("{SCHEMA}.numParts"), parts.len().to_string());
            for (i, part) in parts.into_iter().enumerate() {
                p.insert(format!("{SCHEMA}.part.{i}"), part.to_string());
            }
        }
        if !self.partition_by.is_empty() {
            p.insert(format!("{SCHEMA}.numPartCols"), self.partition_by.len().to_string());
            for (i, c) in self.partition_by.iter().enumerate() {
                p.insert(format!("{SCHEMA}.partCol.{i}"), c.clone());
            }
        }
        p
    }
}

/// `spark.sql.sources.provider`.
const PROVIDER: &str = "spark.sql.sources.provider";
/// `spark.sql.sources.schema` (and its `.numParts`, `.part.<i>`, `.numPartCols`,
/// `.partCol.<i>`).
const SCHEMA: &str = "spark.sql.sources.schema";

/// `text` in pieces of at most `n` bytes, cut at character boundaries.
fn split(text: &str, n: usize) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = n.min(rest.len());
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        parts.push(&rest[..end]);
        rest = &rest[end..];
    }
    parts
}

/// What the catalog holds under the table's name.
#[derive(Debug, Clone, PartialEq)]
pub struct Existing {
    /// The storage descriptor's location (or the SerDe's `path`).
    pub location: Option<String>,
    /// Its table properties.
    pub properties: BTreeMap<String, String>,
}

/// What registering a table does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// The catalog has it as it is.
    Nothing,
    /// Create it.
    Create,
    /// Set these properties (the schema's, the others kept; stale schema parts removed).
    Alter(BTreeMap<String, String>),
}

/// Whether two table locations name one place: a trailing `/` aside, and `file:/p`,
/// `file:///p` and `file://localhost/p` alike (a metastore keeps `file:/p`).
pub fn same_location(a: &str, b: &str) -> bool {
    fn plain(l: &str) -> &str {
        let l = l.trim_end_matches('/');
        l.strip_prefix("file://localhost/")
            .or_else(|| l.strip_prefix("file:///"))
            .or_else(|| l.strip_prefix("file:/"))
            .unwrap_or(l)
    }
    plain(a) == plain(b)
}

/// What to do to register `wanted` (owned by `pipeline`), given what the catalog holds under its
/// name; `Err`: a table of that name that is not this one, left alone.
pub fn decide(existing: Option<&Existing>, wanted: &Wanted, pipeline: &str) -> Result<Action, String> {
    let Some(existing) = existing else { return Ok(Action::Create) };
    let location = existing.location.as_deref();
    let provider = existing.properties.get(PROVIDER).map(|p| p.to_lowercase());
    if provider.as_deref() != Some("delta") || !location.is_some_and(|l| same_location(l, &wanted.location)) {
        return Err(format!(
            "the catalog has a table of that name that is not this one ({} at {}): it is left alone; \
             name another with catalog.table, or drop that one",
            provider.map_or("not a Delta table".to_string(), |p| format!("provider {p}")),
            location.unwrap_or("no location"),
        ));
    }
    let mut properties = existing.properties.clone();
    properties.retain(|k, _| !(k == SCHEMA || k.starts_with(&format!("{SCHEMA}."))));
    properties.extend(wanted.properties(pipeline));
    Ok(if properties == existing.properties { Action::Nothing } else { Action::Alter(properties) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(schema: &str) -> Wanted {
        Wanted { location: "file:///data/t".into(), schema: schema.into(), partition_by: vec!["day".into()] }
    }

    #[test]
    fn registering_is_idempotent_and_never_takes_another_table() {
        let w = wanted(r#"{"type":"struct","fields":[]}"#);
        assert_eq!(decide(None, &w, "p"), Ok(Action::Create));
        let registered = Existing { location: Some("file:/data/t/".into()), properties: w.properties("p") };
        assert_eq!(decide(Some(&registered), &w, "p"), Ok(Action::Nothing), "file:/ as a metastore keeps it, and a trailing /");
        assert!(same_location("file://localhost/data/t", "file:///data/t") && !same_location("file:///data/t", "file:///data/u"));
        assert!(same_location("s3://b/t/", "s3://b/t") && !same_location("s3://b/t", "file:///b/t"));
        // The schema grew: the schema's properties change, the others stay.
        let mut own = registered.clone();
        own.properties.insert("owner.team".into(), "payments".into());
        let grown = wanted(r#"{"type":"struct","fields":[{"name":"x"}]}"#);
        let Ok(Action::Alter(p)) = decide(Some(&own), &grown, "p") else { panic!("an alter") };
        assert_eq!(p.get("owner.team").map(String::as_str), Some("payments"));
        assert_eq!(p.get(SCHEMA), Some(&grown.schema));
        assert_eq!(p.get("spark.sql.sources.schema.partCol.0").map(String::as_str), Some("day"));
        // Another table of that name is left alone.
        let elsewhere = Existing { location: Some("file:///other".into()), ..registered.clone() };
        assert!(decide(Some(&elsewhere), &w, "p").unwrap_err().contains("not this one"));
        let hive = Existing { location: Some("file:///data/t".into()), properties: BTreeMap::new() };
        assert!(decide(Some(&hive), &w, "p").unwrap_err().contains("not a Delta table"));
    }

    #[test]
    fn long_schemas_are_split_as_spark_splits_them() {
        let long = format!(r#"{{"type":"struct","fields":[{{"name":"{}é"}}]}}"#, "x".repeat(9_000));
        let p = wanted(&long).properties("p");
        assert_eq!(p.get("spark.sql.sources.schema.numParts").map(String::as_str), Some("3"));
        let joined: String = (0..3).map(|i| p[&format!("spark.sql.sources.schema.part.{i}")].as_str()).collect();
        assert_eq!(joined, long);
        assert!(!p.contains_key(SCHEMA));
        // Back to a short schema: the parts go.
        let registered = Existing { location: Some("file:///data/t".into()), properties: p };
        let Ok(Action::Alter(p)) = decide(Some(&registered), &wanted("{}"), "p") else { panic!("an alter") };
        assert!(p.keys().all(|k| !k.contains(".part.")), "{p:?}");
    }
}
