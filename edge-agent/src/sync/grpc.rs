//! The gRPC fallback: the same batches, acknowledged in the response.

use std::time::Duration;

use pleura_proto::v1::hub_client::HubClient;
use pleura_shared::wire::{ResultAck, SignedBatch};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

pub struct Fallback {
    url: String,
    tls: Option<ClientTlsConfig>,
    client: Option<HubClient<Channel>>,
}

impl Fallback {
    pub fn new(url: String, tls: Option<ClientTlsConfig>) -> Self {
        Self {
            url,
            tls,
            client: None,
        }
    }

    pub async fn upload(&mut self, batch: SignedBatch) -> anyhow::Result<ResultAck> {
        if self.client.is_none() {
            let mut ep = Endpoint::from_shared(self.url.clone())?
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(30));
            if let Some(tls) = &self.tls {
                ep = ep.tls_config(tls.clone())?;
            }
            self.client = Some(HubClient::new(ep.connect().await?));
        }
        let client = self.client.as_mut().expect("set above");
        match client.upload(batch).await {
            Ok(r) => Ok(r.into_inner()),
            Err(status) => {
                self.client = None;
                Err(anyhow::anyhow!("gRPC upload: {status}"))
            }
        }
    }
}
