//! The hub's gRPC API: upload (the fallback when MQTT is blocked), cases, sync status.

use std::sync::Arc;

use pleura_proto::v1::hub_server::Hub;
use pleura_proto::v1::{
    Case, DeviceStatus, GetCaseRequest, ListCasesRequest, ListCasesResponse, ResultAck,
    ResultBatch, SyncStatusRequest, SyncStatusResponse,
};
use pleura_shared::ResultId;
use tonic::{Request, Response, Status};

use crate::ingest::{Ingest, IngestError};
use crate::metrics::Metrics;
use crate::store::{CaseFilter, StoreError, StoredCase};

pub struct HubService {
    pub ingest: Arc<Ingest>,
}

fn store_status(e: StoreError) -> Status {
    tracing::error!(error = %e, "store error");
    Status::unavailable(e.to_string())
}

fn ingest_status(e: IngestError) -> Status {
    match e {
        IngestError::Store(s) => store_status(s),
        e => Status::invalid_argument(e.to_string()),
    }
}

fn to_case(c: StoredCase) -> Case {
    Case {
        result: Some(c.record.to_wire()),
        received_at_ms: c.received_at_ms,
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(e.to_string()))?
}

#[tonic::async_trait]
impl Hub for HubService {
    async fn upload(&self, req: Request<ResultBatch>) -> Result<Response<ResultAck>, Status> {
        let ing = self.ingest.clone();
        let batch = req.into_inner();
        let out = blocking(move || {
            ing.decoded(batch, None).map_err(|e| {
                ing.metrics.reject_message(e.label());
                ingest_status(e)
            })
        })
        .await?;
        Metrics::inc(&self.ingest.metrics.grpc_uploads, 1);
        Ok(Response::new(out.ack))
    }

    async fn list_cases(
        &self,
        req: Request<ListCasesRequest>,
    ) -> Result<Response<ListCasesResponse>, Status> {
        let r = req.into_inner();
        let filter = CaseFilter {
            clinic: (!r.clinic_id.is_empty()).then_some(r.clinic_id),
            from_day: (r.from_day > 0).then_some(r.from_day),
            to_day: (r.to_day > 0).then_some(r.to_day),
            flagged: r.flagged,
            min_severity: u8::try_from(r.min_severity.min(3)).unwrap_or(3),
            limit: if r.limit == 0 {
                1000
            } else {
                r.limit.min(10_000) as usize
            },
        };
        let store = self.ingest.store.clone();
        let cases = blocking(move || store.list(&filter).map_err(store_status)).await?;
        Ok(Response::new(ListCasesResponse {
            cases: cases.into_iter().map(to_case).collect(),
        }))
    }

    async fn get_case(&self, req: Request<GetCaseRequest>) -> Result<Response<Case>, Status> {
        let id = ResultId::from_slice(&req.into_inner().result_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let store = self.ingest.store.clone();
        match blocking(move || store.get(&id).map_err(store_status)).await? {
            Some(c) => Ok(Response::new(to_case(c))),
            None => Err(Status::not_found(format!("no case {id}"))),
        }
    }

    async fn sync_status(
        &self,
        _req: Request<SyncStatusRequest>,
    ) -> Result<Response<SyncStatusResponse>, Status> {
        let store = self.ingest.store.clone();
        let devices = blocking(move || store.devices().map_err(store_status)).await?;
        Ok(Response::new(SyncStatusResponse {
            devices: devices
                .into_iter()
                .map(|d| DeviceStatus {
                    clinic_id: d.clinic,
                    device_id: d.device,
                    results: d.results,
                    duplicates: d.duplicates,
                    last_received_ms: d.last_received_ms,
                })
                .collect(),
        }))
    }
}
