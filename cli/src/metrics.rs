//! `--metrics-addr`: the engine's metrics at `GET /metrics`, in the OpenMetrics text
//! format Prometheus scrapes, and nothing else.
//!
//! A minimal HTTP/1.1 server of our own on `std::net`, not a framework: it answers one
//! request per connection (`Connection: close`), so it needs no async runtime and adds
//! no dependency beside `prometheus-client`'s encoder. One thread accepts and hands each
//! connection to [`ANSWERERS`] threads through a queue of [`MAX_QUEUED`] (more get 503
//! at once); each answer has a read and a write deadline, so an idle client holds a
//! thread for seconds at most. A fixed set of threads keeps the process's memory flat
//! however often it is scraped. Encoding reads the shards' counters: the engine's threads
//! do no work for a scrape.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::TrySendError;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::registry::Registry;

use crate::exit::Exit;

/// Threads answering scrapes.
const ANSWERERS: usize = 4;

/// Connections waiting for an answering thread; more get 503.
const MAX_QUEUED: usize = 64;

/// The longest request head read.
const MAX_REQUEST: usize = 8 * 1024;

/// Binds `addr` and serves `collector` there on a thread of its own until the process
/// exits.
///
/// # Errors
/// The address cannot be bound (in use, not local), as a usage error saying which.
pub fn serve(addr: SocketAddr, collector: ringq::metrics::Collector) -> Result<(), Exit> {
    let listener = TcpListener::bind(addr)
        .map_err(|e| Exit::usage(format!("--metrics-addr {addr}: cannot listen there: {e}")))?;
    let bound = listener.local_addr().unwrap_or(addr);
    let mut registry = Registry::with_prefix("ringq");
    registry.register_collector(Box::new(collector));
    let registry = Arc::new(registry);
    let (tx, rx) = std::sync::mpsc::sync_channel::<TcpStream>(MAX_QUEUED);
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..ANSWERERS {
        let (rx, registry) = (rx.clone(), registry.clone());
        std::thread::Builder::new()
            .name(format!("ringq-scrape-{i}"))
            .spawn(move || loop {
                let next = rx
                    .lock()
                    .map_err(|_| ())
                    .and_then(|r| r.recv().map_err(|_| ()));
                match next {
                    Ok(stream) => {
                        let _ = answer(stream, &registry);
                    }
                    Err(()) => return,
                }
            })
            .map_err(|e| Exit::runtime(format!("cannot start the metrics threads: {e}")))?;
    }
    std::thread::Builder::new()
        .name("ringq-metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(TrySendError::Full(stream)) = tx.try_send(stream) {
                    let _ = respond(stream, "503 Service Unavailable", "text/plain", b"busy\n");
                }
            }
        })
        .map_err(|e| Exit::runtime(format!("cannot start the metrics thread: {e}")))?;
    tracing::info!("serving metrics at http://{bound}/metrics");
    Ok(())
}

/// Reads one request head and answers it.
fn answer(mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 || head.len() + n > MAX_REQUEST {
            return respond(stream, "400 Bad Request", "text/plain", b"bad request\n");
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let (method, target) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
    );
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    match (method, path) {
        (b"GET", b"/metrics") => {
            let mut text = String::new();
            if prometheus_client::encoding::text::encode(&mut text, registry).is_err() {
                return respond(
                    stream,
                    "500 Internal Server Error",
                    "text/plain",
                    b"encoding failed\n",
                );
            }
            respond(
                stream,
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text.as_bytes(),
            )
        }
        (b"GET", _) => respond(stream, "404 Not Found", "text/plain", b"only /metrics\n"),
        _ => respond(
            stream,
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n",
        ),
    }
}

fn respond(mut stream: TcpStream, status: &str, kind: &str, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}
