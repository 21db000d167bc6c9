//! A proxy in front of a real HTTP server (the S3 server) that loses one answer: it forwards
//! every request, one per connection, and for the first request a rule picks it lets the server
//! handle the request, then tells the client `503` instead of the server's answer — a put that
//! landed, its answer lost on the way back. Not a mock: every request reaches the real server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running proxy.
pub struct LoseOneAnswer {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Whether the answer was lost yet.
    pub fired: Arc<AtomicBool>,
}

/// Starts a proxy to `upstream` (`host:port`) losing the answer to the first request for which
/// `rule(method, path)` holds.
pub async fn lose_one_answer(upstream: String, rule: impl Fn(&str, &str) -> bool + Send + Sync + 'static) -> LoseOneAnswer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fired = Arc::new(AtomicBool::new(false));
    let (rule, state) = (Arc::new(rule), fired.clone());
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (upstream, rule, state) = (upstream.clone(), rule.clone(), state.clone());
            tokio::spawn(async move {
                let _ = forward(client, &upstream, |m, p| rule(m, p), &state).await;
            });
        }
    });
    LoseOneAnswer { addr, fired }
}

async fn forward(
    mut client: TcpStream,
    upstream: &str,
    rule: impl Fn(&str, &str) -> bool,
    fired: &AtomicBool,
) -> std::io::Result<()> {
    // The request's head.
    let mut buf = Vec::new();
    let end = loop {
        let mut chunk = [0u8; 8192];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or_default().to_string();
    let mut parts = first.split(' ');
    let (method, path) = (parts.next().unwrap_or_default().to_string(), parts.next().unwrap_or_default().to_string());
    let mut length = 0usize;
    let mut out = format!("{first}\r\n");
    for line in lines {
        let name = line.split(':').next().unwrap_or_default().trim().to_ascii_lowercase();
        assert!(name != "transfer-encoding", "the proxy forwards bodies with a Content-Length only");
        if name == "content-length" {
            length = line.split(':').nth(1).unwrap_or_default().trim().parse().unwrap_or(0);
        }
        if name != "connection" {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    // One request per connection: the server closes after its answer.
    out.push_str("Connection: close\r\n\r\n");
    let mut body = buf[end..].to_vec();
    while body.len() < length {
        let mut chunk = vec![0u8; length - body.len()];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let mut server = TcpStream::connect(upstream).await?;
    server.write_all(out.as_bytes()).await?;
    server.write_all(&body).await?;
    if rule(&method, &path) && !fired.swap(true, Ordering::SeqCst) {
        // The server handles it; its answer is lost.
        let mut answer = Vec::new();
        server.read_to_end(&mut answer).await?;
        client.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await?;
        return client.shutdown().await;
    }
    tokio::io::copy(&mut server, &mut client).await?;
    client.shutdown().await
}
