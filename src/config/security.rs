//! How every Kafka client of a pipeline encrypts and authenticates (`[source.security]`).
//!
//! - [`SecurityConfig`]: the common cases by name — protocol, SASL mechanism, username and
//!   password, CA file, client certificate and key, OIDC client credentials — turned into
//!   librdkafka properties by [`SecurityConfig::properties`]. Anything else goes in
//!   `source.properties` as raw librdkafka properties.
//! - [`Secret`]: a password given in the TOML, or read from an environment variable or a file.
//!   Never shown: `Debug` and `Display` print where it comes from, not what it is.
//!
//! What a refused connection means is `source::security::diagnose`'s.

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The security protocol of every connection to the brokers (librdkafka's `security.protocol`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// No encryption, no authentication (a local or fully trusted network only).
    #[default]
    Plaintext,
    /// TLS; with `cert_file`/`key_file`, mutual TLS (the client authenticates by certificate).
    Ssl,
    /// SASL authentication without encryption: the password crosses the network in the clear
    /// with PLAIN.
    SaslPlaintext,
    /// SASL authentication over TLS: what managed Kafka services use.
    SaslSsl,
}

impl Protocol {
    /// librdkafka's name.
    pub fn librdkafka(self) -> &'static str {
        match self {
            Protocol::Plaintext => "PLAINTEXT",
            Protocol::Ssl => "SSL",
            Protocol::SaslPlaintext => "SASL_PLAINTEXT",
            Protocol::SaslSsl => "SASL_SSL",
        }
    }

    /// Whether connections are encrypted.
    pub fn tls(self) -> bool {
        matches!(self, Protocol::Ssl | Protocol::SaslSsl)
    }

    /// Whether connections authenticate with SASL.
    pub fn sasl(self) -> bool {
        matches!(self, Protocol::SaslPlaintext | Protocol::SaslSsl)
    }
}

/// The SASL mechanism (librdkafka's `sasl.mechanism`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum Mechanism {
    /// Username and password, sent as they are (inside TLS with `sasl_ssl`). Confluent Cloud,
    /// Azure Event Hubs.
    #[serde(rename = "PLAIN")]
    Plain,
    /// Salted challenge-response with SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// Salted challenge-response with SHA-512. Amazon MSK, Aiven.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    /// OAuth 2 bearer tokens; with `[source.security.oauth]`, fetched from an OIDC token endpoint
    /// with the client-credentials grant.
    #[serde(rename = "OAUTHBEARER")]
    OAuthBearer,
}

impl Mechanism {
    /// librdkafka's (and Kafka's) name.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
            Mechanism::OAuthBearer => "OAUTHBEARER",
        }
    }
}

/// `[source.security]`: how the clients of a pipeline (and `verify`, `produce`, `topics`,
/// `check`) reach secured brokers. Every field is optional; the default is plaintext.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub protocol: Protocol,
    /// The SASL mechanism, with `sasl_*` protocols: `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`
    /// or `OAUTHBEARER`.
    pub mechanism: Option<Mechanism>,
    /// The SASL username (PLAIN, SCRAM). Event Hubs: `$ConnectionString`.
    pub username: Option<String>,
    /// The SASL password (PLAIN, SCRAM): `"…"`, `{ env = "VAR" }` or `{ file = "path" }`.
    pub password: Option<Secret>,
    /// PEM file of the CA certificates that may sign the brokers' certificates (default: the
    /// system's CA store).
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate, for mutual TLS (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub key_file: Option<PathBuf>,
    /// The private key's password, if it is encrypted: `"…"`, `{ env = "VAR" }` or
    /// `{ file = "path" }`.
    pub key_password: Option<Secret>,
    /// Check that a broker's certificate names the host connected to (default true). Turn off
    /// only for brokers whose certificates name no reachable host.
    pub verify_hostname: bool,
    /// OIDC client credentials for `OAUTHBEARER`.
    pub oauth: Option<OAuthConfig>,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            protocol: Protocol::Plaintext,
            mechanism: None,
            username: None,
            password: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            key_password: None,
            verify_hostname: true,
            oauth: None,
        }
    }
}

/// `[source.security.oauth]`: OAUTHBEARER tokens from an OIDC token endpoint (client-credentials
/// grant), renewed by librdkafka before they expire.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    /// The token endpoint, `https://…/oauth2/token`.
    pub token_url: String,
    /// The client id.
    pub client_id: String,
    /// The client secret: `"…"`, `{ env = "VAR" }` or `{ file = "path" }`.
    pub client_secret: Secret,
    /// Scopes to ask for, space separated.
    #[serde(default)]
    pub scope: Option<String>,
}

/// librdkafka properties that `[source.security]` sets; `source.properties` may set them only
/// when the section does not.
pub const SECURITY_PROPERTIES: &[&str] = &[
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.key.password",
    "ssl.endpoint.identification.algorithm",
    "sasl.oauthbearer.method",
    "sasl.oauthbearer.token.endpoint.url",
    "sasl.oauthbearer.client.id",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.scope",
];

/// Why a `[source.security]` setting cannot be used: the field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted field name, under `source.security`.
    pub field: String,
    /// What is wrong and what to do.
    pub problem: String,
}

/// A problem with `source.security.<field>`.
pub(crate) fn problem(field: &str, text: impl Into<String>) -> Problem {
    Problem { field: format!("source.security.{field}"), problem: text.into() }
}

impl SecurityConfig {
    /// Whether the section sets anything at all.
    pub fn is_default(&self) -> bool {
        self == &SecurityConfig::default()
    }

    /// One line for progress and messages: protocol, mechanism and user — never a secret.
    pub fn summary(&self) -> String {
        let mut s = self.protocol.librdkafka().to_string();
        if let Some(m) = self.mechanism {
            s.push(' ');
            s.push_str(m.name());
        }
        if let Some(u) = &self.username {
            s.push_str(&format!(" as '{u}'"));
        }
        if self.cert_file.is_some() {
            s.push_str(" with a client certificate");
        }
        s
    }

    /// Checks the settings as written (nothing is read): combinations that cannot work, and raw
    /// properties that contradict the section. Whether the files can be read is asked when the
    /// config is planned, and again when a connection is made (`source::security::files_readable`).
    pub fn check(&self, raw: &std::collections::BTreeMap<String, String>) -> Result<(), Problem> {
        self.check_sasl(raw)?;
        self.check_tls()?;
        if !self.is_default() {
            if let Some(key) = SECURITY_PROPERTIES.iter().find(|k| raw.contains_key(**k)) {
                return Err(Problem {
                    field: format!("source.properties.\"{key}\""),
                    problem:
                        "is also set by [source.security]; set it in one place (the section's fields are the documented way)"
                            .into(),
                });
            }
        }
        Ok(())
    }

    /// The SASL mechanism against the protocol, and the credentials the mechanism needs.
    fn check_sasl(&self, raw: &std::collections::BTreeMap<String, String>) -> Result<(), Problem> {
        let p = self.protocol;
        match (p.sasl(), self.mechanism) {
            (true, None) => {
                return Err(problem(
                    "mechanism",
                    format!(
                        "is missing; protocol = \"{}\" needs one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER",
                        serde_name(p)
                    ),
                ))
            }
            (false, Some(m)) => {
                return Err(problem(
                    "mechanism",
                    format!(
                        "is {} but protocol = \"{}\" does not authenticate with SASL; use protocol = \"sasl_ssl\"",
                        m.name(),
                        serde_name(p)
                    ),
                ))
            }
            _ => {}
        }
        match self.mechanism {
            Some(Mechanism::Plain | Mechanism::ScramSha256 | Mechanism::ScramSha512) => {
                if self.username.as_deref().is_none_or(str::is_empty) {
                    return Err(problem("username", "is missing; the SASL mechanism needs a username and a password"));
                }
                if self.password.is_none() {
                    return Err(problem(
                        "password",
                        "is missing; give it as password = { env = \"KAFKA_PASSWORD\" } or { file = \"/run/secrets/kafka\" }",
                    ));
                }
            }
            Some(Mechanism::OAuthBearer) => {
                let raw_oauth =
                    raw.contains_key("enable.sasl.oauthbearer.unsecure.jwt") || raw.contains_key("sasl.oauthbearer.config");
                if self.oauth.is_none() && !raw_oauth {
                    return Err(problem(
                        "oauth",
                        "is missing; OAUTHBEARER needs [source.security.oauth] with token_url, client_id and client_secret",
                    ));
                }
                if self.username.is_some() || self.password.is_some() {
                    return Err(problem("username", "is not used with OAUTHBEARER; give [source.security.oauth] instead"));
                }
            }
            None => {
                if self.username.is_some() || self.password.is_some() {
                    return Err(problem(
                        "username",
                        "is set but the protocol does not authenticate with SASL; use protocol = \"sasl_ssl\" and a mechanism",
                    ));
                }
            }
        }
        if self.oauth.is_some() && self.mechanism != Some(Mechanism::OAuthBearer) {
            return Err(problem("oauth", "is only used with mechanism = \"OAUTHBEARER\""));
        }
        if let Some(o) = &self.oauth {
            if !(o.token_url.starts_with("https://") || o.token_url.starts_with("http://")) {
                return Err(problem("oauth.token_url", "must be an http(s):// URL"));
            }
            if o.client_id.is_empty() {
                return Err(problem("oauth.client_id", "is empty"));
            }
        }
        Ok(())
    }

    /// The TLS files against the protocol.
    fn check_tls(&self) -> Result<(), Problem> {
        let p = self.protocol;
        if !p.tls() {
            for (field, set) in [
                ("ca_file", self.ca_file.is_some()),
                ("cert_file", self.cert_file.is_some()),
                ("key_file", self.key_file.is_some()),
                ("key_password", self.key_password.is_some()),
            ] {
                if set {
                    return Err(problem(
                        field,
                        format!("is set but protocol = \"{}\" does not use TLS; use \"ssl\" or \"sasl_ssl\"", serde_name(p)),
                    ));
                }
            }
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            let missing = if self.cert_file.is_some() { "key_file" } else { "cert_file" };
            return Err(problem(missing, "is missing; a client certificate needs both cert_file and key_file"));
        }
        if self.key_password.is_some() && self.key_file.is_none() {
            return Err(problem("key_password", "is set without key_file"));
        }
        Ok(())
    }

    /// The librdkafka properties for these settings, secrets read from where they are kept.
    pub fn properties(&self) -> Result<Vec<(String, String)>, Problem> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut set = |k: &str, v: String| out.push((k.to_string(), v));
        if self.is_default() {
            return Ok(Vec::new());
        }
        set("security.protocol", self.protocol.librdkafka().into());
        if let Some(m) = self.mechanism {
            set("sasl.mechanism", m.name().into());
        }
        if let Some(u) = &self.username {
            set("sasl.username", u.clone());
        }
        if let Some(p) = &self.password {
            set("sasl.password", p.reveal().map_err(|e| problem("password", e))?);
        }
        if self.protocol.tls() {
            if let Some(ca) = &self.ca_file {
                set("ssl.ca.location", ca.display().to_string());
            }
            if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
                set("ssl.certificate.location", cert.display().to_string());
                set("ssl.key.location", key.display().to_string());
            }
            if let Some(p) = &self.key_password {
                set("ssl.key.password", p.reveal().map_err(|e| problem("key_password", e))?);
            }
            set("ssl.endpoint.identification.algorithm", if self.verify_hostname { "https" } else { "none" }.into());
        }
        if let Some(o) = &self.oauth {
            set("sasl.oauthbearer.method", "oidc".into());
            set("sasl.oauthbearer.token.endpoint.url", o.token_url.clone());
            set("sasl.oauthbearer.client.id", o.client_id.clone());
            set("sasl.oauthbearer.client.secret", o.client_secret.reveal().map_err(|e| problem("oauth.client_secret", e))?);
            if let Some(scope) = &o.scope {
                set("sasl.oauthbearer.scope", scope.clone());
            }
        }
        Ok(out)
    }
}

/// The protocol as the config spells it.
pub fn serde_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Plaintext => "plaintext",
        Protocol::Ssl => "ssl",
        Protocol::SaslPlaintext => "sasl_plaintext",
        Protocol::SaslSsl => "sasl_ssl",
    }
}

/// A secret: given in the TOML (`"…"`), or read from an environment variable
/// (`{ env = "KAFKA_PASSWORD" }`) or a file (`{ file = "/run/secrets/kafka" }`, one trailing
/// newline ignored) when the command starts. Never shown: `Debug` and `Display` say where it
/// comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// Written in the config (prefer `env` or `file`: config files get copied and committed).
    Value(String),
    /// The value of this environment variable.
    Env(String),
    /// The content of this file.
    File(PathBuf),
}

impl Secret {
    /// The secret's value; the error names the variable or file, never a value.
    pub fn reveal(&self) -> Result<String, String> {
        match self {
            Secret::Value(v) => Ok(v.clone()),
            Secret::Env(var) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(v),
                Ok(_) => Err(format!("reads the environment variable {var}, which is empty")),
                Err(_) => Err(format!("reads the environment variable {var}, which is not set")),
            },
            Secret::File(path) => match std::fs::read_to_string(path) {
                Ok(v) => {
                    let v = v.strip_suffix('\n').map(|v| v.strip_suffix('\r').unwrap_or(v)).unwrap_or(&v).to_string();
                    if v.is_empty() {
                        Err(format!("reads the file {}, which is empty", path.display()))
                    } else {
                        Ok(v)
                    }
                }
                Err(e) => Err(format!("reads the file {}, which cannot be read: {e}", path.display())),
            },
        }
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Value(_) => f.write_str("<hidden>"),
            Secret::Env(var) => write!(f, "<from ${var}>"),
            Secret::File(path) => write!(f, "<from {}>", path.display()),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Written back as it was given (a config file a test writes): serializing is not showing.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Secret::Value(v) => s.serialize_str(v),
            Secret::Env(var) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("env", var)?;
                m.end()
            }
            Secret::File(path) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("file", path)?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, { env = \"VARIABLE\" } or { file = \"path\" }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret::Value(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Secret, A::Error> {
                let Some(key) = map.next_key::<String>()? else {
                    return Err(de::Error::custom("is an empty table; give { env = \"VARIABLE\" } or { file = \"path\" }"));
                };
                let value: String = map.next_value()?;
                let secret = match key.as_str() {
                    "env" => Secret::Env(value),
                    "file" => Secret::File(PathBuf::from(value)),
                    other => {
                        return Err(de::Error::custom(format!(
                            "has `{other}`; give {{ env = \"VARIABLE\" }} or {{ file = \"path\" }}"
                        )))
                    }
                };
                if map.next_key::<String>()?.is_some() {
                    return Err(de::Error::custom("names more than one source; give either env or file"));
                }
                Ok(secret)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// SASL_SSL with SCRAM-SHA-512 and a password given in the TOML.
    pub(crate) fn sasl() -> SecurityConfig {
        SecurityConfig {
            protocol: Protocol::SaslSsl,
            mechanism: Some(Mechanism::ScramSha512),
            username: Some("u".into()),
            password: Some(Secret::Value("hunter2".into())),
            ..Default::default()
        }
    }

    #[test]
    fn secrets_are_never_shown() {
        let c = sasl();
        let shown = format!("{c:?} {} {}", c.summary(), c.password.as_ref().unwrap());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(c.properties().unwrap().contains(&("sasl.password".into(), "hunter2".into())));
    }

    #[test]
    fn secrets_come_from_env_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\n").unwrap();
        assert_eq!(Secret::File(file).reveal().unwrap(), "from-file");
        let missing = Secret::Env("EXACTLY_TEST_SURELY_UNSET".into()).reveal().unwrap_err();
        assert!(missing.contains("EXACTLY_TEST_SURELY_UNSET") && missing.contains("not set"));
        let parsed: SecurityConfig =
            toml::from_str("protocol = \"sasl_ssl\"\nmechanism = \"PLAIN\"\nusername = \"u\"\npassword = { env = \"P\" }\n")
                .unwrap();
        assert_eq!(parsed.password, Some(Secret::Env("P".into())));
        let again: SecurityConfig = toml::from_str(&toml::to_string(&parsed).unwrap()).unwrap();
        assert_eq!(again, parsed, "a written config reads back the same");
        assert!(toml::from_str::<SecurityConfig>("password = { vault = \"x\" }").is_err());
    }

    #[test]
    fn impossible_combinations_name_their_field() {
        let raw = Default::default();
        let mut c = sasl();
        c.mechanism = None;
        assert_eq!(c.check(&raw).unwrap_err().field, "source.security.mechanism");
        let mut c = sasl();
        c.password = None;
        assert_eq!(c.check(&raw).unwrap_err().field, "source.security.password");
        let mut c = sasl();
        c.protocol = Protocol::Plaintext;
        assert_eq!(c.check(&raw).unwrap_err().field, "source.security.mechanism");
        let c = SecurityConfig { protocol: Protocol::Ssl, cert_file: Some("/etc/hostname".into()), ..Default::default() };
        assert!(c.check(&raw).unwrap_err().field.ends_with("key_file"));
        let raw: std::collections::BTreeMap<String, String> = [("sasl.username".to_string(), "x".to_string())].into();
        assert!(sasl().check(&raw).unwrap_err().field.contains("sasl.username"));
    }
}
