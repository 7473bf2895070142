//! Sends a data value set to DHIS2 (`POST <url>/api/dataValueSets?importStrategy=
//! CREATE_AND_UPDATE`) and reads back DHIS2's import summary. One request per
//! connection over hyper's HTTP/1.1 client; HTTPS with rustls, trusting the system's CAs
//! or only the configured `ca_file`; the whole exchange bounded by `timeout_s`.
//!
//! The answer is never taken for success: DHIS2 2.36+ wraps the summary
//! (`{"httpStatus": "Conflict", "status": "WARNING", "response": {"responseType":
//! "ImportSummary", "status": …, "importCount": {…}, "conflicts": [{"object", "value"}]}}`,
//! with HTTP 409 when values conflict), older versions answer the summary itself. A
//! summary, whatever the HTTP status, is returned for the caller to report; an answer
//! without one is an error naming the status and the start of the body.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use thiserror::Error;
use tokio::net::TcpStream;

use super::dhis2::{Dhis2Config, Dhis2ConfigError};

/// The import path below the server URL.
pub const IMPORT_PATH: &str = "/api/dataValueSets?importStrategy=CREATE_AND_UPDATE";
/// Largest answer read (DHIS2's summaries list conflicts, which can be many).
pub const MAX_ANSWER_BYTES: usize = 8 << 20;
/// How much of an unexpected body an error quotes.
const BODY_START: usize = 300;

/// Why a push failed.
#[derive(Debug, Error)]
pub enum Dhis2Error {
    #[error(transparent)]
    Config(#[from] Dhis2ConfigError),
    #[error("ministry.dhis2.url is not set: nothing to push to (write the set to a file instead)")]
    NoUrl,
    #[error("reading {what} {path}: {source}")]
    Secret {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path} is empty")]
    EmptySecret { what: &'static str, path: PathBuf },
    #[error("ministry.dhis2.ca_file {path}: {problem}")]
    CaFile { path: PathBuf, problem: String },
    #[error("no CA certificates found on this system; set ministry.dhis2.ca_file")]
    NoRoots,
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("connecting to {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    #[error("TLS handshake with {host}: {source}")]
    Handshake {
        host: String,
        source: std::io::Error,
    },
    #[error("HTTP exchange with DHIS2: {0}")]
    Http(String),
    #[error("DHIS2 did not answer within {0} s")]
    Timeout(u64),
    #[error("DHIS2 answered HTTP {status} without an import summary: {body_start:?}")]
    Rejected { status: u16, body_start: String },
    #[error("DHIS2 answered HTTP {status} but no import summary, so the import is not known to have happened: {body_start:?}")]
    NoSummary { status: u16, body_start: String },
}

/// DHIS2's account of an import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    /// The HTTP status of the answer (200, or 409 when some values conflict).
    pub http_status: u16,
    /// The summary's status: "SUCCESS", "WARNING", "ERROR" (or "OK" on some versions).
    pub status: String,
    pub description: Option<String>,
    pub imported: u64,
    pub updated: u64,
    pub ignored: u64,
    pub deleted: u64,
    pub conflicts: Vec<Conflict>,
}

impl ImportSummary {
    /// Every value was taken: a success status, nothing ignored and no conflict.
    pub fn is_clean(&self) -> bool {
        matches!(self.status.as_str(), "SUCCESS" | "OK")
            && self.ignored == 0
            && self.conflicts.is_empty()
    }
}

/// One refused value or problem, as DHIS2 names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// What it is about (a uid, a period, "orgUnit" …).
    pub object: String,
    /// What is wrong.
    pub value: String,
    /// DHIS2's error code (2.38+), e.g. "E7610".
    pub error_code: Option<String>,
}

/// Posts `set` to `cfg.url` and returns DHIS2's import summary.
pub async fn push(set: &Value, cfg: &Dhis2Config) -> Result<ImportSummary, Dhis2Error> {
    cfg.validate()?;
    let url = cfg.url.as_deref().ok_or(Dhis2Error::NoUrl)?;
    let auth = authorization(cfg)?;
    let tls = match url.starts_with("https:") {
        true => Some(tls_config(cfg.ca_file.as_deref())?),
        false => None,
    };
    let uri: Uri = format!("{}{IMPORT_PATH}", url.trim_end_matches('/'))
        .parse()
        .map_err(|e| Dhis2Error::Http(format!("import URL: {e}")))?;
    let body = Bytes::from(serde_json::to_vec(set).map_err(|e| Dhis2Error::Http(e.to_string()))?);
    let values = set["dataValues"].as_array().map_or(0, Vec::len);
    tracing::info!(url = %redact(&uri), values, "pushing the data value set to DHIS2");
    let exchange = exchange(&uri, tls, auth, body);
    let (status, answer) = tokio::time::timeout(Duration::from_secs(cfg.timeout_s), exchange)
        .await
        .map_err(|_| Dhis2Error::Timeout(cfg.timeout_s))??;
    let summary = parse_summary(status, &answer)?;
    if summary.is_clean() {
        tracing::info!(
            imported = summary.imported,
            updated = summary.updated,
            deleted = summary.deleted,
            "DHIS2 import done"
        );
    } else {
        tracing::warn!(
            status = %summary.status, http = summary.http_status, imported = summary.imported,
            updated = summary.updated, ignored = summary.ignored, deleted = summary.deleted,
            conflicts = summary.conflicts.len(), "DHIS2 import incomplete"
        );
        for c in summary.conflicts.iter().take(20) {
            tracing::warn!(object = %c.object, value = %c.value, code = ?c.error_code, "DHIS2 import conflict");
        }
    }
    Ok(summary)
}

/// The URL without any user info, for logs.
fn redact(uri: &Uri) -> String {
    format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("?"),
        uri.host().unwrap_or("?"),
        uri.path()
    )
}

fn read_secret(what: &'static str, path: &Path) -> Result<String, Dhis2Error> {
    let s = std::fs::read_to_string(path).map_err(|source| Dhis2Error::Secret {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let s = s.trim().to_string();
    if s.is_empty() {
        return Err(Dhis2Error::EmptySecret {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(s)
}

/// `ApiToken <token>` or `Basic <base64(user:password)>`.
fn authorization(cfg: &Dhis2Config) -> Result<HeaderValue, Dhis2Error> {
    let text = match (&cfg.token_file, &cfg.username, &cfg.password_file) {
        (Some(t), _, _) => format!("ApiToken {}", read_secret("ministry.dhis2.token_file", t)?),
        (None, Some(user), Some(p)) => {
            let pw = read_secret("ministry.dhis2.password_file", p)?;
            let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
            format!("Basic {b}")
        }
        _ => {
            return Err(Dhis2Error::Config(Dhis2ConfigError {
                field: "token_file".into(),
                problem: "the server needs token_file or username + password_file".into(),
            }))
        }
    };
    let mut v = HeaderValue::from_str(&text)
        .map_err(|_| Dhis2Error::Http("the credentials hold characters a header cannot".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

/// rustls with ring, trusting `ca_file` only when given, else the system's CAs.
pub fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, Dhis2Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let ca = |problem: String| Dhis2Error::CaFile {
                path: path.to_path_buf(),
                problem,
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| ca(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ca(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca("holds no PEM certificate".into()));
            }
            for c in certs {
                roots.add(c).map_err(|e| ca(e.to_string()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::debug!("loading system CA certificates: {e}");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(Dhis2Error::NoRoots);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Dhis2Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// One POST: connects, sends, reads the whole answer (at most [`MAX_ANSWER_BYTES`]).
async fn exchange(
    uri: &Uri,
    tls: Option<Arc<rustls::ClientConfig>>,
    auth: HeaderValue,
    body: Bytes,
) -> Result<(u16, Bytes), Dhis2Error> {
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default();
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|source| Dhis2Error::Connect {
            authority: authority.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let request = Request::builder()
        .method(Method::POST)
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(HOST, &authority)
        .header(CONTENT_TYPE, "application/json")
        .header(hyper::header::ACCEPT, "application/json")
        .header(AUTHORIZATION, auth)
        .body(Full::new(body))
        .map_err(|e| Dhis2Error::Http(e.to_string()))?;
    match tls {
        None => send(TokioIo::new(tcp), request).await,
        Some(cfg) => {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| Dhis2Error::Tls(format!("{host:?}: {e}")))?;
            let stream = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .map_err(|source| Dhis2Error::Handshake { host, source })?;
            send(TokioIo::new(stream), request).await
        }
    }
}

async fn send<T>(io: TokioIo<T>, request: Request<Full<Bytes>>) -> Result<(u16, Bytes), Dhis2Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let http = |e: &dyn std::fmt::Display| Dhis2Error::Http(e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| http(&e))?;
    let driver = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("DHIS2 connection: {e}");
        }
    });
    let result = async {
        let answer = sender.send_request(request).await.map_err(|e| http(&e))?;
        let status = answer.status().as_u16();
        let body = Limited::new(answer.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| http(&*e))?
            .to_bytes();
        Ok((status, body))
    }
    .await;
    driver.abort();
    result
}

/// The import summary in a DHIS2 answer (wrapped or not), else an error naming the HTTP
/// status and the start of the body.
pub fn parse_summary(http_status: u16, body: &[u8]) -> Result<ImportSummary, Dhis2Error> {
    let start = || body_start(body);
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let found = json.as_ref().and_then(|v| {
        let inner = v.get("response").filter(|r| is_summary(r));
        inner.or_else(|| Some(v).filter(|v| is_summary(v)))
    });
    let Some(s) = found else {
        return Err(if (200..300).contains(&http_status) {
            Dhis2Error::NoSummary {
                status: http_status,
                body_start: start(),
            }
        } else {
            Dhis2Error::Rejected {
                status: http_status,
                body_start: start(),
            }
        });
    };
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let n = |k: &str| s["importCount"].get(k).and_then(Value::as_u64).unwrap_or(0);
    let conflicts = s
        .get("conflicts")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .map(|c| Conflict {
                    object: text(c, "object").unwrap_or_default(),
                    value: text(c, "value").unwrap_or_default(),
                    error_code: text(c, "errorCode"),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(ImportSummary {
        http_status,
        status: text(s, "status").unwrap_or_else(|| "UNKNOWN".into()),
        description: text(s, "description"),
        imported: n("imported"),
        updated: n("updated"),
        ignored: n("ignored"),
        deleted: n("deleted"),
        conflicts,
    })
}

/// An import summary has an `importCount` object (and says so, where it has a type).
fn is_summary(v: &Value) -> bool {
    let typed = v.get("responseType").and_then(Value::as_str);
    v.get("importCount").is_some_and(Value::is_object) && typed.is_none_or(|t| t == "ImportSummary")
}

fn body_start(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(BODY_START * 4)]);
    text.chars()
        .take(BODY_START)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
#[path = "dhis2_push_tests.rs"]
mod tests;
