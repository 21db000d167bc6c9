//! `${VAR}` and `${VAR:-default}` in a config file: one file for every environment.
//!
//! Substituted anywhere in the text before it is parsed (`$${` writes a literal `${`). A
//! variable that is not set, without a default, is an error naming it and its line; lines that
//! are comments are left as they are. Errors about the parsed config show the file's own lines,
//! never a substituted value, so a secret given through the environment is not printed.

/// What was put in for each variable: (name, value).
pub type Values = Vec<(String, String)>;

/// `text` with every `${VAR}` / `${VAR:-default}` replaced from `env`, and what was put in for
/// each variable (for [`hide`]); `Err`: the line number and what is wrong (never a value).
pub fn substitute(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<(String, Values), (usize, String)> {
    let mut out = String::with_capacity(text.len());
    let mut values = Vec::new();
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("${") {
            if rest[..at].ends_with('$') {
                // `$${`: a literal `${`.
                out.push_str(&rest[..at - 1]);
                out.push_str("${");
                rest = &rest[at + 2..];
                continue;
            }
            out.push_str(&rest[..at]);
            let Some(end) = rest[at..].find('}') else {
                return Err((i + 1, "has `${` without its closing `}`".into()));
            };
            let inner = &rest[at + 2..at + end];
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err((i + 1, format!("has `${{{inner}}}`: a variable's name is letters, digits and `_`")));
            }
            match (env(name).filter(|v| !v.is_empty()), default) {
                (Some(value), _) => {
                    out.push_str(&value);
                    values.push((name.to_string(), value));
                }
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err((
                        i + 1,
                        format!("uses ${{{name}}}, which is not set (set it, or give a default: ${{{name}:-value}})"),
                    ))
                }
            }
            rest = &rest[at + end + 1..];
        }
        out.push_str(rest);
    }
    Ok((out, values))
}

/// `message` with every value taken from the environment shown as its `${VAR}` again.
pub fn hide(message: &str, values: &Values) -> String {
    let mut out = message.to_string();
    for (name, value) in values {
        out = out.replace(value.as_str(), &format!("${{{name}}}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "BROKERS" => Some("kafka:9092".into()),
            "EMPTY" => Some(String::new()),
            "SECRET" => Some("hunter2".into()),
            _ => None,
        }
    }

    #[test]
    fn variables_and_defaults_are_substituted_and_a_missing_one_is_named_with_its_line() {
        let text = "brokers = \"${BROKERS}\"\npath = \"${ROOT:-/data}/t\"\nx = \"${EMPTY:-e}\"\n";
        let (out, values) = substitute(text, env).unwrap();
        assert_eq!(out, "brokers = \"kafka:9092\"\npath = \"/data/t\"\nx = \"e\"\n");
        assert_eq!(hide("got \"kafka:9092\"", &values), "got \"${BROKERS}\"");
        let (out, _) = substitute("a = \"$${NOT}\"\n# ${UNSET} in a comment\n", env).unwrap();
        assert_eq!(out, "a = \"${NOT}\"\n# ${UNSET} in a comment\n");
        let (line, why) = substitute("a = 1\nb = \"${UNSET}\"\n", env).unwrap_err();
        assert_eq!(line, 2);
        assert!(why.contains("${UNSET}") && why.contains("${UNSET:-value}"), "{why}");
        assert!(substitute("a = \"${BAD NAME}\"", env).is_err());
        assert!(substitute("a = \"${OPEN\"", env).is_err());
        let (_, why) = substitute("p = \"${SECRET}x${UNSET}\"", env).unwrap_err();
        assert!(!why.contains("hunter2"), "{why}");
    }
}
