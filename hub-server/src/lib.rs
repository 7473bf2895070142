//! Pleura's regional hub: ingests edge results exactly once over MQTT (embedded
//! rumqttd or an external broker) and gRPC, stores them, serves cases and metrics.

pub mod broker;
pub mod config;
pub mod grpc;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod mqtt;
pub mod store;

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::{BrokerKind, HubConfig};
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::store::{HubStore, SledStore};

/// Runs the hub until `shutdown` is cancelled. Config must already be validated.
pub async fn run(cfg: HubConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data_dir {}", cfg.data_dir.display()))?;
    let store: Arc<dyn HubStore> =
        Arc::new(SledStore::open(&cfg.data_dir).context("opening the case store")?);
    let ingest = Arc::new(Ingest {
        store,
        metrics: Arc::new(Metrics::default()),
        max_payload: cfg.mqtt.max_payload,
    });

    if cfg.mqtt.broker == BrokerKind::Embedded {
        broker::start(cfg.mqtt.listen, cfg.mqtt.max_payload * 4 + 1024)
            .with_context(|| format!("starting the embedded MQTT broker on {}", cfg.mqtt.listen))?;
        tracing::info!(listen = %cfg.mqtt.listen, "embedded MQTT broker started");
    }

    let grpc_listener = tokio::net::TcpListener::bind(cfg.grpc_listen)
        .await
        .with_context(|| format!("binding gRPC on {}", cfg.grpc_listen))?;
    let http_listener = tokio::net::TcpListener::bind(cfg.metrics_listen)
        .await
        .with_context(|| format!("binding metrics on {}", cfg.metrics_listen))?;

    let (host, port) = cfg.mqtt_endpoint()?;
    let mqtt = tokio::spawn(mqtt::run(
        mqtt::MqttSettings {
            host,
            port,
            client_id: cfg.mqtt.client_id.clone(),
            share_group: cfg.mqtt.share_group.clone(),
            max_payload: cfg.mqtt.max_payload,
        },
        ingest.clone(),
        shutdown.clone(),
    ));

    let svc = pleura_proto::v1::hub_server::HubServer::new(grpc::HubService {
        ingest: ingest.clone(),
    });
    let sd = shutdown.clone();
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(
                tokio_stream_compat::incoming(grpc_listener),
                sd.cancelled_owned(),
            ),
    );
    let sd = shutdown.clone();
    let router = http::router(ingest.clone());
    let http = tokio::spawn(async move {
        axum::serve(http_listener, router)
            .with_graceful_shutdown(sd.cancelled_owned())
            .await
    });
    tracing::info!(grpc = %cfg.grpc_listen, metrics = %cfg.metrics_listen, "hub serving");

    shutdown.cancelled().await;
    let _ = mqtt.await;
    let _ = grpc.await;
    let _ = http.await;
    tracing::info!("hub stopped");
    Ok(())
}

mod tokio_stream_compat {
    //! A TcpListener as the stream of connections tonic's server wants.
    use tokio::net::{TcpListener, TcpStream};

    pub fn incoming(
        listener: TcpListener,
    ) -> impl futures_core::Stream<Item = std::io::Result<TcpStream>> {
        futures_util::stream::unfold(listener, |l| async move {
            let r = l.accept().await.map(|(s, _)| s);
            Some((r, l))
        })
    }
}
