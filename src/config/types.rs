//! The declared column types (`decode.fields`) and their text form (`"struct<a: long>"`).

use super::*;

/// One declared column (or, inside a `struct`, one member).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(try_from = "FieldSpec", into = "FieldSpec")]
pub struct FieldConfig {
    /// Column name = JSON key.
    pub name: String,
    /// Column type.
    pub kind: FieldType,
    /// Whether the key may be missing or null (then the column is null). A record missing a
    /// non-nullable field is dead-lettered.
    pub nullable: bool,
}

impl FieldConfig {
    /// A field of `kind`, nullable or not.
    pub fn new(name: &str, kind: FieldType, nullable: bool) -> Self {
        FieldConfig { name: name.to_string(), kind, nullable }
    }
}

/// A field as written in the config: `{ name = "id", type = "long", nullable = false }`; a
/// `struct` gives its members either inline (`type = "struct<a: long, b: string>"`) or as
/// `fields = [...]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldSpec {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default = "yes")]
    nullable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fields: Option<Vec<FieldConfig>>,
}

impl TryFrom<FieldSpec> for FieldConfig {
    type Error = String;

    fn try_from(spec: FieldSpec) -> std::result::Result<Self, String> {
        let kind = match (FieldType::parse(&spec.kind), spec.fields) {
            (Ok(FieldType::Struct(inline)), None) if inline.is_empty() => {
                return Err(format!(
                    "field `{}`: a struct needs its members: `fields = [...]` or `struct<a: long, ...>`",
                    spec.name
                ))
            }
            (Ok(FieldType::Struct(inline)), Some(fields)) if inline.is_empty() => FieldType::Struct(fields),
            (Ok(_), Some(_)) => return Err(format!("field `{}`: `fields` is only for `type = \"struct\"`", spec.name)),
            (Ok(kind), None) => kind,
            (Err(e), _) => return Err(format!("field `{}`: {e}", spec.name)),
        };
        Ok(FieldConfig { name: spec.name, kind, nullable: spec.nullable })
    }
}

impl From<FieldConfig> for FieldSpec {
    fn from(f: FieldConfig) -> Self {
        FieldSpec { name: f.name, kind: f.kind.to_string(), nullable: f.nullable, fields: None }
    }
}

fn yes() -> bool {
    true
}

/// Column types a JSON field can be decoded to, each stored as the Delta type Spark writes for
/// it. In the config a type is written as text: `long`, `decimal(12, 2)`, `array<string>`,
/// `map<string, double>`, `struct<id: long not null, tags: array<string>>`.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldType {
    /// UTF-8 text (a JSON string).
    String,
    /// 64-bit integer (a JSON integer).
    Long,
    /// 32-bit integer (a JSON integer in range).
    Int,
    /// 64-bit float (any JSON number).
    Double,
    /// 32-bit float (any JSON number, rounded to the nearest `float`; Avro `float`).
    Float,
    /// `true` / `false`.
    Boolean,
    /// A timestamp given as epoch milliseconds (a JSON integer) or as an RFC 3339 / ISO 8601
    /// string with a zone (`2026-11-26T12:00:00.123456Z`, `…+02:00`; microseconds kept);
    /// stored as a Delta `timestamp` (UTC, microseconds).
    Timestamp,
    /// A calendar date given as an ISO 8601 string `YYYY-MM-DD`; stored as a Delta `date`.
    Date,
    /// Bytes given as a base64 string (standard alphabet, padded, as Spark's `to_json` writes
    /// binary); stored as a Delta `binary`.
    Binary,
    /// An exact decimal number with `precision` digits, `scale` of them after the point, given
    /// as a JSON number or a string (`12.30`, `"12.30"`, `1.2e1`), read from its text (never
    /// through a float). More fraction digits than `scale`, or more integer digits than
    /// `precision - scale`, make the record a dead letter.
    Decimal {
        /// Total digits, 1 to 38.
        precision: u8,
        /// Digits after the point, 0 to `precision`.
        scale: u8,
    },
    /// A JSON array of values of one type (elements may be null); a Delta `array`.
    List(Box<FieldType>),
    /// A JSON object with string keys and values of one type (values may be null); a Delta
    /// `map<string, T>`.
    Map(Box<FieldType>),
    /// A JSON object with declared members (others ignored); a Delta `struct`.
    Struct(Vec<FieldConfig>),
}

impl FieldType {
    /// Parses a type as written in the config (case-insensitive keywords).
    pub fn parse(text: &str) -> std::result::Result<FieldType, String> {
        let mut p = TypeParser { s: text, at: 0 };
        let t = p.ty()?;
        p.space();
        if p.at < p.s.len() {
            return Err(format!("unexpected {:?} in type {text:?}", &p.s[p.at..]));
        }
        Ok(t)
    }

    /// Whether values of this type can form a key (dedup, grouping): not nested, not decimal,
    /// not float.
    pub fn is_key_type(&self) -> bool {
        !matches!(
            self,
            FieldType::Float | FieldType::Decimal { .. } | FieldType::List(_) | FieldType::Map(_) | FieldType::Struct(_)
        )
    }
}

impl std::fmt::Display for FieldType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FieldType::String => f.write_str("string"),
            FieldType::Long => f.write_str("long"),
            FieldType::Int => f.write_str("int"),
            FieldType::Double => f.write_str("double"),
            FieldType::Float => f.write_str("float"),
            FieldType::Boolean => f.write_str("boolean"),
            FieldType::Timestamp => f.write_str("timestamp"),
            FieldType::Date => f.write_str("date"),
            FieldType::Binary => f.write_str("binary"),
            FieldType::Decimal { precision, scale } => write!(f, "decimal({precision}, {scale})"),
            FieldType::List(t) => write!(f, "array<{t}>"),
            FieldType::Map(t) => write!(f, "map<string, {t}>"),
            FieldType::Struct(fields) => {
                f.write_str("struct<")?;
                for (i, m) in fields.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    let not_null = if m.nullable { "" } else { " not null" };
                    if !m.name.is_empty() && m.name.chars().all(|c| c.is_alphanumeric() || c == '_') {
                        write!(f, "{sep}{}: {}{not_null}", m.name, m.kind)?;
                    } else {
                        write!(f, "{sep}`{}`: {}{not_null}", m.name, m.kind)?;
                    }
                }
                f.write_str(">")
            }
        }
    }
}

/// Checks the members of a struct anywhere in `t` (under `at`): named, each once.
pub(super) fn check_members(t: &FieldType, at: &str) -> std::result::Result<(), String> {
    match t {
        FieldType::List(t) | FieldType::Map(t) => check_members(t, at),
        FieldType::Struct(members) => {
            let mut seen = std::collections::HashSet::new();
            for m in members {
                if m.name.is_empty() || !seen.insert(m.name.as_str()) {
                    return Err(format!("struct `{at}` has an empty or repeated member name {:?}", m.name));
                }
                check_members(&m.kind, &format!("{at}.{}", m.name))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A recursive-descent reader of the type text.
struct TypeParser<'a> {
    s: &'a str,
    at: usize,
}

impl TypeParser<'_> {
    fn space(&mut self) {
        while self.s[self.at..].starts_with(char::is_whitespace) {
            self.at += self.s[self.at..].chars().next().map_or(1, char::len_utf8);
        }
    }

    fn eat(&mut self, c: char) -> bool {
        self.space();
        if self.s[self.at..].starts_with(c) {
            self.at += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> std::result::Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected `{c}` at {:?} in type {:?}", &self.s[self.at..], self.s))
        }
    }

    /// A word: letters, digits, `_` (a member name or a keyword), or a backquoted name.
    fn word(&mut self) -> std::result::Result<String, String> {
        self.space();
        let rest = &self.s[self.at..];
        if let Some(quoted) = rest.strip_prefix('`') {
            let end = quoted.find('`').ok_or_else(|| format!("unclosed ` in type {:?}", self.s))?;
            self.at += end + 2;
            return Ok(quoted[..end].to_string());
        }
        let len = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
        if len == 0 {
            return Err(format!("expected a type or name at {rest:?} in type {:?}", self.s));
        }
        self.at += len;
        Ok(rest[..len].to_string())
    }

    fn number(&mut self) -> std::result::Result<u8, String> {
        let w = self.word()?;
        w.parse().map_err(|_| format!("expected a number, got {w:?} in type {:?}", self.s))
    }

    fn ty(&mut self) -> std::result::Result<FieldType, String> {
        let word = self.word()?;
        Ok(match word.to_ascii_lowercase().as_str() {
            "string" => FieldType::String,
            "long" | "bigint" => FieldType::Long,
            "int" | "integer" => FieldType::Int,
            "double" => FieldType::Double,
            "float" | "real" => FieldType::Float,
            "boolean" => FieldType::Boolean,
            "timestamp" => FieldType::Timestamp,
            "date" => FieldType::Date,
            "binary" => FieldType::Binary,
            "decimal" => {
                let (precision, scale) = if self.eat('(') {
                    let p = self.number()?;
                    let s = if self.eat(',') { self.number()? } else { 0 };
                    self.expect(')')?;
                    (p, s)
                } else {
                    (10, 0)
                };
                if !(1..=38).contains(&precision) || scale > precision {
                    return Err(format!("decimal({precision}, {scale}): precision must be 1 to 38 and scale 0 to the precision"));
                }
                FieldType::Decimal { precision, scale }
            }
            "array" | "list" => {
                self.expect('<')?;
                let t = self.ty()?;
                self.expect('>')?;
                FieldType::List(Box::new(t))
            }
            "map" => {
                self.expect('<')?;
                if self.ty()? != FieldType::String {
                    return Err(format!("map keys must be strings (JSON object keys), in type {:?}", self.s));
                }
                self.expect(',')?;
                let t = self.ty()?;
                self.expect('>')?;
                FieldType::Map(Box::new(t))
            }
            "struct" => {
                let mut fields = Vec::new();
                if self.eat('<') {
                    loop {
                        let name = self.word()?;
                        self.expect(':')?;
                        let kind = self.ty()?;
                        let save = self.at;
                        let nullable = match self.word() {
                            Ok(w) if w.eq_ignore_ascii_case("not") => {
                                let null = self.word()?;
                                if !null.eq_ignore_ascii_case("null") {
                                    return Err(format!("expected `not null` in type {:?}", self.s));
                                }
                                false
                            }
                            _ => {
                                self.at = save;
                                true
                            }
                        };
                        fields.push(FieldConfig { name, kind, nullable });
                        if !self.eat(',') {
                            break;
                        }
                    }
                    self.expect('>')?;
                }
                FieldType::Struct(fields)
            }
            other => {
                return Err(format!(
                    "unknown type {other:?}; types are string, long, int, double, float, boolean, timestamp, date, binary, \
                     decimal(p, s), array<T>, map<string, T>, struct<name: T, ...>"
                ))
            }
        })
    }
}
