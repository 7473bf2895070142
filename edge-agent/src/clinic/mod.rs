//! The clinic's page: the day's scans on this device, by the patient's LOCAL identifier
//! (pseudonyms are mapped back only here, from the scan log), with the model's result,
//! how far each result has travelled to the specialist, and the specialist's verdict.
//! Served on the clinic's LAN when `[clinic_page] enabled` (off by default), HTTPS with
//! a self-signed certificate (`tls`) unless `insecure_http`, behind a PIN (`auth`).
//! Everything is read locally: it works with the hub unreachable. Decision support
//! only, not a diagnosis (the banner on every page says so).
//!
//! Routes: `GET /login`, `POST /login` (form: `csrf`, `pin`), `POST /logout` (form:
//! `csrf`), `GET /scans?day=YYYY-MM-DD` (today and the 6 days before), `GET /style.css`,
//! `GET /vitals?patient=<local id>&day=YYYY-MM-DD` (the vitals form, filled in from the
//! patient's `vitals.json`) and `POST /vitals` (form: `csrf`, `patient`, `day`,
//! `age_years`, `sex` (`f`, `m` or empty), `spo2`, `respiratory_rate`, `pulse`,
//! `temperature_c`, `fever`, `cough`, `dyspnea`, `symptoms_unrecorded`; writes
//! `inbox/<patient>/vitals.json` and answers 303 to the day's scans, or 422 with the form
//! again; `vitals_form`).
//!
//! Stable hooks for browser tests (do not rename):
//! - `#scans`: the day's scans (`data-day`, `data-count`); `#days`: the day selector;
//!   `#no-scans` when the day has none; `#banner`; `#logout`; `#pin`, `#login-error`
//! - `.patient` (one section per patient), `.patient-id`; `.patient-summary` (`.flagged`)
//!   with `.lung-score`, `.patient-covid`, `.vitals-used` when the clinic's vitals counted;
//!   `.vitals-link` (to the patient's vitals form, when the inbox has their folder)
//! - `.scan-row` (one `<tr>` per scan: `data-result-id`, `data-exam-id`), with cells
//!   `.time`, `.zone`, `.model-result`, `.severity`, `.uncertainty`, `.flag` (`.flagged`,
//!   `.reasons`), `.sync-state` (`data-state`: queued, at-hub, preview-sent, clip-sent,
//!   reviewed, refused; "reviewed" only for a result a verdict names, and queued or
//!   refused first while this device still holds it), `.not-in-verdict` in that cell
//!   when the examination has a verdict that does not name the scan
//! - `.verdict` (one per verdict of an examination), `.verdict-impression`,
//!   `.verdict-recommendation`, `.verdict-rescan-reason`, `.verdict-zones` (`.override`
//!   marks a changed score), `.verdict-comment`, `.verdict-reviewer`
//! - the vitals form: `#vitals-form`, its fields by name as their ids (`#spo2`, `#sex`,
//!   `#fever`, `#symptoms_unrecorded`, ...), `#vitals-save`; `#vitals-error` when a form
//!   was refused, `#vitals-notice` when the saved file is not valid

pub mod auth;
pub mod html;
pub mod pages;
pub mod server;
pub mod sources;
pub mod tls;
pub mod view;
pub mod vitals_form;

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::EdgeConfig;
use crate::scanlog::{ScanLog, KEEP_DAYS};
pub use view::{MediaSent, MediaView, ReceivedVerdict, Sources, SyncState, VerdictView};

/// How long open connections may finish once the agent stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

type Serving = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum ClinicError {
    #[error("clinic page TLS: {0}")]
    Tls(String),
    #[error("clinic page: {0}")]
    Io(String),
    #[error("no clinic page PIN: {0}")]
    NoPin(String),
    #[error("{0}")]
    Invalid(String),
}

/// Starts the scan log's daily pruning and, when enabled, the page. A page that cannot
/// start (address in use, unreadable certificate) is logged; the agent runs on without it.
pub async fn start(
    cfg: &EdgeConfig,
    sources: Sources,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    tracker.spawn(prune(sources.scans.clone(), shutdown.clone()));
    if !cfg.clinic_page.enabled {
        return;
    }
    match serve(cfg, sources, shutdown).await {
        Ok(task) => {
            tracker.spawn(task);
        }
        Err(e) => tracing::error!(error = %e, "the clinic page did not start"),
    }
}

async fn prune(log: ScanLog, shutdown: CancellationToken) {
    loop {
        let today = pleura_shared::holdings::day_of_ms(pleura_shared::now_ms());
        let l = log.clone();
        let before = today.saturating_sub(KEEP_DAYS);
        match tokio::task::spawn_blocking(move || l.prune(before)).await {
            Ok(Ok(n)) if n > 0 => tracing::info!(entries = n, "pruned the clinic's scan log"),
            Ok(Err(e)) => tracing::warn!(error = %e, "pruning the clinic's scan log"),
            _ => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(6 * 3600)) => {}
        }
    }
}

/// Binds the page and returns its serving task.
pub async fn serve(
    cfg: &EdgeConfig,
    sources: Sources,
    shutdown: CancellationToken,
) -> Result<impl std::future::Future<Output = ()> + Send + 'static, ClinicError> {
    let pc = &cfg.clinic_page;
    let cert = if pc.insecure_http {
        None
    } else {
        let (dir, listen) = (cfg.data_dir.clone(), pc.listen);
        Some(
            tokio::task::spawn_blocking(move || tls::load_or_create(&dir, listen))
                .await
                .map_err(|e| ClinicError::Io(e.to_string()))??,
        )
    };
    let listener = tokio::net::TcpListener::bind(pc.listen)
        .await
        .map_err(|e| ClinicError::Io(format!("binding {}: {e}", pc.listen)))?;
    let local = listener
        .local_addr()
        .map_err(|e| ClinicError::Io(e.to_string()))?;
    if !auth::pin_path(&cfg.data_dir).exists() {
        tracing::warn!(
            "no clinic page PIN is set: nobody can log in until `edge-agent clinic-pin set`"
        );
    }
    let page = Arc::new(server::Page {
        data_dir: cfg.data_dir.clone(),
        sources,
        sessions: auth::Sessions::new(Duration::from_secs(pc.session_minutes * 60)),
        throttle: auth::Throttle::default(),
        pin_checks: Arc::new(tokio::sync::Semaphore::new(auth::PIN_CHECKS)),
        secure: cert.is_some(),
    });
    let app = server::router(page).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let sd = shutdown.clone();
    let served: Serving = match cert {
        Some(cert) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cert.server_config()?));
            let listener = tls::TlsListener::new(listener, acceptor, shutdown.clone())
                .map_err(|e| ClinicError::Io(e.to_string()))?;
            let url = format!("https://{local}/");
            tracing::info!(%url, fingerprint = %cert.fingerprint(), "clinic page serving (check the certificate's SHA-256 fingerprint in the browser)");
            use axum::serve::ListenerExt;
            Box::pin(
                axum::serve(listener.tap_io(|_| {}), app)
                    .with_graceful_shutdown(sd.cancelled_owned())
                    .into_future(),
            )
        }
        None => {
            let url = format!("http://{local}/");
            tracing::warn!(%url, "clinic page serving over plain HTTP (clinic_page.insecure_http)");
            Box::pin(
                axum::serve(listener, app)
                    .with_graceful_shutdown(sd.cancelled_owned())
                    .into_future(),
            )
        }
    };
    Ok(async move {
        // A browser's idle keep-alive connection must not hold up the agent's stop.
        let grace = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        tokio::select! {
            r = served => if let Err(e) = r {
                tracing::error!(error = %e, "the clinic page stopped");
            },
            _ = grace => tracing::debug!("clinic page: open connections dropped at shutdown"),
        }
    })
}
