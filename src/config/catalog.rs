//! `[catalog]`: where the pipeline's tables are registered, so users find them by name.

use super::*;

/// `[catalog]`: a catalog the pipeline registers its Delta tables in (as external Delta tables,
/// the way Spark's Delta catalog registers them), after a table is created and whenever its
/// schema grows. A registration that fails never holds an epoch back: it is retried in the
/// background, counted, and warned about once per failing streak.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    /// The catalog's kind: `hive`, a Hive Metastore (its Thrift API).
    pub kind: CatalogKind,
    /// Where it answers: `thrift://host:port` for `hive`.
    pub uri: String,
    /// The database (schema) of the tables; created if missing.
    #[serde(default = "default_database")]
    pub database: String,
    /// The data table's name (absent: the pipeline id, with `.` and `-` as `_`). The
    /// dead-letter table is `<table>_dead_letters`, each output `<table>_<output name>` (`-` as
    /// `_`). Catalogs keep names in lower case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// Per request, in milliseconds.
    #[serde(default = "default_catalog_timeout_ms")]
    pub timeout_ms: u64,
}

/// The kinds of catalog.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CatalogKind {
    /// A Hive Metastore, through its Thrift API (unframed binary protocol, no SASL).
    Hive,
}

fn default_database() -> String {
    "default".into()
}

fn default_catalog_timeout_ms() -> u64 {
    10_000
}

impl CatalogConfig {
    /// The name of the data table.
    pub fn table_name(&self, pipeline: &str) -> String {
        self.table.clone().unwrap_or_else(|| pipeline.replace(['.', '-'], "_")).to_lowercase()
    }

    /// The name of a table of the pipeline: `None` the data table, else the data table's name
    /// and `suffix` (`dead_letters`, an output's name).
    pub fn name_of(&self, pipeline: &str, suffix: Option<&str>) -> String {
        let table = self.table_name(pipeline);
        match suffix {
            None => table,
            Some(s) => format!("{table}_{}", s.replace(['.', '-'], "_").to_lowercase()),
        }
    }

    /// `host:port` of a `thrift://host:port` uri.
    pub fn address(&self) -> Option<&str> {
        self.uri.strip_prefix("thrift://").map(|a| a.trim_end_matches('/')).filter(|a| a.contains(':'))
    }
}

/// Whether `name` is a name a catalog takes as it is: letters, digits and `_`.
fn plain_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl PipelineConfig {
    /// `[catalog]`.
    pub(super) fn check_catalog(&self, bad: &Bad) -> Result<(), ConfigError> {
        let Some(c) = &self.catalog else { return Ok(()) };
        if !matches!(self.sink, SinkConfig::Delta { .. }) {
            return Err(bad("catalog", "registers Delta tables: it needs `[sink] kind = \"delta\"`".into()));
        }
        if c.address().is_none() {
            return Err(bad("catalog.uri", format!("is {:?}; give thrift://host:port", c.uri)));
        }
        if !plain_name(&c.database) {
            return Err(bad("catalog.database", format!("is {:?}; use letters, digits and '_'", c.database)));
        }
        let table = c.table_name(&self.id);
        if !plain_name(&table) {
            return Err(bad("catalog.table", format!("is {table:?}; use letters, digits and '_'")));
        }
        if c.timeout_ms == 0 {
            return Err(bad("catalog.timeout_ms", "must be at least 1".into()));
        }
        Ok(())
    }
}
