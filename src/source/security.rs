//! What a refused connection means: librdkafka's connection errors turned into one line that
//! names the problem (wrong password, untrusted certificate, TLS against a plaintext listener,
//! ...) and the setting that fixes it.

use std::path::Path;

use crate::config::security::{problem, serde_name, Problem, SecurityConfig};

/// What a refused connection means, from librdkafka's error text (which names no secret): one
/// sentence with the setting that fixes it. `None` when the error is not about security (a
/// broker that is down, a name that does not resolve).
pub fn diagnose(reason: &str, security: &SecurityConfig) -> Option<String> {
    let detail = trim_reason(reason);
    let r = detail.to_ascii_lowercase();
    let p = serde_name(security.protocol);
    if r.contains("connecting to a ssl listener") {
        return Some(format!(
            "the listener speaks TLS but protocol = \"{p}\" does not; use protocol = \"ssl\" or \"sasl_ssl\" ({detail})"
        ));
    }
    // librdkafka only hints "(connecting to a SSL listener?)" in some versions; what it always
    // says is that the broker hung up on its first request, which a TLS listener does on the
    // plaintext bytes it receives.
    if !security.protocol.tls()
        && r.contains("connection closed by peer")
        && reason.to_ascii_lowercase().contains("in state apiversion_query")
    {
        return Some(format!(
            "the broker closed the connection at the first request: the listener speaks TLS but protocol = \"{p}\" does not; use protocol = \"ssl\" or \"sasl_ssl\", or the broker's plaintext port ({detail})"
        ));
    }
    if r.contains("connecting to a plaintext broker listener")
        || (r.contains("ssl handshake failed")
            && (r.contains("wrong version number") || r.contains("packet length too long") || r.contains("record layer failure")))
    {
        return Some(format!(
            "the listener does not speak TLS but protocol = \"{p}\" does; use the broker's TLS port, or protocol = \"plaintext\" / \"sasl_plaintext\" if this listener is meant to be unencrypted ({detail})"
        ));
    }
    if r.contains("certificate has expired") || r.contains("certificate is not yet valid") {
        return Some(format!("the broker's TLS certificate is expired or not yet valid ({detail})"));
    }
    if r.contains("hostname mismatch") || r.contains("ip address mismatch") {
        return Some(format!(
            "the broker's TLS certificate does not name the host connected to; connect by a name the certificate holds (or, only if you must, set source.security.verify_hostname = false) ({detail})"
        ));
    }
    if r.contains("certificate verify failed") || r.contains("could not be verified") {
        let fix = if security.ca_file.is_some() {
            "source.security.ca_file does not hold the CA that signed it"
        } else {
            "set source.security.ca_file to the CA that signed it"
        };
        return Some(format!("the broker's TLS certificate is not trusted: {fix} ({detail})"));
    }
    if r.contains("certificate required") || r.contains("bad certificate") || r.contains("unknown ca") {
        let fix = if security.cert_file.is_some() {
            "the broker does not accept source.security.cert_file (is it signed by a CA the broker trusts?)"
        } else {
            "the broker requires a client certificate (mutual TLS): set source.security.cert_file and key_file"
        };
        return Some(format!("the broker rejected the TLS handshake: {fix} ({detail})"));
    }
    if r.contains("unsupported sasl mechanism") || r.contains("unsupported_sasl_mechanism") {
        return Some(format!("the broker does not enable this SASL mechanism; check source.security.mechanism ({detail})"));
    }
    if r.contains("sasl authentication error") || r.contains("authentication failed") || r.contains("invalid credentials") {
        let who = security.username.as_deref().map(|u| format!(" for user '{u}'")).unwrap_or_default();
        return Some(format!(
            "authentication failed{who}: wrong username or password (source.security.username / password) ({detail})"
        ));
    }
    if r.contains("ssl handshake failed") {
        return Some(format!("the TLS handshake failed ({detail})"));
    }
    None
}

/// librdkafka's reason without its broker prefix and timing suffix.
fn trim_reason(reason: &str) -> String {
    let mut s = reason.trim();
    // "[thrd:sasl_ssl://127.0.0.1:9094/bootstrap]: sasl_ssl://127.0.0.1:9094/bootstrap: SSL …"
    while let Some((head, rest)) = s.split_once(": ") {
        if !(head.contains("://") || head.contains("/bootstrap") || head.starts_with("[thrd:")) {
            break;
        }
        s = rest;
    }
    let s = match s.rfind(" (after ") {
        Some(i) => &s[..i],
        None => s,
    };
    s.to_string()
}

/// Whether the TLS files the section names can be read (when the connection is made: the config
/// itself reads nothing).
pub fn files_readable(security: &SecurityConfig) -> Result<(), Problem> {
    let files = [("ca_file", &security.ca_file), ("cert_file", &security.cert_file), ("key_file", &security.key_file)];
    for (field, path) in files {
        if let Some(path) = path {
            readable(path).map_err(|e| problem(field, format!("is {}, which cannot be read: {e}", path.display())))?;
        }
    }
    Ok(())
}

fn readable(path: &Path) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a file"));
    }
    std::fs::File::open(path).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::security::tests::sasl;

    #[test]
    fn refusals_are_named() {
        let s = sasl();
        let auth = diagnose("sasl_ssl://127.0.0.1:9094/bootstrap: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512 (after 310ms in state AUTH_REQ)", &s).unwrap();
        assert!(auth.starts_with("authentication failed for user 'u'"), "{auth}");
        let ca = diagnose("ssl://127.0.0.1:9095/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified, verify that ssl.ca.location is correctly configured or root CA certificates are installed (install ca-certificates package) (after 4ms in state SSL_HANDSHAKE)", &s).unwrap();
        assert!(ca.contains("not trusted") && ca.contains("ca_file"), "{ca}");
        let plain = diagnose("127.0.0.1:9094/bootstrap: Disconnected while requesting ApiVersion: might be caused by incorrect security.protocol configuration (connecting to a SSL listener?) or broker version is < 0.10 (see api.version.request) (after 1ms in state APIVERSION_QUERY)", &SecurityConfig::default()).unwrap();
        assert!(plain.contains("speaks TLS"), "{plain}");
        let closed = diagnose("[thrd:127.0.0.1:9094/bootstrap]: 127.0.0.1:9094/bootstrap: Disconnected: connection closed by peer: receive 0 after POLLIN (after 1ms in state APIVERSION_QUERY)", &SecurityConfig::default()).unwrap();
        assert!(closed.contains("speaks TLS") && closed.starts_with("the broker closed"), "{closed}");
        assert_eq!(diagnose("127.0.0.1:9094/bootstrap: Disconnected: connection closed by peer: receive 0 after POLLIN (after 1ms in state APIVERSION_QUERY)", &s), None, "a TLS client hung up on is not told to use TLS");
        assert_eq!(diagnose("127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused", &s), None);
    }

    #[test]
    fn a_tls_file_that_cannot_be_read_is_named() {
        let mut c = sasl();
        c.ca_file = Some("/surely/not/here/ca.pem".into());
        let e = files_readable(&c).unwrap_err();
        assert!(e.field.ends_with("ca_file") && e.problem.contains("cannot be read"), "{e:?}");
        assert!(files_readable(&sasl()).is_ok());
    }
}
