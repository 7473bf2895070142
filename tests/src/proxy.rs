//! A byte-counting TCP proxy: the real traffic on the wire.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use anyhow::Result;

/// A TCP forwarder between a client and `target` that counts, and optionally keeps,
/// every byte each way: the real traffic on the wire.
pub struct CountingProxy {
    pub port: u16,
    pub up: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub down: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub capture: Option<std::sync::Arc<std::sync::Mutex<Vec<u8>>>>,
}

impl CountingProxy {
    pub fn start(target: u16, keep: bool) -> Result<Self> {
        Self::start_with(target, keep, None)
    }

    /// A proxy that forwards at most `bytes_per_s` each way per connection (a slow
    /// clinic link: long uploads that a kill can cut).
    pub fn throttled(target: u16, bytes_per_s: u64) -> Result<Self> {
        Self::start_with(target, false, Some(bytes_per_s.max(1)))
    }

    fn start_with(target: u16, keep: bool, rate: Option<u64>) -> Result<Self> {
        use std::sync::atomic::AtomicU64;
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let capture = keep.then(|| Arc::new(Mutex::new(Vec::new())));
        let (u, d, c) = (up.clone(), down.clone(), capture.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                pipe(c2, s2, u.clone(), c.clone(), rate);
                pipe(server, client, d.clone(), c.clone(), rate);
            }
        });
        Ok(Self {
            port,
            up,
            down,
            capture,
        })
    }

    pub fn captured(&self) -> Vec<u8> {
        self.capture
            .as_ref()
            .map(|c| c.lock().map(|v| v.clone()).unwrap_or_default())
            .unwrap_or_default()
    }
}

fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    counter: std::sync::Arc<std::sync::atomic::AtomicU64>,
    capture: Option<std::sync::Arc<std::sync::Mutex<Vec<u8>>>>,
    rate: Option<u64>,
) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        // Throttled: small reads, each followed by the time its bytes take at `rate`.
        let step = rate.map_or(buf.len(), |r| (r as usize / 20).clamp(1, buf.len()));
        loop {
            match from.read(&mut buf[..step]) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    counter.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    if let Some(c) = &capture {
                        if let Ok(mut v) = c.lock() {
                            v.extend_from_slice(&buf[..n]);
                        }
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    if let Some(r) = rate {
                        std::thread::sleep(std::time::Duration::from_secs_f64(n as f64 / r as f64));
                    }
                }
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}
