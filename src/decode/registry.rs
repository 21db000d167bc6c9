//! A Confluent-compatible schema registry (Confluent Schema Registry, Apicurio's `ccompat` API,
//! Karapace, Redpanda): schemas by id, `GET <url>/schemas/ids/<id>`, and subjects' versions, over
//! HTTP or HTTPS with the registry's basic auth and an optional private CA, with the schemas they
//! reference. Avro, Protobuf and JSON Schema alike: each id found is fetched once and kept for the
//! life of the process ([`ById`]).
//!
//! A registry that does not answer, or answers with a server error, is asked again with a
//! growing pause (`attempts` times in all); then the batch fails, and the consumer restarts
//! through the restart budget — a record is never skipped or dead-lettered because the registry
//! was away. An id the registry does not know (HTTP 404) may be one it does not know *yet* (a
//! replica behind, a registry restarted from an empty store): it is asked again a few times
//! before its records become dead letters, and again by every later batch that holds it — a 404
//! is never final for the process. A schema of another kind than the format's, or one that
//! cannot be read into the table, makes the record a dead letter with that reason. Refused
//! credentials (401/403) fail at once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::{Rejected, Rejection};
use crate::config::RegistryConfig;

/// What the registry says of a schema id.
#[derive(Debug)]
pub enum Lookup {
    /// The schema.
    Found(Fetched),
    /// Why a record with this id is a dead letter.
    Unknown(String),
}

/// The kinds of schema a registry holds (its `schemaType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaType {
    /// An Avro schema (JSON).
    Avro,
    /// A `.proto` file (text, or a base64 `FileDescriptorProto` as Confluent's Python
    /// serializer registers it).
    Protobuf,
    /// A JSON Schema.
    Json,
}

impl SchemaType {
    /// The registry's name for it (absent in an answer: Avro).
    fn name(self) -> &'static str {
        match self {
            SchemaType::Avro => "AVRO",
            SchemaType::Protobuf => "PROTOBUF",
            SchemaType::Json => "JSON",
        }
    }
}

/// A schema as the registry holds it: its text, and the schemas it references under the names
/// it uses for them (an Avro type's full name, a `.proto` file's import path), fetched as their
/// subjects' versions.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    /// The schema text.
    pub text: String,
    /// The schemas it references, by the name it uses for each.
    pub references: Vec<(String, Fetched)>,
}

/// A registry client.
pub struct Registry {
    client: reqwest::Client,
    base: String,
    auth: Option<(String, String)>,
    attempts: u32,
}

impl std::fmt::Debug for Registry {
    /// The address and whether it authenticates; never the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("url", &self.base)
            .field("user", &self.auth.as_ref().map(|(user, _)| user))
            .field("attempts", &self.attempts)
            .finish()
    }
}

impl Registry {
    /// A client for `config`; the error (an unreadable CA or password) names the setting.
    pub fn new(config: &RegistryConfig) -> Result<Registry, String> {
        let url = config.url.trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("registry.url is {url:?}; give http://host:port or https://host:port"));
        }
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .connect_timeout(Duration::from_millis(config.timeout_ms));
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("registry.ca_file {} cannot be read: {e}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| format!("registry.ca_file {} is not a PEM certificate: {e}", ca.display()))?;
            builder = builder.add_root_certificate(cert);
        }
        let client = builder.build().map_err(|e| format!("registry client: {e}"))?;
        let auth = match (&config.username, &config.password) {
            (Some(user), Some(password)) => {
                Some((user.clone(), password.reveal().map_err(|e| format!("registry.password {e}"))?))
            }
            (None, None) => None,
            _ => return Err("registry: give both username and password (basic auth), or neither".into()),
        };
        Ok(Registry { client, base: url.to_string(), auth, attempts: config.attempts.max(1) })
    }

    /// Whether the registry answers and takes the credentials (`GET <url>/subjects`, once):
    /// for `exactly check`. `Err` names the registry and the problem.
    pub async fn check(&self) -> Result<(), String> {
        let mut request = self.client.get(format!("{}/subjects", self.base));
        if let Some((user, password)) = &self.auth {
            request = request.basic_auth(user, Some(password));
        }
        let response = request.send().await.map_err(|e| format!("schema registry {} did not answer: {e}", self.base))?;
        match response.status() {
            s if s.is_success() => Ok(()),
            s if s.as_u16() == 401 || s.as_u16() == 403 => {
                Err(format!("schema registry {} refused the credentials (HTTP {s})", self.base))
            }
            s => Err(format!("schema registry {} answered HTTP {s} to GET /subjects", self.base)),
        }
    }

    /// The registry's address.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// The schema with id `id`, if it is of kind `kind`; `Err` when the registry cannot be
    /// asked (after the retries) or refuses the credentials.
    pub async fn schema(&self, id: u32, kind: SchemaType) -> Result<Lookup, String> {
        let what = format!("schema id {id}");
        let Some(body) = self.get(&format!("schemas/ids/{id}"), &what).await? else {
            return Ok(Lookup::Unknown(format!("unknown writer schema id {id} (the schema registry has none)")));
        };
        Ok(match self.resolved(&body, &what, kind, 0).await? {
            Ok(fetched) => Lookup::Found(fetched),
            Err(why) => Lookup::Unknown(why),
        })
    }

    /// Version `version` (`None`: the latest) of subject `subject`: a reader schema. `Err` names
    /// the registry and the problem: no such subject or version, not of kind `kind`, or the
    /// registry cannot be asked.
    pub async fn subject_version(&self, subject: &str, version: Option<u32>, kind: SchemaType) -> Result<Fetched, String> {
        let v = version.map_or("latest".to_string(), |v| v.to_string());
        let what = format!("subject {subject:?} version {v}");
        let Some(body) = self.get(&subject_path(subject, &v), &what).await? else {
            return Err(format!("schema registry {} has no {what}", self.base));
        };
        self.resolved(&body, &what, kind, 0).await?.map_err(|why| format!("schema registry {}: {why}", self.base))
    }

    /// A registry's answer `body` with the schemas it references, fetched as their subjects'
    /// versions. `Ok(Err(why))`: the answer is no schema of kind `kind`, or a reference is
    /// missing; `Err`: the registry cannot be asked.
    fn resolved<'a>(
        &'a self,
        body: &'a str,
        what: &'a str,
        kind: SchemaType,
        depth: usize,
    ) -> futures::future::BoxFuture<'a, Result<Result<Fetched, String>, String>> {
        Box::pin(async move {
            let (text, references) = match answer(body, what, kind) {
                Ok(a) => a,
                Err(why) => return Ok(Err(why)),
            };
            if !references.is_empty() && depth >= MAX_REFERENCE_DEPTH {
                return Ok(Err(format!("{what}: references nested deeper than {MAX_REFERENCE_DEPTH}")));
            }
            let mut named = Vec::with_capacity(references.len());
            for r in references {
                let of = format!("{what}: reference {:?} (subject {:?} version {})", r.name, r.subject, r.version);
                let Some(body) = self.get(&subject_path(&r.subject, &r.version.to_string()), &of).await? else {
                    return Ok(Err(format!("{of} is not in the registry")));
                };
                match self.resolved(&body, &of, kind, depth + 1).await? {
                    Ok(fetched) => named.push((r.name, fetched)),
                    Err(why) => return Ok(Err(why)),
                }
            }
            Ok(Ok(Fetched { text, references: named }))
        })
    }

    /// The body of `GET <url>/<path>`, asking again (with a growing pause) while the registry
    /// does not answer or answers a server error; `Ok(None)` when it has no such thing (404).
    /// `Err` when it refuses the credentials, or still does not answer after the retries.
    async fn get(&self, path: &str, what: &str) -> Result<Option<String>, String> {
        let url = format!("{}/{path}", self.base);
        let mut pause = Duration::from_millis(200);
        let mut last = String::new();
        for attempt in 1..=self.attempts {
            let mut request = self.client.get(&url).header("Accept", "application/vnd.schemaregistry.v1+json, application/json");
            if let Some((user, password)) = &self.auth {
                request = request.basic_auth(user, Some(password));
            }
            match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    if status.is_success() {
                        let body =
                            response.text().await.map_err(|e| format!("schema registry {}: reading {what}: {e}", self.base))?;
                        return Ok(Some(body));
                    }
                    match status.as_u16() {
                        404 => return Ok(None),
                        401 | 403 => {
                            return Err(format!(
                                "schema registry {} refused the credentials (HTTP {status}); check decode.avro.registry.username and password",
                                self.base
                            ))
                        }
                        _ => last = format!("HTTP {status}"),
                    }
                }
                Err(e) => last = e.to_string(),
            }
            if attempt < self.attempts {
                tracing::warn!(registry = %self.base, what, attempt, error = %last, "schema registry did not answer; asking again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
        Err(format!("schema registry {} did not answer for {what} after {} attempts: {last}", self.base, self.attempts))
    }
}

/// Why an id's records are dead letters.
#[derive(Debug)]
enum Unknown {
    /// The registry did not know the id when last asked (asked again by later batches).
    NotInRegistry(String),
    /// The registry's schema cannot be read into the table (final).
    Refused(String),
}

/// How often an id the registry does not know is asked again the first time, and the first
/// pause (doubling) between asks.
const REASKS: u32 = 3;
const REASK_PAUSE: Duration = Duration::from_millis(100);

/// Writer schemas found by id in a registry, each read once into what decoding uses (`W`), and
/// why the ids it could not read are unknown: one cache and one asking rule for every format.
pub struct ById<W> {
    registry: Registry,
    kind: SchemaType,
    known: RwLock<HashMap<u32, Result<Arc<W>, Unknown>>>,
}

impl<W> std::fmt::Debug for ById<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ById").field("registry", &self.registry).field("kind", &self.kind).finish_non_exhaustive()
    }
}

impl<W> ById<W> {
    /// An empty cache of `kind` schemas from `registry`.
    pub fn new(registry: Registry, kind: SchemaType) -> ById<W> {
        ById { registry, kind, known: RwLock::new(HashMap::new()) }
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Fetches the schemas of the ids in `ids` that no earlier fetch found, and reads each with
    /// `read` (`Err`: why its records are dead letters, for good), so [`ById::get`] knows every
    /// one. `Err`: the registry could not be asked (the batch must not be decoded).
    pub async fn prepare(
        &self,
        ids: impl Iterator<Item = u32>,
        read: impl Fn(u32, Fetched) -> Result<W, String>,
    ) -> Result<(), String> {
        // Ids no earlier fetch knows, and ids the registry did not know when last asked: an
        // unknown id may be one it does not know *yet* (a replica behind, a registry restarted
        // from an empty store), so a 404 is never final for the process.
        let ask: HashSet<u32> = {
            let known = self.known.read().expect("schema cache lock");
            ids.filter(|id| matches!(known.get(id), None | Some(Err(Unknown::NotInRegistry(_))))).collect()
        };
        for id in ask {
            let first = !self.known.read().expect("schema cache lock").contains_key(&id);
            // The first time an id is unknown it is asked again a few times, briefly, before its
            // records become dead letters; after that once per batch that holds it.
            let mut found = self.registry.schema(id, self.kind).await?;
            let mut pause = REASK_PAUSE;
            for _ in 0..if first { REASKS } else { 0 } {
                if !matches!(found, Lookup::Unknown(_)) {
                    break;
                }
                tokio::time::sleep(pause).await;
                pause *= 2;
                found = self.registry.schema(id, self.kind).await?;
            }
            let found = match found {
                Lookup::Found(fetched) => read(id, fetched).map(Arc::new).map_err(Unknown::Refused),
                Lookup::Unknown(why) => Err(Unknown::NotInRegistry(why)),
            };
            self.known.write().expect("schema cache lock").insert(id, found);
        }
        Ok(())
    }

    /// What id `id`'s schema reads as, or why its records are dead letters. Panics for an id
    /// [`ById::prepare`] was not given: decoding never runs before it.
    pub fn get(&self, id: u32) -> Result<Arc<W>, Rejected> {
        match self.known.read().expect("schema cache lock").get(&id) {
            Some(Ok(w)) => Ok(w.clone()),
            Some(Err(Unknown::NotInRegistry(why) | Unknown::Refused(why))) => Err((Rejection::UnknownSchema, why.clone())),
            None => panic!("schema id {id} was not fetched: Decoder::prepare runs before decode"),
        }
    }
}

/// The schema id of a value in the Confluent wire format (magic byte 0, a 4-byte big-endian id)
/// and what follows it.
pub fn confluent_id(bytes: &[u8]) -> Option<(u32, &[u8])> {
    match bytes {
        [0, a, b, c, d, rest @ ..] => Some((u32::from_be_bytes([*a, *b, *c, *d]), rest)),
        _ => None,
    }
}

/// Why `bytes` is not in the Confluent wire format (a rejection of kind `kind`).
pub fn not_confluent(bytes: &[u8], kind: Rejection) -> Rejected {
    (
        kind,
        format!(
            "not in the Confluent wire format (magic byte 0, a 4-byte schema id): starts with {:02x?}",
            &bytes[..bytes.len().min(5)]
        ),
    )
}

/// [`Registry::subject_version`] from synchronous code (config loading, which may run inside an
/// async runtime): on a thread of its own with its own runtime.
pub fn subject_version_now(
    config: &RegistryConfig,
    subject: &str,
    version: Option<u32>,
    kind: SchemaType,
) -> Result<Fetched, String> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("registry client: {e}"))?;
                runtime.block_on(async { Registry::new(config)?.subject_version(subject, version, kind).await })
            })
            .join()
            .unwrap_or_else(|_| Err("the registry client panicked".into()))
    })
}

/// How deep references may nest (a reference's own references, ...).
const MAX_REFERENCE_DEPTH: usize = 8;

/// The path of a subject's version.
fn subject_path(subject: &str, version: &str) -> String {
    let encoded: String = subject
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("subjects/{encoded}/versions/{version}")
}

/// A schema reference: a named type the schema uses, registered under a subject of its own.
#[derive(Debug, serde::Deserialize)]
struct Reference {
    name: String,
    subject: String,
    version: u32,
}

/// A registry's answer for a schema (`{"schema": "<schema text>", "schemaType": …,
/// "references": [...]}`): its text and references; `Err`: why it is no schema of kind `kind`.
fn answer(body: &str, what: &str, kind: SchemaType) -> Result<(String, Vec<Reference>), String> {
    let answer: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("the schema registry's answer for {what} is not JSON: {e}"))?;
    let given = answer.get("schemaType").and_then(|t| t.as_str()).unwrap_or("AVRO");
    if given != kind.name() {
        return Err(format!("{what} is a {given} schema, not {}", kind.name()));
    }
    let text = answer
        .get("schema")
        .and_then(|s| s.as_str())
        .ok_or_else(|| format!("the schema registry's answer for {what} has no schema"))?;
    let references = match answer.get("references") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(r) => serde_json::from_value(r.clone()).map_err(|e| format!("the references of {what} do not read: {e}"))?,
    };
    Ok((text.to_string(), references))
}

/// The Avro schema text of `fetched`, with the schemas it references written in where first used
/// (see [`inline`]).
pub fn inlined(fetched: &Fetched) -> Result<String, String> {
    let named: Vec<(String, String)> =
        fetched.references.iter().map(|(name, r)| Ok((name.clone(), inlined(r)?))).collect::<Result<_, String>>()?;
    if named.is_empty() {
        return Ok(fetched.text.clone());
    }
    inline(&fetched.text, &named)
}

/// `text` with each named schema of `named` (full name, schema text) written in where the
/// name is first used as a type, so the text parses alone (Avro's parser reads a name after its
/// definition). A name `text` does not use is left out.
fn inline(text: &str, named: &[(String, String)]) -> Result<String, String> {
    fn visit(v: &mut serde_json::Value, name: &str, schema: &mut Option<serde_json::Value>) {
        if schema.is_none() {
            return;
        }
        match v {
            serde_json::Value::String(s) if s == name => *v = schema.take().expect("checked above"),
            serde_json::Value::Array(items) => items.iter_mut().for_each(|i| visit(i, name, schema)),
            serde_json::Value::Object(o) => {
                for key in ["type", "items", "values"] {
                    if let Some(child) = o.get_mut(key) {
                        visit(child, name, schema);
                    }
                }
                if let Some(serde_json::Value::Array(fields)) = o.get_mut("fields") {
                    for f in fields.iter_mut().filter_map(|f| f.get_mut("type")) {
                        visit(f, name, schema);
                    }
                }
            }
            _ => {}
        }
    }
    let mut json: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    for (name, schema) in named {
        let schema = serde_json::from_str(schema).map_err(|e| format!("reference {name:?} is not JSON: {e}"))?;
        visit(&mut json, name, &mut Some(schema));
    }
    Ok(json.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_as_the_registry_writes_them() {
        let schema = r#"{"type": "record", "name": "R", "fields": [{"name": "a", "type": "long"}]}"#;
        let body = serde_json::json!({ "schema": schema }).to_string();
        assert_eq!(answer(&body, "id 1", SchemaType::Avro).unwrap().0, schema);
        let avro = serde_json::json!({ "schema": schema, "schemaType": "AVRO", "references": [] }).to_string();
        assert!(answer(&avro, "id 1", SchemaType::Avro).is_ok());
        assert!(answer(&avro, "id 1", SchemaType::Json).unwrap_err().contains("is a AVRO schema, not JSON"));
        for (body, why) in [
            (
                serde_json::json!({ "schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF" }).to_string(),
                "PROTOBUF schema, not AVRO",
            ),
            (serde_json::json!({ "id": 3 }).to_string(), "has no schema"),
            ("<html>".to_string(), "not JSON"),
        ] {
            let reason = answer(&body, "id 7", SchemaType::Avro).unwrap_err();
            assert!(reason.contains(why), "{reason}");
        }
    }

    #[test]
    fn references_are_written_in_where_first_used() {
        // Debezium's envelope as Apicurio's converter registers it: `Source` a subject of its own.
        let envelope = r#"{"type": "record", "name": "Envelope", "namespace": "t", "fields": [
            {"name": "source", "type": "io.debezium.Source"},
            {"name": "again", "type": ["null", "io.debezium.Source"]},
            {"name": "op", "type": "string"}]}"#;
        let source = r#"{"type": "record", "name": "Source", "namespace": "io.debezium", "fields": [{"name": "lsn", "type": ["null", "long"]}]}"#;
        use apache_avro::Schema;
        assert!(Schema::parse_str(envelope).is_err(), "alone it does not parse");
        let text = inline(envelope, &[("io.debezium.Source".into(), source.into())]).unwrap();
        let Schema::Record(r) = Schema::parse_str(&text).unwrap() else { panic!("a record") };
        assert!(matches!(&r.fields[0].schema, Schema::Record(s) if s.name.fullname(None) == "io.debezium.Source"));
        assert!(matches!(&r.fields[1].schema, Schema::Union(_)), "the second use names the type");
    }

    #[test]
    fn settings_are_checked_without_showing_the_password() {
        let config = |url: &str, user: Option<&str>| RegistryConfig {
            url: url.into(),
            username: user.map(String::from),
            password: Some(crate::config::security::Secret::Value("hunter2".into())),
            ca_file: None,
            timeout_ms: 1_000,
            attempts: 1,
        };
        assert!(Registry::new(&config("ftp://x", Some("u"))).unwrap_err().contains("give http://"));
        let e = Registry::new(&config("http://127.0.0.1:1", None)).unwrap_err();
        assert!(e.contains("both username and password") && !e.contains("hunter2"), "{e}");
        let registry = Registry::new(&config("http://127.0.0.1:1/", Some("u"))).unwrap();
        assert_eq!(registry.base, "http://127.0.0.1:1");
        assert!(!format!("{registry:?}").contains("hunter2"));
    }

    #[tokio::test]
    async fn a_registry_that_does_not_answer_is_an_error_not_an_unknown_id() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let registry = Registry::new(&RegistryConfig {
            url: format!("http://127.0.0.1:{port}"),
            username: None,
            password: None,
            ca_file: None,
            timeout_ms: 500,
            attempts: 2,
        })
        .unwrap();
        let e = registry.schema(5, SchemaType::Avro).await.unwrap_err();
        assert!(e.contains("did not answer for schema id 5 after 2 attempts"), "{e}");
    }
}
