//! A Confluent-compatible schema registry (Confluent Schema Registry, Apicurio's `ccompat` API,
//! Karapace, Redpanda): writer schemas by id, `GET <url>/schemas/ids/<id>`, over HTTP or HTTPS
//! with the registry's basic auth and an optional private CA. Each id found is fetched once and
//! kept for the life of the process ([`super::avro::Avro`] holds the cache).
//!
//! A registry that does not answer, or answers with a server error, is asked again with a
//! growing pause (`attempts` times in all); then the batch fails, and the consumer restarts
//! through the restart budget — a record is never skipped or dead-lettered because the registry
//! was away. An id the registry does not know (HTTP 404) may be one it does not know *yet* (a
//! replica behind, a registry restarted from an empty store): it is asked again a few times
//! before its records become dead letters, and again by every later batch that holds it — a 404
//! is never final for the process. A schema that is not Avro makes the record a dead letter with
//! that reason. Refused credentials (401/403) fail at once.

use std::time::Duration;

use apache_avro::Schema;

use crate::config::RegistryConfig;

/// What the registry says of a schema id.
#[derive(Debug)]
pub enum Lookup {
    /// The writer schema.
    Found(Schema),
    /// Why a record with this id is a dead letter.
    Unknown(String),
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

    /// The writer schema with id `id`; `Err` when the registry cannot be asked (after the
    /// retries) or refuses the credentials.
    pub async fn schema(&self, id: u32) -> Result<Lookup, String> {
        let what = format!("schema id {id}");
        let Some(body) = self.get(&format!("schemas/ids/{id}"), &what).await? else {
            return Ok(Lookup::Unknown(format!("unknown writer schema id {id} (the schema registry has none)")));
        };
        Ok(match self.resolved(&body, &what, 0).await? {
            Ok(text) => match Schema::parse_str(&super::avro::connect_types(&text).0) {
                Ok(schema) => Lookup::Found(schema),
                Err(e) => Lookup::Unknown(format!("writer schema id {id} from the registry is not an Avro schema: {e}")),
            },
            Err(why) => Lookup::Unknown(why),
        })
    }

    /// The text of version `version` (`None`: the latest) of subject `subject`: a reader schema.
    /// `Err` names the registry and the problem: no such subject or version, not Avro, or the
    /// registry cannot be asked.
    pub async fn subject_version(&self, subject: &str, version: Option<u32>) -> Result<String, String> {
        let v = version.map_or("latest".to_string(), |v| v.to_string());
        let what = format!("subject {subject:?} version {v}");
        let Some(body) = self.get(&subject_path(subject, &v), &what).await? else {
            return Err(format!("schema registry {} has no {what}", self.base));
        };
        self.resolved(&body, &what, 0).await?.map_err(|why| format!("schema registry {}: {why}", self.base))
    }

    /// The Avro schema text of a registry's answer `body`, with the schemas it references
    /// written in (see [`inline`]), fetched as their subjects' versions. `Ok(Err(why))`: the
    /// answer is no Avro schema, or a reference is missing; `Err`: the registry cannot be asked.
    fn resolved<'a>(
        &'a self,
        body: &'a str,
        what: &'a str,
        depth: usize,
    ) -> futures::future::BoxFuture<'a, Result<Result<String, String>, String>> {
        Box::pin(async move {
            let (text, references) = match answer(body, what) {
                Ok(a) => a,
                Err(why) => return Ok(Err(why)),
            };
            if references.is_empty() {
                return Ok(Ok(text));
            }
            if depth >= MAX_REFERENCE_DEPTH {
                return Ok(Err(format!("{what}: references nested deeper than {MAX_REFERENCE_DEPTH}")));
            }
            let mut named = Vec::with_capacity(references.len());
            for r in references {
                let of = format!("{what}: reference {:?} (subject {:?} version {})", r.name, r.subject, r.version);
                let Some(body) = self.get(&subject_path(&r.subject, &r.version.to_string()), &of).await? else {
                    return Ok(Err(format!("{of} is not in the registry")));
                };
                match self.resolved(&body, &of, depth + 1).await? {
                    Ok(text) => named.push((r.name, text)),
                    Err(why) => return Ok(Err(why)),
                }
            }
            Ok(inline(&text, &named).map_err(|why| format!("{what}: {why}")))
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

/// [`Registry::subject_version`] from synchronous code (config loading, which may run inside an
/// async runtime): on a thread of its own with its own runtime.
pub fn subject_version_now(config: &RegistryConfig, subject: &str, version: Option<u32>) -> Result<String, String> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("registry client: {e}"))?;
                runtime.block_on(async { Registry::new(config)?.subject_version(subject, version).await })
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

/// A registry's answer for a schema (`{"schema": "<Avro schema JSON>", "schemaType": …,
/// "references": [...]}`): its text and references; `Err`: why it is no Avro schema.
fn answer(body: &str, what: &str) -> Result<(String, Vec<Reference>), String> {
    let answer: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("the schema registry's answer for {what} is not JSON: {e}"))?;
    match answer.get("schemaType").and_then(|t| t.as_str()) {
        None | Some("AVRO") => {}
        Some(other) => return Err(format!("{what} is a {other} schema, not Avro")),
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
        assert_eq!(answer(&body, "id 1").unwrap().0, schema);
        let avro = serde_json::json!({ "schema": schema, "schemaType": "AVRO", "references": [] }).to_string();
        assert!(answer(&avro, "id 1").is_ok());
        for (body, why) in [
            (serde_json::json!({ "schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF" }).to_string(), "PROTOBUF schema"),
            (serde_json::json!({ "id": 3 }).to_string(), "has no schema"),
            ("<html>".to_string(), "not JSON"),
        ] {
            let reason = answer(&body, "id 7").unwrap_err();
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
        let e = registry.schema(5).await.unwrap_err();
        assert!(e.contains("did not answer for schema id 5 after 2 attempts"), "{e}");
    }
}
