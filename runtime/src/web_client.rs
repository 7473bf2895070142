//! A minimal HTTPS/1.1 client for the hub's and the clinic's web pages: one request per
//! connection, cookies carried by hand, so a caller sees exactly the status, headers and
//! body the server sent. The demo signs in as a specialist with it, and the tests and
//! benchmarks drive the pages with it (a browser drives them in tests/browser/).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The value a Set-Cookie header gives `name`.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .filter_map(|(_, v)| v.split(';').next()?.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }

    pub fn set_cookie_line(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, v)| v.as_str())
            .find(|v| v.starts_with(&format!("{name}=")))
    }

    /// The value of the first `<input name="{name}" value="...">` of the page (a form's
    /// CSRF token, say).
    pub fn field(&self, name: &str) -> Option<String> {
        let t = self.text();
        let at = t.find(&format!("name=\"{name}\" value=\""))? + name.len() + 15;
        let end = t[at..].find('"')?;
        Some(t[at..at + end].to_string())
    }
}

#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    /// None: plain HTTP.
    tls: Option<tokio_rustls::TlsConnector>,
    pub cookies: Vec<(String, String)>,
}

impl Client {
    /// HTTPS to `addr`, trusting what `tls` trusts (e.g. the regional CA).
    pub fn new(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            addr,
            tls: Some(tokio_rustls::TlsConnector::from(tls)),
            cookies: Vec::new(),
        }
    }

    pub fn plain(addr: SocketAddr) -> Self {
        Self {
            addr,
            tls: None,
            cookies: Vec::new(),
        }
    }

    pub fn with_cookie(&self, name: &str, value: &str) -> Self {
        let mut c = self.clone();
        c.set_cookie(name, value);
        c
    }

    pub fn set_cookie(&mut self, name: &str, value: &str) {
        self.cookies.retain(|(k, _)| k != name);
        self.cookies.push((name.into(), value.into()));
    }

    pub async fn get(&self, path: &str) -> Result<Answer> {
        self.request("GET", path, &[], None).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Result<Answer> {
        self.request("GET", path, headers, None).await
    }

    /// A form POST (application/x-www-form-urlencoded).
    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> Result<Answer> {
        let body: Vec<String> = form
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect();
        self.request("POST", path, &[], Some(body.join("&"))).await
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Result<Answer> {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        if !self.cookies.is_empty() {
            let c: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            req.push_str(&format!("Cookie: {}\r\n", c.join("; ")));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = &body {
            req.push_str(&format!(
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        if let Some(b) = &body {
            req.push_str(b);
        }
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        let mut raw = Vec::new();
        match &self.tls {
            Some(tls) => {
                let name = ServerName::IpAddress(self.addr.ip().into());
                let mut s = tls
                    .connect(name, tcp)
                    .await
                    .with_context(|| format!("TLS with {}", self.addr))?;
                s.write_all(req.as_bytes()).await?;
                // A server may close without close_notify once it has answered.
                let _ = s.read_to_end(&mut raw).await;
            }
            None => {
                let mut s = tcp;
                s.write_all(req.as_bytes()).await?;
                let _ = s.read_to_end(&mut raw).await;
            }
        }
        parse(&raw).with_context(|| format!("{method} {path}"))
    }
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn parse(raw: &[u8]) -> Result<Answer> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no complete HTTP answer ({} bytes)", raw.len()))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("malformed status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    Ok(Answer {
        status,
        headers,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("truncated chunk header"))?;
        let n = usize::from_str_radix(std::str::from_utf8(&rest[..nl])?.trim(), 16)?;
        if n == 0 {
            return Ok(out);
        }
        if rest.len() < nl + 2 + n + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&rest[nl + 2..nl + 2 + n]);
        rest = &rest[nl + 2 + n + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_with_chunks_cookies_and_fields() {
        let raw =
            b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1; HttpOnly\r\nTransfer-Encoding: chunked\r\n\r\n\
                    5\r\n<inpu\r\n1a\r\nt name=\"csrf\" value=\"tok\">\r\n0\r\n\r\n";
        let a = parse(raw).unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(a.cookie("a").as_deref(), Some("1"));
        assert_eq!(a.field("csrf").as_deref(), Some("tok"));
        assert!(parse(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nff\r\nab").is_err());
    }
}
