//! The operator's HTTP listener (`metrics.listen`): `/metrics` (Prometheus), `/healthz` (the
//! process answers) and `/readyz` (the pipeline is ready: see [`super::health::readiness`]).
//!
//! A few GET requests a minute from a scraper and probes: a plain HTTP/1.1 responder, one
//! request per connection, on the runtime's own tasks.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{Error, Result};

/// Whether the pipeline is ready, asked on every `/readyz`: `Err` says why not.
pub type Probe = Arc<dyn Fn() -> BoxFuture<'static, std::result::Result<(), String>> + Send + Sync>;

/// Where the listener finds the pipeline's probe once it has started (before: not ready).
pub type ProbeCell = Arc<OnceLock<Probe>>;

/// Installs the metrics recorder (every series labelled `pipeline="<id>"`, histograms in
/// [`super::metrics::BUCKETS`]) and serves the listener on `addr` for the rest of the process.
pub async fn serve(addr: SocketAddr, pipeline: &str, probe: ProbeCell) -> Result<()> {
    let err = |e: String| Error::Io { context: format!("metrics endpoint on {addr}"), source: std::io::Error::other(e) };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| err(e.to_string()))?;
    let handle = PrometheusBuilder::new()
        .add_global_label("pipeline", pipeline)
        .set_buckets(super::metrics::BUCKETS)
        .map_err(|e| err(e.to_string()))?
        .install_recorder()
        .map_err(|e| err(e.to_string()))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // (Out of file descriptors, say: wait, rather than spin on the error.)
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let (handle, probe) = (handle.clone(), probe.clone());
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, &handle, &probe)).await;
            });
        }
    });
    Ok(())
}

/// Reads one request and answers it.
async fn answer(mut stream: tokio::net::TcpStream, handle: &PrometheusHandle, probe: &ProbeCell) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&request);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", handle.render()),
        ("GET", "/healthz") => ("200 OK", "ok\n".to_string()),
        ("GET", "/readyz") => match probe.get() {
            None => ("503 Service Unavailable", "starting\n".to_string()),
            Some(p) => match p().await {
                Ok(()) => ("200 OK", "ready\n".to_string()),
                Err(why) => ("503 Service Unavailable", format!("{why}\n")),
            },
        },
        ("GET", _) => ("404 Not Found", "try /metrics, /healthz or /readyz\n".to_string()),
        _ => ("405 Method Not Allowed", "GET only\n".to_string()),
    };
    let content_type = if path == "/metrics" { "text/plain; version=0.0.4" } else { "text/plain" };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
