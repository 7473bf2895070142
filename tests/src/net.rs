//! Loopback ports and minimal HTTP(S) GETs.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

/// A loopback port nothing listens on now, never handed out twice in this process
/// (tests run in parallel and some bind their port only later).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Minimal plain-HTTP GET (an insecure hub's metrics port); returns status code and body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    get_over(s, path)
}

/// Minimal HTTPS GET (a secure hub's metrics port), trusting only `ca`.
pub fn https_get(port: u16, path: &str, ca: &Path) -> Option<(u16, String)> {
    let cfg = pleura_shared::pki::client_config(ca, None).ok()?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").ok()?;
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).ok()?;
    let tcp = TcpStream::connect(("127.0.0.1", port)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    get_over(rustls::StreamOwned::new(conn, tcp), path)
}

fn get_over(mut s: impl Read + Write, path: &str) -> Option<(u16, String)> {
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    // A peer that closes without TLS close_notify ends in an error after the response.
    if s.read_to_end(&mut raw).is_err() && raw.is_empty() {
        return None;
    }
    let buf = String::from_utf8_lossy(&raw);
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|x| x.1.to_string())?;
    Some((code, body))
}
