//! The gRPC fallback: the same batches, acknowledged in the response.

use std::time::Duration;

use pleura_proto::v1::hub_client::HubClient;
use pleura_shared::wire::{ResultAck, ResultBatch};
use tonic::transport::{Channel, Endpoint};

pub struct Fallback {
    url: String,
    client: Option<HubClient<Channel>>,
}

impl Fallback {
    pub fn new(url: String) -> Self {
        Self { url, client: None }
    }

    pub async fn upload(&mut self, batch: ResultBatch) -> anyhow::Result<ResultAck> {
        if self.client.is_none() {
            let ep = Endpoint::from_shared(self.url.clone())?
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(30));
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
