//! The hub's gRPC API as a person uses it: TLS channel, login, cases, sync status.

use std::path::Path;

use anyhow::Result;
use pleura_proto::v1::hub_client::HubClient;
use pleura_proto::v1::{Case, ListCasesRequest, LoginRequest, SyncStatusRequest};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::*;

impl Hub {
    /// A gRPC channel to the hub: TLS trusting its CA, with `identity` (a device bundle
    /// dir) as client certificate if given.
    pub async fn channel(&self, identity: Option<&Path>) -> Result<Channel> {
        let Some(pki) = &self.pki else {
            return Ok(
                Endpoint::from_shared(format!("http://127.0.0.1:{}", self.grpc_port))?
                    .connect()
                    .await?,
            );
        };
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(pki.join("ca.pem"))?));
        if let Some(b) = identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(
                std::fs::read(b.join("device.pem"))?,
                std::fs::read(b.join("device.key"))?,
            ));
        }
        Ok(
            Endpoint::from_shared(format!("https://127.0.0.1:{}", self.grpc_port))?
                .tls_config(tls)?
                .connect()
                .await?,
        )
    }

    /// Logs in; returns the bearer token.
    pub async fn login(&self, user: &str, password: &str) -> Result<String> {
        let mut c = HubClient::new(self.channel(None).await?);
        Ok(c.login(LoginRequest {
            username: user.into(),
            password: password.into(),
        })
        .await?
        .into_inner()
        .token)
    }

    /// Every stored case, via the gRPC API, as the operator sees them.
    pub fn cases(&self) -> Result<Vec<Case>> {
        block_on(async move {
            let token = self.login(OPERATOR.0, OPERATOR.1).await?;
            let mut c = HubClient::new(self.channel(None).await?);
            let r = c
                .list_cases(bearer(
                    ListCasesRequest {
                        limit: 10_000,
                        ..Default::default()
                    },
                    &token,
                ))
                .await?
                .into_inner();
            Ok(r.cases)
        })
    }

    /// Result ids (hex) of every stored case.
    pub fn case_ids(&self) -> Result<Vec<String>> {
        Ok(self
            .cases()?
            .into_iter()
            .filter_map(|c| c.result.map(|r| hex(&r.result_id)))
            .collect())
    }

    /// (results, duplicates) the hub has seen from each device.
    pub fn devices(&self) -> Result<Vec<(String, u64, u64)>> {
        block_on(async move {
            let token = self.login(OPERATOR.0, OPERATOR.1).await?;
            let mut c = HubClient::new(self.channel(None).await?);
            let r = c
                .sync_status(bearer(SyncStatusRequest {}, &token))
                .await?
                .into_inner();
            Ok(r.devices
                .into_iter()
                .map(|d| {
                    (
                        format!("{}/{}", d.clinic_id, d.device_id),
                        d.results,
                        d.duplicates,
                    )
                })
                .collect())
        })
    }
}

/// A request carrying `authorization: Bearer <token>`.
pub fn bearer<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ASCII token"),
    );
    r
}
