//! The fallback transport: the same signed batches as `Hub/Upload` calls, the hub's
//! answer in the reply. The channel is opened on first use and again after a failure.

use std::time::Duration;

use pleura_proto::v1::hub_client::HubClient;
use pleura_shared::wire::SignedBatch;
use prost::Message;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::{Answers, Event, Sent, Transport, TransportError};

pub struct Grpc {
    url: String,
    tls: Option<ClientTlsConfig>,
    client: Option<HubClient<Channel>>,
}

impl Grpc {
    pub fn new(url: String, tls: Option<ClientTlsConfig>) -> Self {
        Self {
            url,
            tls,
            client: None,
        }
    }

    async fn connect(&self) -> Result<HubClient<Channel>, tonic::transport::Error> {
        let mut ep = Endpoint::from_shared(self.url.clone())?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30));
        if let Some(tls) = &self.tls {
            ep = ep.tls_config(tls.clone())?;
        }
        Ok(HubClient::new(ep.connect().await?))
    }
}

impl Transport for Grpc {
    fn name(&self) -> &'static str {
        "grpc"
    }

    fn answers(&self) -> Answers {
        Answers::Inline
    }

    async fn send(&mut self, batch: SignedBatch) -> Result<Sent, TransportError> {
        let mut client = match self.client.take() {
            Some(c) => c,
            None => self
                .connect()
                .await
                .map_err(|e| TransportError::chain(&e))?,
        };
        let bytes = batch.encoded_len();
        match client.upload(batch).await {
            Ok(r) => {
                self.client = Some(client);
                Ok(Sent {
                    bytes,
                    answer: Some(r.into_inner()),
                })
            }
            Err(status) => Err(TransportError::new(format!("gRPC upload: {status}"))),
        }
    }

    /// Nothing arrives unasked: every answer is a call's reply.
    async fn next_event(&mut self) -> Option<Event> {
        std::future::pending().await
    }

    async fn stop(self) {}
}
