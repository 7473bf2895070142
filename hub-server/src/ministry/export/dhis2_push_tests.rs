use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode, Uri as AxUri};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::ministry::export::{dhis2, sample};

/// What the local DHIS2 saw: path and query, headers, body.
type Seen = Arc<Mutex<Vec<(String, HeaderMap, Vec<u8>)>>>;

/// A DHIS2 2.38+ answer to an import with conflicts (HTTP 409), as DHIS2 words it.
fn conflict_answer() -> String {
    json!({
        "httpStatus": "Conflict",
        "httpStatusCode": 409,
        "status": "WARNING",
        "message": "One more conflicts encountered, please check import summary.",
        "response": {
            "responseType": "ImportSummary",
            "status": "WARNING",
            "importOptions": {"idSchemes": {}, "dryRun": false, "async": false,
                "importStrategy": "CREATE_AND_UPDATE", "mergeMode": "REPLACE"},
            "description": "Import process completed successfully",
            "importCount": {"imported": 9, "updated": 2, "ignored": 1, "deleted": 3},
            "conflicts": [{
                "object": "ouClinicC01",
                "objects": {"organisationUnit": "ouClinicC01"},
                "value": "Organisation unit not found or not accessible: `ouClinicC01`",
                "errorCode": "E7610",
                "property": "orgUnit",
                "indexes": [4]
            }],
            "rejectedIndexes": [4],
            "dataSetComplete": "false"
        }
    })
    .to_string()
}

/// A local server answering every request with `status` and `body`, after `delay`.
async fn dhis2(status: u16, body: String, delay: Duration) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let s2 = seen.clone();
    let app = axum::Router::new().fallback(move |uri: AxUri, headers: HeaderMap, bytes: Bytes| {
        let (seen, body) = (s2.clone(), body.clone());
        async move {
            let pq = uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default();
            seen.lock().unwrap().push((pq, headers, bytes.to_vec()));
            tokio::time::sleep(delay).await;
            (StatusCode::from_u16(status).unwrap(), body)
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

fn cfg_for(url: &str, dir: &Path, basic: bool) -> Dhis2Config {
    let mut cfg = dhis2::tests::config();
    cfg.url = Some(url.to_string());
    if basic {
        std::fs::write(dir.join("pw"), "s3cret:pass\n").unwrap();
        cfg.token_file = None;
        cfg.username = Some("pleura".into());
        cfg.password_file = Some(dir.join("pw"));
    } else {
        std::fs::write(dir.join("token"), "d2pat_abc123\n").unwrap();
        cfg.token_file = Some(dir.join("token"));
    }
    cfg.timeout_s = 5;
    cfg
}

fn set() -> Value {
    dhis2::data_value_set(&sample::report(), &dhis2::tests::config())
        .unwrap()
        .set
}

#[tokio::test]
async fn a_409_with_conflicts_is_a_summary_and_the_payload_is_dhis2_s_shape() {
    let dir = tempfile::tempdir().unwrap();
    let (url, seen) = dhis2(409, conflict_answer(), Duration::ZERO).await;
    let s = push(&set(), &cfg_for(&url, dir.path(), false))
        .await
        .unwrap();
    assert_eq!((s.http_status, s.status.as_str()), (409, "WARNING"));
    assert_eq!((s.imported, s.updated, s.ignored, s.deleted), (9, 2, 1, 3));
    assert_eq!(
        s.conflicts,
        vec![Conflict {
            object: "ouClinicC01".into(),
            value: "Organisation unit not found or not accessible: `ouClinicC01`".into(),
            error_code: Some("E7610".into()),
        }]
    );
    assert!(!s.is_clean());
    let seen = seen.lock().unwrap();
    let (pq, headers, body) = &seen[0];
    assert_eq!(pq, "/api/dataValueSets?importStrategy=CREATE_AND_UPDATE");
    assert_eq!(headers["authorization"], "ApiToken d2pat_abc123");
    assert_eq!(headers["content-type"], "application/json");
    let sent: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(sent, set());
    let dv = sent["dataValues"].as_array().unwrap();
    assert!(!dv.is_empty());
    for v in dv {
        for k in ["dataElement", "period", "orgUnit", "value"] {
            assert!(v[k].is_string(), "{k} in {v}");
        }
        assert_ne!(v["value"], sample::LEAK.to_string().as_str());
    }
}

#[tokio::test]
async fn basic_auth_a_context_path_and_a_clean_import() {
    let dir = tempfile::tempdir().unwrap();
    let ok = json!({"httpStatus": "OK", "httpStatusCode": 200, "status": "OK",
        "message": "Import was successful.",
        "response": {"responseType": "ImportSummary", "status": "SUCCESS",
            "importCount": {"imported": 20, "updated": 0, "ignored": 0, "deleted": 0},
            "conflicts": []}});
    let (url, seen) = dhis2(200, ok.to_string(), Duration::ZERO).await;
    let s = push(&set(), &cfg_for(&format!("{url}/dhis/"), dir.path(), true))
        .await
        .unwrap();
    assert!(s.is_clean(), "{s:?}");
    assert_eq!(s.imported, 20);
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen[0].0,
        "/dhis/api/dataValueSets?importStrategy=CREATE_AND_UPDATE"
    );
    let expected = base64::engine::general_purpose::STANDARD.encode("pleura:s3cret:pass");
    assert_eq!(
        seen[0].1["authorization"],
        format!("Basic {expected}").as_str()
    );
}

#[tokio::test]
async fn a_401_and_a_garbage_answer_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _) = dhis2(
        401,
        "<html><body>HTTP Status 401 – Unauthorized</body></html>".into(),
        Duration::ZERO,
    )
    .await;
    let e = push(&set(), &cfg_for(&url, dir.path(), false))
        .await
        .unwrap_err();
    assert!(matches!(e, Dhis2Error::Rejected { status: 401, .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("HTTP 401") && msg.contains("Unauthorized"),
        "{msg}"
    );

    let (url, _) = dhis2(
        200,
        "Service temporarily unavailable \u{1}".into(),
        Duration::ZERO,
    )
    .await;
    let e = push(&set(), &cfg_for(&url, dir.path(), false))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Dhis2Error::NoSummary { status: 200, .. }),
        "{e}"
    );
    assert!(
        e.to_string().contains("Service temporarily unavailable"),
        "{e}"
    );
    // JSON that is not a summary is no summary either.
    let (url, _) = dhis2(200, json!({"status": "OK"}).to_string(), Duration::ZERO).await;
    let e = push(&set(), &cfg_for(&url, dir.path(), false))
        .await
        .unwrap_err();
    assert!(matches!(e, Dhis2Error::NoSummary { .. }), "{e}");
}

#[tokio::test]
async fn a_slow_server_times_out_and_missing_settings_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _) = dhis2(200, conflict_answer(), Duration::from_secs(5)).await;
    let mut cfg = cfg_for(&url, dir.path(), false);
    cfg.timeout_s = 1;
    let e = push(&set(), &cfg).await.unwrap_err();
    assert!(matches!(e, Dhis2Error::Timeout(1)), "{e}");

    let mut cfg = cfg_for(&url, dir.path(), false);
    cfg.token_file = Some(dir.path().join("missing"));
    let e = push(&set(), &cfg).await.unwrap_err();
    assert!(e.to_string().contains("ministry.dhis2.token_file"), "{e}");
    cfg.url = None;
    cfg.token_file = None;
    assert!(matches!(
        push(&set(), &cfg).await.unwrap_err(),
        Dhis2Error::NoUrl
    ));
    // Nothing listens here.
    let free = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = cfg_for(&format!("http://{free}"), dir.path(), false);
    assert!(matches!(
        push(&set(), &cfg).await.unwrap_err(),
        Dhis2Error::Connect { .. }
    ));
}

#[test]
fn older_unwrapped_summaries_parse_too() {
    let body = json!({"responseType": "ImportSummary", "status": "SUCCESS",
        "description": "Import process completed successfully",
        "importCount": {"imported": 2, "updated": 1, "ignored": 1, "deleted": 0},
        "conflicts": [{"object": "201413", "value": "Period not valid"}],
        "dataSetComplete": "false"});
    let s = parse_summary(200, body.to_string().as_bytes()).unwrap();
    assert_eq!((s.imported, s.updated, s.ignored), (2, 1, 1));
    assert_eq!(s.conflicts[0].object, "201413");
    assert_eq!(s.conflicts[0].error_code, None);
    assert!(!s.is_clean());
    let e = parse_summary(500, b"").unwrap_err();
    assert!(e.to_string().contains("HTTP 500"), "{e}");
}

/// An HTTPS DHIS2 with a private CA: the push trusts `ca_file` and nothing else.
#[tokio::test]
async fn https_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let answer = conflict_answer();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                continue;
            };
            // Read the head and the Content-Length body, then answer and close.
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            loop {
                let n = tls.read(&mut chunk).await.unwrap_or(0);
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            let head = format!("HTTP/1.1 409 Conflict\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", answer.len());
            let _ = tls.write_all(head.as_bytes()).await;
            let _ = tls.write_all(answer.as_bytes()).await;
            let _ = tls.shutdown().await;
        }
    });
    let url = format!("https://localhost:{port}");
    let mut cfg = cfg_for(&url, dir.path(), false);
    cfg.ca_file = Some(dir.path().join("ca.pem"));
    let s = push(&set(), &cfg).await.unwrap();
    assert_eq!(s.conflicts.len(), 1);
    // Without the CA, the server is not trusted.
    let other = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap();
    std::fs::write(dir.path().join("other.pem"), other.pem()).unwrap();
    cfg.ca_file = Some(dir.path().join("other.pem"));
    let e = push(&set(), &cfg).await.unwrap_err();
    assert!(matches!(e, Dhis2Error::Handshake { .. }), "{e}");
    std::fs::write(dir.path().join("empty.pem"), "").unwrap();
    cfg.ca_file = Some(dir.path().join("empty.pem"));
    let e = push(&set(), &cfg).await.unwrap_err();
    assert!(e.to_string().contains("ministry.dhis2.ca_file"), "{e}");
}
