//! Pleura's regional hub: ingests edge results exactly once over MQTT (embedded
//! rumqttd behind a TLS gate, or an external broker) and gRPC, checks every batch's
//! device signature, stores them, and serves cases to people by role.

pub mod antientropy;
pub mod audit;
pub mod auth;
pub mod broker;
pub mod ca;
pub mod cases;
pub mod cli;
pub mod config;
pub mod denials;
pub mod device_port;
pub mod directory;
pub mod downlink;
pub mod error;
pub mod gate;
pub mod grpc;
pub mod http;
pub mod ingest;
pub mod media;
pub mod metrics;
pub mod ministry;
pub mod models;
pub mod mqtt;
pub mod perms;
pub mod ratelimit;
pub mod recovery;
pub mod store;
pub mod tls;
pub mod uplink;
pub mod web;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::audit::AuditLog;
use crate::auth::Auth;
use crate::ca::Registry;
use crate::cases::CaseService;
use crate::config::{BrokerKind, HubConfig, SecurityMode};
use crate::device_port::DevicePort;
use crate::directory::{Directory, FixedDirectory};
use crate::ingest::Ingest;
use crate::metrics::Metrics;

/// Runs the hub until `shutdown` is cancelled. Config must already be validated.
pub async fn run(cfg: HubConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Case data and keys: 0700 directories, 0600 files, including what was there before.
    perms::private_tree(&cfg.data_dir)
        .with_context(|| format!("creating data_dir {} (0700)", cfg.data_dir.display()))?;
    let metrics = Arc::new(Metrics::default());
    // A damaged store is set aside or reported here, never a reason not to start.
    let recovered =
        recovery::open_checked(&cfg.data_dir, metrics.clone()).context("opening the case store")?;
    perms::private_tree(&cfg.data_dir)
        .with_context(|| format!("making data_dir {} private", cfg.data_dir.display()))?;
    let sec = &cfg.security;
    let registry = match sec.mode {
        SecurityMode::Mtls => Some(Arc::new(
            Registry::new(&sec.pki_dir).context("opening the PKI (security.pki_dir)")?,
        )),
        SecurityMode::InsecurePlaintext => {
            tracing::warn!(
                "security.mode = insecure-plaintext: no TLS, no device certificates, unsigned \
                 batches accepted. For local development only."
            );
            None
        }
    };
    let audit = Arc::new(
        AuditLog::open(&cfg.data_dir, metrics.clone())
            .with_context(|| format!("opening the audit log in {}", cfg.data_dir.display()))?,
    );
    let mut ingest = Ingest::new(recovered, metrics.clone(), registry.clone());
    ingest.max_payload = cfg.mqtt.max_payload;
    ingest.audit = Some(audit.clone());
    let ingest = Arc::new(ingest);
    // Media the devices upload (previews, clips): read by the web application, written
    // by the uplink dispatcher through `media_receiver`.
    let media_store: Arc<dyn media::MediaStore> = Arc::new(
        media::FsMediaStore::open(&cfg.data_dir)
            .with_context(|| format!("opening the media store in {}", cfg.data_dir.display()))?,
    );
    let media_receiver: Arc<dyn uplink::MediaSink> = Arc::new(media::MediaReceiver::new(
        media_store.clone(),
        ingest.store.clone(),
        metrics.clone(),
    ));
    let auth = Arc::new(
        Auth::open(
            &sec.accounts_file,
            &cfg.data_dir.join("token.key"),
            sec.token_ttl_s * 1000,
        )
        .context("opening accounts")?,
    );
    let denials = tokio::spawn(flush_denials(audit.clone(), shutdown.clone()));
    let downlink = open_downlink(&cfg, registry.as_deref(), metrics.clone())?;
    // Model releases: offered per `models/rollout.json`, downloaded over the uplink.
    let device_list: Arc<dyn models::DeviceList> = match &registry {
        Some(r) => r.clone(),
        None => Arc::new(Vec::new()),
    };
    let model_control = Arc::new(
        models::ModelControl::open(
            models::ModelStore::new(&cfg.data_dir),
            downlink.clone(),
            device_list,
            Some(audit.clone()),
            metrics.clone(),
        )
        .with_shadow_source(ingest.store.clone()),
    );
    let model_task = tokio::spawn(model_control.clone().run(shutdown.clone()));
    let uplink = Arc::new(uplink::UplinkDispatcher {
        registry: registry.clone(),
        downlink: downlink.clone(),
        media: Some(media_receiver),
        models: Some(model_control),
        metrics: metrics.clone(),
        max_payload: cfg.mqtt.max_payload,
    });

    let max_packet = cfg.mqtt.max_payload * 4 + 1024;
    let (host, port, client_tls, device_port) = match (cfg.mqtt.broker, &registry) {
        (BrokerKind::Embedded, Some(reg)) => {
            let internal = loopback_port(cfg.mqtt.internal_listen)?;
            broker::start(internal, max_packet)
                .with_context(|| format!("starting the embedded MQTT broker on {internal}"))?;
            let listener = tokio::net::TcpListener::bind(cfg.mqtt.listen)
                .await
                .with_context(|| format!("binding the MQTT gate on {}", cfg.mqtt.listen))?;
            let gate = Arc::new(gate::Gate {
                acceptor: tls::acceptor(tls::server_config(reg.clone(), true, &[])?),
                broker: internal,
                max_packet,
                metrics: metrics.clone(),
                registry: reg.clone(),
            });
            tracing::info!(listen = %cfg.mqtt.listen, %internal, "MQTT gate (TLS, client certificates) and embedded broker started");
            (
                internal.ip().to_string(),
                internal.port(),
                None,
                Some(DevicePort::Gate(gate, listener)),
            )
        }
        (BrokerKind::Embedded, None) => {
            let internal = loopback_port(cfg.mqtt.internal_listen)?;
            broker::start(internal, max_packet)
                .with_context(|| format!("starting the embedded MQTT broker on {internal}"))?;
            let listener = tokio::net::TcpListener::bind(cfg.mqtt.listen)
                .await
                .with_context(|| format!("binding MQTT on {}", cfg.mqtt.listen))?;
            tracing::info!(listen = %cfg.mqtt.listen, %internal, "embedded MQTT broker started (plaintext)");
            (
                internal.ip().to_string(),
                internal.port(),
                None,
                Some(DevicePort::Plain(listener, internal)),
            )
        }
        (BrokerKind::External, _) => {
            let (h, p, tls) = cfg.external_broker()?;
            let client_tls = if tls {
                let opened;
                let pki = match &registry {
                    Some(r) => r.pki(),
                    None => {
                        opened = ca::Pki::open(&sec.pki_dir)?;
                        &opened
                    }
                };
                Some(Arc::new(pleura_shared::pki::client_config(
                    &pki.ca_cert(),
                    Some((&pki.hub_cert(), &pki.hub_key())),
                )?))
            } else {
                None
            };
            // The hub's session on an external broker is persistent: once subscribed,
            // the broker queues results for it across hub restarts.
            (h, p, client_tls, None)
        }
    };

    let grpc_listener = tokio::net::TcpListener::bind(cfg.grpc_listen)
        .await
        .with_context(|| format!("binding gRPC on {}", cfg.grpc_listen))?;
    let http_listener = tokio::net::TcpListener::bind(cfg.metrics_listen)
        .await
        .with_context(|| format!("binding metrics on {}", cfg.metrics_listen))?;

    let (subscribed, when_subscribed) = tokio::sync::oneshot::channel();
    let mqtt = tokio::spawn(mqtt::run(
        mqtt::MqttSettings {
            host,
            port,
            client_id: cfg.mqtt.client_id.clone(),
            share_group: cfg.mqtt.share_group.clone(),
            max_payload: cfg.mqtt.max_payload,
            tls: client_tls,
        },
        ingest.clone(),
        uplink,
        shutdown.clone(),
        subscribed,
    ));
    if let Some(port) = device_port {
        port.open_when(when_subscribed, shutdown.clone());
    }

    // Without a registry (insecure development mode) no clinic has a region.
    let directory: Arc<dyn Directory> = match &registry {
        Some(r) => r.clone(),
        None => Arc::new(FixedDirectory::default()),
    };
    let cases = Arc::new(
        CaseService::new(
            ingest.store.clone(),
            auth,
            audit,
            directory,
            ingest.integrity.clone(),
            metrics.clone(),
        )
        .with_review(cases::ReviewParts {
            media: media_store.clone(),
            downlink: downlink.clone(),
        })
        .with_ministry(cfg.ministry.settings()),
    );
    // Verdicts stored but not yet queued to every device: at start, then every minute.
    tokio::spawn(cases.clone().sweep_verdicts_periodically(shutdown.clone()));
    let svc = pleura_proto::v1::hub_server::HubServer::new(grpc::HubService {
        ingest: ingest.clone(),
        cases: cases.clone(),
    })
    // The batch limit itself is checked in ingest (counted, same for MQTT); this bound,
    // the same as the MQTT packet limit, keeps grossly oversized messages from being
    // buffered at all (tonic answers them RESOURCE_EXHAUSTED).
    .max_decoding_message_size(max_packet);
    let sd = shutdown.clone();
    let server = tonic::transport::Server::builder().add_service(svc);
    let grpc = match &registry {
        Some(reg) => {
            let acceptor = tls::acceptor(tls::server_config(reg.clone(), false, &[b"h2"])?);
            tokio::spawn(server.serve_with_incoming_shutdown(
                incoming::tls(grpc_listener, acceptor, shutdown.clone()),
                sd.cancelled_owned(),
            ))
        }
        None => tokio::spawn(
            server
                .serve_with_incoming_shutdown(incoming::plain(grpc_listener), sd.cancelled_owned()),
        ),
    };
    let sd = shutdown.clone();
    let router = http::router(http::HttpState {
        metrics: metrics.clone(),
        store: ingest.store.clone(),
        web: Some(web::WebState {
            cases,
            secure: registry.is_some(),
            shadow_report: Some(models::ModelStore::new(&cfg.data_dir).shadow_path()),
            ministry: Arc::new(cfg.ministry.clone()),
        }),
    })
    // The web application audits each caller's address.
    .into_make_service_with_connect_info::<web::PeerAddr>();
    // HTTPS with the hub certificate in mtls mode; plaintext only in insecure mode.
    let http = match &registry {
        Some(reg) => {
            let acceptor = tls::acceptor(tls::web_server_config(reg.pki())?);
            let listener =
                tls::TlsListener::new(http_listener, acceptor, "HTTPS", shutdown.clone())?;
            tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(sd.cancelled_owned())
                    .await
            })
        }
        None => tokio::spawn(async move {
            axum::serve(http_listener, router)
                .with_graceful_shutdown(sd.cancelled_owned())
                .await
        }),
    };
    tracing::info!(grpc = %cfg.grpc_listen, metrics = %cfg.metrics_listen, tls = registry.is_some(), "hub serving");

    shutdown.cancelled().await;
    let _ = mqtt.await;
    let _ = grpc.await;
    let _ = http.await;
    let _ = denials.await;
    let _ = model_task.await;
    tracing::info!("hub stopped");
    Ok(())
}

/// The queue of messages to devices, signed with the hub's downlink key (created in
/// the PKI if missing); unsigned in insecure mode.
fn open_downlink(
    cfg: &HubConfig,
    registry: Option<&Registry>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Arc<downlink::Downlink>> {
    let signer = match registry {
        Some(r) => {
            let (signer, created) = r
                .pki()
                .downlink_signer()
                .context("loading the hub's downlink key")?;
            if created {
                tracing::info!(
                    path = %r.pki().downlink_key().display(),
                    "created the hub's downlink key; devices enrolled before now need the \
                     new hub-downlink.pub (re-enrol, or copy it as their [tls] hub_key)"
                );
            }
            Some(signer)
        }
        None => None,
    };
    let dl = downlink::Downlink::open(&cfg.data_dir, signer, metrics)
        .context("opening the downlink queue")?;
    perms::private_tree(&cfg.data_dir)
        .with_context(|| format!("making data_dir {} private", cfg.data_dir.display()))?;
    Ok(Arc::new(dl))
}

/// Writes the folded counts of refused calls once their window closes, and all of them
/// at shutdown.
async fn flush_denials(audit: Arc<AuditLog>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(denials::WINDOW);
    loop {
        let all = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tick.tick() => false,
        };
        let a = audit.clone();
        let _ = tokio::task::spawn_blocking(move || a.flush_denials(all)).await;
        if all {
            return;
        }
    }
}

/// `addr`, or a free loopback port if its port is 0.
fn loopback_port(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    Ok(std::net::TcpListener::bind(addr)?.local_addr()?)
}

mod incoming {
    //! Listeners as the streams of connections tonic's server wants.
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::server::TlsStream;
    use tokio_rustls::TlsAcceptor;
    use tokio_util::sync::CancellationToken;

    pub fn plain(
        listener: TcpListener,
    ) -> impl futures_core::Stream<Item = std::io::Result<TcpStream>> {
        futures_util::stream::unfold(listener, |l| async move {
            let r = l.accept().await.map(|(s, _)| s);
            Some((r, l))
        })
    }

    pub fn tls(
        listener: TcpListener,
        acceptor: TlsAcceptor,
        shutdown: CancellationToken,
    ) -> impl futures_core::Stream<Item = std::io::Result<TlsStream<TcpStream>>> {
        let rx = crate::tls::handshakes(listener, acceptor, "gRPC", shutdown);
        futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|(s, _)| (Ok(s), rx))
        })
    }
}
