//! Test support for Mirador: the real services the tests need (the Kafka broker, the
//! Pub/Sub and Bigtable emulators), started on loopback and stopped by their pid; and,
//! as the cluster grows, multi-process cluster harnesses; and pipeline specs over the
//! bundled features and model.

pub mod chaos;
pub mod cluster;
pub mod services;
pub mod spec;

/// The `event_id` a generated payload carries (poison included: every generated payload
/// has one, even where it is not valid JSON).
pub fn event_id(payload: &[u8]) -> String {
    let text = String::from_utf8_lossy(payload);
    let start = text.find("\"event_id\":\"").expect("an event id") + 12;
    let end = start + text[start..].find('"').expect("a closing quote");
    text[start..end].to_string()
}

/// An HTTP GET of `path` at `address` (`host:port`): the response's head and body, when
/// it is 200; enough HTTP for the nodes' metrics and Prometheus's API.
pub fn http_get(address: &str, path: &str) -> Result<(String, String), String> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect(address).map_err(|e| format!("{address}: {e}"))?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        // HTTP/1.0: the server closes the connection after a body sent whole, never
        // chunked.
        "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n"
    )
    .map_err(|e| format!("{address}: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("{address}: {e}"))?;
    match response.split_once("\r\n\r\n") {
        Some((head, body))
            if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") =>
        {
            Ok((head.to_string(), body.to_string()))
        }
        _ => Err(format!(
            "{address}{path}: {}",
            response.lines().next().unwrap_or("no HTTP response")
        )),
    }
}
