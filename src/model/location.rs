//! Where a table lives: a local directory or an object-store URL, with the storage options
//! that reach it (`[sink.storage]`, never shown).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// URL schemes a table may live at, and what they are.
pub const SCHEMES: &[(&str, &str)] = &[
    ("s3", "Amazon S3 or an S3-compatible server"),
    ("s3a", "Amazon S3 (Hadoop's name)"),
    ("az", "Azure Blob Storage"),
    ("azure", "Azure Blob Storage"),
    ("abfs", "Azure Data Lake Storage Gen2"),
    ("abfss", "Azure Data Lake Storage Gen2"),
    ("gs", "Google Cloud Storage"),
];

/// The storage option that makes delta-rs commit to S3 without conditional writes (copy, then
/// delete: a second writer can overwrite a commit). Named in the refusal of a store that
/// cannot do put-if-absent.
pub const UNSAFE_S3_OPTION: &str = "AWS_S3_ALLOW_UNSAFE_RENAME";

/// delta-rs storage options (`[sink.storage]`): endpoints, regions, credentials. Values are
/// never shown: `Debug` prints the keys only.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StorageOptions(pub BTreeMap<String, String>);

impl fmt::Debug for StorageOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys().map(|k| format!("{k} = <hidden>"))).finish()
    }
}

impl StorageOptions {
    /// Whether `key` is set (case-insensitively, as delta-rs reads keys).
    pub fn has(&self, key: &str) -> bool {
        self.0.keys().any(|k| k.eq_ignore_ascii_case(key))
    }
}

/// Where a table lives. Written in the config as a local directory (`data/delta/orders`) or a
/// URL (`s3://bucket/prefix/orders`); shown as written. A URL carries no credentials.
#[derive(Clone)]
pub struct TableLocation {
    url: url::Url,
    shown: String,
    options: Arc<StorageOptions>,
}

impl PartialEq for TableLocation {
    fn eq(&self, other: &Self) -> bool {
        self.url == other.url
    }
}

impl fmt::Debug for TableLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Display for TableLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl TableLocation {
    /// A location from the config's text: a URL of one of [`SCHEMES`] (or `file://`), or else a
    /// local directory.
    pub fn parse(text: &str) -> std::result::Result<TableLocation, String> {
        if text.is_empty() {
            return Err("is empty; give the table's directory or URL".into());
        }
        let Some((scheme, _)) = text.split_once("://") else {
            return Ok(TableLocation::local(Path::new(text)));
        };
        let url = url::Url::parse(text).map_err(|e| format!("is not a valid URL ({e})"))?;
        if scheme == "file" {
            let path = url.to_file_path().map_err(|_| "is not a valid file:// URL".to_string())?;
            return Ok(TableLocation::local(&path));
        }
        if !SCHEMES.iter().any(|(s, _)| *s == scheme) {
            let known: Vec<&str> = SCHEMES.iter().map(|(s, _)| *s).collect();
            return Err(format!("has the scheme '{scheme}'; give a local directory or a URL of {}://", known.join("://, ")));
        }
        // (An `abfss://container@account…` URL names its container as the user part.)
        let user = !url.username().is_empty() && !scheme.starts_with("abfs");
        if user || url.password().is_some() || url.query().is_some() {
            return Err("carries credentials or a query; give them in [sink.storage] or the environment instead".into());
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("names no bucket or container".into());
        }
        let mut url = url;
        if !url.path().ends_with('/') {
            url.set_path(&format!("{}/", url.path()));
        }
        Ok(TableLocation { url, shown: text.trim_end_matches('/').to_string(), options: Default::default() })
    }

    /// A local directory.
    pub fn local(path: &Path) -> TableLocation {
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let url = url::Url::from_directory_path(&abs).unwrap_or_else(|_| url::Url::parse("file:///").expect("a URL"));
        TableLocation { url, shown: path.display().to_string(), options: Default::default() }
    }

    /// The same location reached with these storage options.
    pub fn with_options(mut self, options: StorageOptions) -> TableLocation {
        self.options = Arc::new(options);
        self
    }

    /// The location's storage options.
    pub fn options(&self) -> &StorageOptions {
        &self.options
    }

    /// The table URL (a directory: ends with `/`).
    pub fn url(&self) -> &url::Url {
        &self.url
    }

    /// The local directory, if the table is local.
    pub fn local_path(&self) -> Option<PathBuf> {
        (self.url.scheme() == "file").then(|| self.url.to_file_path().ok()).flatten()
    }

    /// The location as written (what messages and metrics show).
    pub fn display(&self) -> &str {
        &self.shown
    }

    /// A sibling location: this one's last segment with `suffix` (the default dead-letter table
    /// is `<path>_dead_letters`).
    pub fn with_suffix(&self, suffix: &str) -> TableLocation {
        let shown = format!("{}{suffix}", self.shown);
        let mut at = match self.local_path() {
            Some(_) => TableLocation::local(Path::new(&shown)),
            None => TableLocation::parse(&shown).expect("a valid URL with a suffix is valid"),
        };
        at.options = self.options.clone();
        at
    }
}

impl From<&Path> for TableLocation {
    fn from(path: &Path) -> Self {
        TableLocation::local(path)
    }
}

impl From<PathBuf> for TableLocation {
    fn from(path: PathBuf) -> Self {
        TableLocation::local(&path)
    }
}

impl From<&PathBuf> for TableLocation {
    fn from(path: &PathBuf) -> Self {
        TableLocation::local(path)
    }
}

impl Serialize for TableLocation {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.shown)
    }
}

impl<'de> Deserialize<'de> for TableLocation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        TableLocation::parse(&text).map_err(|e| serde::de::Error::custom(format!("{text:?} {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_as_local_directories_or_store_urls() {
        let local = TableLocation::parse("data/delta/orders").unwrap();
        assert!(local.local_path().unwrap().ends_with("data/delta/orders"));
        assert_eq!(local.to_string(), "data/delta/orders");
        let s3 = TableLocation::parse("s3://bucket/prefix/orders").unwrap();
        assert_eq!(s3.url().as_str(), "s3://bucket/prefix/orders/");
        assert_eq!(s3.local_path(), None);
        assert_eq!(s3.with_suffix("_dead_letters").url().as_str(), "s3://bucket/prefix/orders_dead_letters/");
        for ok in ["s3a://b/t", "abfss://container@account.dfs.core.windows.net/t", "az://container/t", "gs://bucket/t"] {
            assert!(TableLocation::parse(ok).is_ok(), "{ok}");
        }
        assert!(TableLocation::parse("file:///tmp/t").unwrap().local_path().is_some());
    }

    #[test]
    fn urls_with_credentials_or_unknown_schemes_are_refused() {
        assert!(TableLocation::parse("s3://key:secret@bucket/t").unwrap_err().contains("credentials"));
        assert!(TableLocation::parse("az://c/t?sig=abc").unwrap_err().contains("credentials"));
        assert!(TableLocation::parse("hdfs://nn/t").unwrap_err().contains("scheme 'hdfs'"));
        assert!(TableLocation::parse("").is_err());
    }

    #[test]
    fn storage_options_never_show_their_values() {
        let o = StorageOptions(BTreeMap::from([("AWS_SECRET_ACCESS_KEY".to_string(), "s3cr3t".to_string())]));
        let shown = format!("{o:?}");
        assert!(shown.contains("AWS_SECRET_ACCESS_KEY") && !shown.contains("s3cr3t"), "{shown}");
    }
}
