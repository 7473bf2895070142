//! The hub's gRPC API. Devices upload signed batches (the fallback when MQTT is
//! blocked) over mTLS; people log in for a bearer token and get what their role allows.
//! Every access to a case or the worklist, allowed or denied, goes to the audit log
//! before any data is returned.

use std::sync::Arc;

use pleura_proto::v1::hub_server::Hub;
use pleura_proto::v1::{
    Aggregate, AggregatesRequest, AggregatesResponse, Case, DeviceStatus, GetCaseRequest,
    ListCasesRequest, ListCasesResponse, LoginRequest, LoginResponse, ResultAck, SignedBatch,
    SyncStatusRequest, SyncStatusResponse,
};
use pleura_shared::ResultId;
use tonic::{Request, Response, Status};

use crate::audit::AuditLog;
use crate::auth::{Auth, AuthError, Caller, Role};
use crate::ca::Registry;
use crate::ingest::{Ingest, IngestError};
use crate::metrics::Metrics;
use crate::store::{CaseFilter, StoreError, StoredCase};
use crate::tls::peer_device;

pub struct HubService {
    pub ingest: Arc<Ingest>,
    pub auth: Arc<Auth>,
    pub audit: Arc<AuditLog>,
    /// None in insecure development mode: uploads then need no certificate.
    pub registry: Option<Arc<Registry>>,
}

fn store_status(e: StoreError) -> Status {
    tracing::error!(error = %e, "store error");
    Status::unavailable(e.to_string())
}

fn ingest_status(e: IngestError) -> Status {
    match e {
        IngestError::Store(s) => store_status(s),
        e @ (IngestError::Untrusted(_) | IngestError::Unsigned(_) | IngestError::Signature(_)) => {
            Status::permission_denied(e.to_string())
        }
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

impl HubService {
    fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated(AuthError::NoToken.to_string()))?;
        self.auth.verify(token).map_err(|e| match e {
            AuthError::Accounts { .. } => {
                tracing::error!(error = %e, "accounts file");
                Status::unavailable("accounts unavailable")
            }
            e => Status::unauthenticated(e.to_string()),
        })
    }

    fn audit(&self, who: &Caller, action: &str, target: &str, outcome: &str) -> Result<(), Status> {
        self.audit
            .record(&who.username, who.role.as_str(), action, target, outcome)
            .map_err(|e| {
                tracing::error!(error = %e, "audit log write failed; refusing the access");
                Status::unavailable("audit log unavailable")
            })
    }

    /// Logs a denial and returns the status to send.
    fn deny(&self, who: &Caller, action: &str, target: &str, why: &str) -> Status {
        if let Err(s) = self.audit(who, action, target, &format!("denied: {why}")) {
            return s;
        }
        Status::permission_denied(why.to_string())
    }

    /// Clinics whose cases the caller may see (None: all).
    fn clinic_scope(&self, who: &Caller) -> Option<std::collections::HashSet<String>> {
        match who.role {
            Role::Operator => None,
            _ => Some(
                self.registry
                    .as_ref()
                    .map(|r| r.clinics_in(&who.region))
                    .unwrap_or_default(),
            ),
        }
    }
}

#[tonic::async_trait]
impl Hub for HubService {
    async fn upload(&self, req: Request<SignedBatch>) -> Result<Response<ResultAck>, Status> {
        let sender = match &self.registry {
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
        let out = blocking(move || {
            ing.upload(batch, sender).map_err(|e| {
                ing.metrics.reject_message(e.label());
                ingest_status(e)
            })
        })
        .await?;
        Metrics::inc(&self.ingest.metrics.grpc_uploads, 1);
        Ok(Response::new(out.ack))
    }

    async fn login(&self, req: Request<LoginRequest>) -> Result<Response<LoginResponse>, Status> {
        let r = req.into_inner();
        let auth = self.auth.clone();
        let user = r.username.clone();
        let res = tokio::task::spawn_blocking(move || auth.login(&r.username, &r.password))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        match res {
            Ok((token, exp, who)) => {
                self.audit(&who, "login", "", "allowed")?;
                Ok(Response::new(LoginResponse {
                    token,
                    expires_at_ms: exp,
                    role: who.role.as_str().into(),
                    region: who.region,
                }))
            }
            Err(e) => {
                let name: String = user.chars().take(64).collect();
                self.audit
                    .record(&name, "-", "login", "", &format!("denied: {e}"))
                    .map_err(|_| Status::unavailable("audit log unavailable"))?;
                Err(Status::unauthenticated(e.to_string()))
            }
        }
    }

    async fn list_cases(
        &self,
        req: Request<ListCasesRequest>,
    ) -> Result<Response<ListCasesResponse>, Status> {
        let who = self.caller(&req)?;
        if who.role == Role::Ministry {
            return Err(self.deny(
                &who,
                "list_cases",
                "",
                "ministry viewers see aggregates only",
            ));
        }
        let r = req.into_inner();
        let mut filter = CaseFilter {
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
        if who.role == Role::Specialist {
            // The worklist: flagged cases only.
            filter.flagged = Some(true);
        }
        let scope = self.clinic_scope(&who);
        let store = self.ingest.store.clone();
        let cases = blocking(move || {
            let mut f = filter;
            let limit = f.limit;
            f.limit = 0;
            let mut all = store.list(&f).map_err(store_status)?;
            if let Some(s) = &scope {
                all.retain(|c| s.contains(&c.record.clinic));
            }
            all.truncate(limit);
            Ok(all)
        })
        .await?;
        self.audit(
            &who,
            "list_cases",
            &format!("{} cases", cases.len()),
            "allowed",
        )?;
        Ok(Response::new(ListCasesResponse {
            cases: cases.into_iter().map(to_case).collect(),
        }))
    }

    async fn get_case(&self, req: Request<GetCaseRequest>) -> Result<Response<Case>, Status> {
        let who = self.caller(&req)?;
        let id = ResultId::from_slice(&req.into_inner().result_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let target = id.to_string();
        if who.role == Role::Ministry {
            return Err(self.deny(
                &who,
                "get_case",
                &target,
                "ministry viewers see aggregates only",
            ));
        }
        let store = self.ingest.store.clone();
        let case = blocking(move || store.get(&id).map_err(store_status)).await?;
        // Not-found and out-of-scope answer alike: a specialist cannot probe other
        // regions for which case ids exist.
        let in_scope = case.as_ref().is_some_and(|c| {
            self.clinic_scope(&who)
                .is_none_or(|s| s.contains(&c.record.clinic) && c.record.analysis.flagged)
        });
        if !in_scope {
            return Err(self.deny(&who, "get_case", &target, "no such case in your scope"));
        }
        self.audit(&who, "get_case", &target, "allowed")?;
        Ok(Response::new(to_case(case.expect("in scope"))))
    }

    async fn aggregates(
        &self,
        req: Request<AggregatesRequest>,
    ) -> Result<Response<AggregatesResponse>, Status> {
        let who = self.caller(&req)?;
        let r = req.into_inner();
        let regions = self
            .registry
            .as_ref()
            .map(|r| r.regions())
            .unwrap_or_default();
        let only = (who.role == Role::Specialist).then(|| who.region.clone());
        let store = self.ingest.store.clone();
        let rows = blocking(move || {
            let f = CaseFilter {
                from_day: (r.from_day > 0).then_some(r.from_day),
                to_day: (r.to_day > 0).then_some(r.to_day),
                ..Default::default()
            };
            let mut acc: std::collections::BTreeMap<(String, u32), Aggregate> = Default::default();
            for c in store.list(&f).map_err(store_status)? {
                let region = regions
                    .get(&c.record.clinic)
                    .cloned()
                    .unwrap_or_else(|| "unassigned".into());
                if only.as_ref().is_some_and(|o| *o != region) {
                    continue;
                }
                let a = acc
                    .entry((region.clone(), c.record.scan_day))
                    .or_insert_with(|| Aggregate {
                        region,
                        day: c.record.scan_day,
                        by_severity: vec![0; 4],
                        by_class: vec![0; 3],
                        ..Default::default()
                    });
                a.scans += 1;
                a.flagged += u64::from(c.record.analysis.flagged);
                a.by_severity[c.record.analysis.severity.score().min(3) as usize] += 1;
                let class = c.record.analysis.class_probs.most_likely();
                a.by_class[pleura_shared::LungClass::ALL
                    .iter()
                    .position(|x| *x == class)
                    .unwrap_or(2)] += 1;
            }
            Ok(acc.into_values().collect())
        })
        .await?;
        Ok(Response::new(AggregatesResponse { rows }))
    }

    async fn sync_status(
        &self,
        req: Request<SyncStatusRequest>,
    ) -> Result<Response<SyncStatusResponse>, Status> {
        let who = self.caller(&req)?;
        if who.role != Role::Operator {
            return Err(Status::permission_denied("sync status is for operators"));
        }
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
