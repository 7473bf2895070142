//! The hub's gRPC API, a thin adapter: devices upload signed batches (the fallback when
//! MQTT is blocked) over mTLS through `ingest`; people's calls are converted to and from
//! the case service (`cases`), which decides what they may see and audits every access.
//! `HubError` is mapped to gRPC status codes here, once.

use std::sync::Arc;

use pleura_proto::v1::hub_server::Hub;
use pleura_proto::v1::{
    Aggregate, AggregatesRequest, AggregatesResponse, Case, Count, DeviceStatus, GetCaseRequest,
    ListCasesRequest, ListCasesResponse, LoginRequest, LoginResponse, ResultAck, SignedBatch,
    SyncStatusRequest, SyncStatusResponse, Table,
};
use pleura_shared::ResultId;
use tonic::{Request, Response, Status};

use crate::cases::ministry::ReportRequest;
use crate::cases::{Action, CaseQuery, CaseService, DayRange, RegionDay, SyncStatus, Who};
use crate::error::HubError;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::ministry::period::IsoWeek;
use crate::ministry::query::ClinicDetail;
use crate::ministry::report::NamedTable;
use crate::ministry::suppress::Cell;
use crate::store::StoredCase;
use crate::tls::peer_device;

pub struct HubService {
    /// Device uploads.
    pub ingest: Arc<Ingest>,
    /// Everything people ask for.
    pub cases: Arc<CaseService>,
}

impl From<HubError> for Status {
    fn from(e: HubError) -> Self {
        match e {
            HubError::Unauthenticated(m) => Status::unauthenticated(m),
            HubError::Denied(m) => Status::permission_denied(m),
            HubError::Invalid(m) => Status::invalid_argument(m),
            HubError::Exhausted(m) => Status::resource_exhausted(m),
            HubError::Unavailable(m) => Status::unavailable(m),
            HubError::Internal(m) => Status::internal(m),
        }
    }
}

fn to_case(c: StoredCase) -> Case {
    let (retracted, retraction_reason, retracted_at_ms) = match c.retraction {
        Some(r) => (true, r.reason, r.at_ms),
        None => (false, String::new(), 0),
    };
    Case {
        result: Some(c.record.to_wire()),
        received_at_ms: c.received_at_ms,
        retracted,
        retraction_reason,
        retracted_at_ms,
    }
}

fn to_aggregate(r: RegionDay) -> Aggregate {
    Aggregate {
        region: r.region,
        day: r.day,
        scans: r.counts.scans,
        flagged: r.counts.flagged,
        by_severity: r.counts.by_severity.to_vec(),
        by_class: r.counts.by_class.to_vec(),
        by_model: r.counts.by_model.into_iter().collect(),
    }
}

fn to_count(c: &Cell) -> Count {
    match c {
        Cell::Shown(v) => Count {
            value: *v,
            suppressed: false,
        },
        Cell::Suppressed => Count {
            value: 0,
            suppressed: true,
        },
    }
}

fn to_table(t: &NamedTable) -> Table {
    let p = &t.published;
    Table {
        id: t.id.clone(),
        title: t.title.clone(),
        rows: t.rows.clone(),
        cols: t.cols.clone(),
        cells: p.cells.iter().map(to_count).collect(),
        row_totals: p.row_totals.iter().map(to_count).collect(),
        col_totals: p.col_totals.iter().map(to_count).collect(),
        grand_total: Some(to_count(&p.grand_total)),
    }
}

fn to_sync_status(s: SyncStatus) -> SyncStatusResponse {
    SyncStatusResponse {
        devices: s
            .devices
            .into_iter()
            .map(|d| DeviceStatus {
                clinic_id: d.stats.clinic,
                device_id: d.stats.device,
                results: d.stats.results,
                duplicates: d.stats.duplicates,
                last_received_ms: d.stats.last_received_ms,
                missing: d.missing,
                last_seen_ms: d.stats.last_seen_ms,
                queue_pending: d.stats.queue_pending,
                oldest_pending_ms: d.stats.oldest_pending_ms,
                queue_reported_ms: d.stats.queue_reported_ms,
            })
            .collect(),
        missing: s.missing,
        journal_damaged_lines: s.journal_damaged_lines,
        corrupt_cases: s.corrupt_cases,
        store_set_aside: s
            .store_set_aside
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    }
}

/// 0 means unbounded in the wire's day ranges.
fn day(d: u32) -> Option<u32> {
    (d > 0).then_some(d)
}

/// The caller's IP address (not the port: one client opens many connections).
fn source<T>(req: &Request<T>) -> String {
    req.remote_addr()
        .map_or_else(|| "unknown".into(), |a| a.ip().to_string())
}

impl HubService {
    /// The person behind the request's bearer token (refusals are audited).
    async fn who<T>(&self, req: &Request<T>, action: Action) -> Result<Who, Status> {
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        Ok(self.cases.caller(token, &source(req), action).await?)
    }
}

#[tonic::async_trait]
impl Hub for HubService {
    async fn upload(&self, req: Request<SignedBatch>) -> Result<Response<ResultAck>, Status> {
        let sender = match &self.ingest.registry {
            Some(_) => {
                let certs = req.peer_certs();
                Some(
                    peer_device(certs.as_deref().map(|c| c.as_slice())).ok_or_else(|| {
                        Status::unauthenticated("upload needs a device client certificate")
                    })?,
                )
            }
            None => None,
        };
        let ing = self.ingest.clone();
        let batch = req.into_inner();
        let out = tokio::task::spawn_blocking(move || {
            ing.upload(batch, sender).map_err(|e| {
                ing.metrics.reject_message(e.label());
                HubError::from(e)
            })
        })
        .await
        .map_err(HubError::from)??;
        Metrics::inc(&self.ingest.metrics.grpc_uploads, 1);
        Ok(Response::new(out.ack))
    }

    async fn login(&self, req: Request<LoginRequest>) -> Result<Response<LoginResponse>, Status> {
        let source = source(&req);
        let r = req.into_inner();
        let s = self.cases.login(&r.username, &r.password, &source).await?;
        Ok(Response::new(LoginResponse {
            token: s.token,
            expires_at_ms: s.expires_at_ms,
            role: s.caller.role.as_str().into(),
            region: s.caller.region,
        }))
    }

    async fn list_cases(
        &self,
        req: Request<ListCasesRequest>,
    ) -> Result<Response<ListCasesResponse>, Status> {
        let who = self.who(&req, Action::ListCases).await?;
        let r = req.into_inner();
        let q = CaseQuery {
            clinic: (!r.clinic_id.is_empty()).then_some(r.clinic_id),
            from_day: day(r.from_day),
            to_day: day(r.to_day),
            flagged: r.flagged,
            min_severity: u8::try_from(r.min_severity.min(3)).unwrap_or(3),
            offset: 0,
            limit: r.limit as usize,
        };
        let cases = self.cases.list(&who, q).await?;
        Ok(Response::new(ListCasesResponse {
            cases: cases.into_iter().map(to_case).collect(),
        }))
    }

    async fn get_case(&self, req: Request<GetCaseRequest>) -> Result<Response<Case>, Status> {
        let who = self.who(&req, Action::GetCase).await?;
        let id = ResultId::from_slice(&req.into_inner().result_id)
            .map_err(|e| HubError::Invalid(e.to_string()))?;
        Ok(Response::new(to_case(self.cases.get(&who, id).await?)))
    }

    async fn aggregates(
        &self,
        req: Request<AggregatesRequest>,
    ) -> Result<Response<AggregatesResponse>, Status> {
        let who = self.who(&req, Action::Aggregates).await?;
        let r = req.into_inner();
        let days = DayRange {
            from_day: day(r.from_day),
            to_day: day(r.to_day),
        };
        let rows = self.cases.aggregates(&who, days).await?;
        let mut reply = AggregatesResponse {
            rows: rows.into_iter().map(to_aggregate).collect(),
            ..Default::default()
        };
        if crate::cases::policy::ministry_report(&who.caller).is_ok() {
            let week = |name: &str, v: &str| {
                (!v.is_empty())
                    .then(|| IsoWeek::parse(v))
                    .transpose()
                    .map_err(|e| HubError::Invalid(format!("{name}: {e}")))
            };
            let req = ReportRequest {
                from: week("from_week", &r.from_week)?,
                to: week("to_week", &r.to_week)?,
                clinics_of: Some(ClinicDetail::All),
                disaggregate: false,
                purpose: "grpc",
            };
            let report = self.cases.ministry_report(&who, req).await?;
            reply.tables = crate::ministry::export::csv::tables(&report)
                .into_iter()
                .map(to_table)
                .collect();
            reply.suppression_threshold = report.threshold;
        }
        Ok(Response::new(reply))
    }

    async fn sync_status(
        &self,
        req: Request<SyncStatusRequest>,
    ) -> Result<Response<SyncStatusResponse>, Status> {
        let who = self.who(&req, Action::SyncStatus).await?;
        let status = self.cases.sync_status(&who).await?;
        Ok(Response::new(to_sync_status(status)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn each_error_kind_has_its_grpc_code_and_keeps_its_message() {
        let cases = [
            (
                HubError::Unauthenticated("no bearer token".into()),
                Code::Unauthenticated,
            ),
            (
                HubError::Denied("no such case in your scope".into()),
                Code::PermissionDenied,
            ),
            (HubError::Invalid("bad id".into()), Code::InvalidArgument),
            (
                HubError::Exhausted("too many attempts".into()),
                Code::ResourceExhausted,
            ),
            (
                HubError::Unavailable("audit log unavailable".into()),
                Code::Unavailable,
            ),
            (HubError::Internal("join".into()), Code::Internal),
        ];
        for (e, code) in cases {
            let s = Status::from(e.clone());
            assert_eq!((s.code(), s.message()), (code, e.to_string().as_str()));
        }
    }
}
