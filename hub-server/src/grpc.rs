//! The hub's gRPC API. Devices upload signed batches (the fallback when MQTT is
//! blocked) over mTLS; people log in for a bearer token and get what their role allows.
//! Every access to a case, the worklist, aggregates or sync status, allowed or denied,
//! goes to the audit log before any data is returned; so does every call refused for its
//! token (folded per source under a flood, see `denials`). Logins are throttled per
//! account and per source address (`ratelimit`).

use std::sync::Arc;
use std::time::Instant;

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
use crate::ratelimit::{Attempt, LoginLimiter};
use crate::store::{CaseFilter, Listing, StoreError, StoredCase};
use crate::tls::peer_device;

pub struct HubService {
    pub ingest: Arc<Ingest>,
    pub auth: Arc<Auth>,
    pub audit: Arc<AuditLog>,
    /// None in insecure development mode: uploads then need no certificate.
    pub registry: Option<Arc<Registry>>,
    pub limiter: LoginLimiter,
}

fn store_status(e: StoreError) -> Status {
    tracing::error!(error = %e, "store error");
    Status::unavailable(e.to_string())
}

fn ingest_status(e: IngestError) -> Status {
    match e {
        IngestError::Store(s) => store_status(s),
        e @ IngestError::Journal(_) => {
            tracing::error!(error = %e, "case journal write failed");
            Status::unavailable(e.to_string())
        }
        e @ (IngestError::Untrusted(_) | IngestError::Unsigned(_) | IngestError::Signature(_)) => {
            Status::permission_denied(e.to_string())
        }
        e @ (IngestError::TooLarge(..) | IngestError::TooMany(..)) => {
            Status::resource_exhausted(e.to_string())
        }
        e => Status::invalid_argument(e.to_string()),
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

/// A listing, with undecodable cases said and skipped.
fn listed(l: Result<Listing, StoreError>) -> Result<Vec<StoredCase>, Status> {
    let l = l.map_err(store_status)?;
    if l.corrupt > 0 {
        tracing::warn!(
            corrupt = l.corrupt,
            "stored cases that no longer decode were skipped"
        );
    }
    Ok(l.cases)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(e.to_string()))?
}

/// The caller's IP address (not the port: one client opens many connections).
fn source<T>(req: &Request<T>) -> String {
    req.remote_addr()
        .map_or_else(|| "unknown".into(), |a| a.ip().to_string())
}

fn audit_unavailable(e: std::io::Error) -> Status {
    tracing::error!(error = %e, "audit log write failed; refusing the access");
    Status::unavailable("audit log unavailable")
}

/// Who called, as the audit log records them.
struct Who {
    caller: Caller,
    source: String,
}

impl HubService {
    /// Records a refused call (folded per source, see `denials`), off the async workers:
    /// the write fsyncs.
    async fn deny_call(&self, source: &str, user: &str, action: &str, reason: &str) {
        let a = self.audit.clone();
        let (source, user, action, reason) = (
            source.to_string(),
            user.to_string(),
            action.to_string(),
            reason.to_string(),
        );
        let _ = tokio::task::spawn_blocking(move || a.deny_call(&source, &user, &action, &reason))
            .await;
    }

    /// The caller behind the request's token. A refusal is audited (without the token),
    /// with the peer address and the reason.
    async fn caller<T>(&self, req: &Request<T>, action: &str) -> Result<Who, Status> {
        let source = source(req);
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let res = match token {
            Some(t) => self.auth.verify(t),
            None => Err(AuthError::NoToken),
        };
        match res {
            Ok(caller) => Ok(Who { caller, source }),
            Err(e @ AuthError::Accounts { .. }) => {
                tracing::error!(error = %e, "accounts file");
                Err(Status::unavailable("accounts unavailable"))
            }
            Err(e) => {
                let user = match &e {
                    AuthError::Stale(u) => u.chars().take(64).collect(),
                    _ => "-".to_string(),
                };
                self.deny_call(&source, &user, action, &e.to_string()).await;
                Err(Status::unauthenticated(e.to_string()))
            }
        }
    }

    /// Appends one entry off the async workers (the append fsyncs the log and the
    /// checkpoint); an access whose entry could not be written is refused.
    async fn audit(
        &self,
        who: &Who,
        action: &str,
        target: &str,
        outcome: &str,
    ) -> Result<(), Status> {
        let a = self.audit.clone();
        let c = &who.caller;
        let (user, role, source) = (c.username.clone(), c.role.as_str(), who.source.clone());
        let (action, target, outcome) =
            (action.to_string(), target.to_string(), outcome.to_string());
        tokio::task::spawn_blocking(move || {
            a.append(&user, role, &action, &target, &outcome, &source, 1)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(audit_unavailable)
    }

    /// Logs a denial and returns the status to send.
    async fn deny(&self, who: &Who, action: &str, target: &str, why: &str) -> Status {
        if let Err(s) = self
            .audit(who, action, target, &format!("denied: {why}"))
            .await
        {
            return s;
        }
        Status::permission_denied(why.to_string())
    }

    /// Clinics whose cases the caller may see (None: all).
    fn clinic_scope(&self, who: &Who) -> Option<std::collections::HashSet<String>> {
        let who = &who.caller;
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
        let source = source(&req);
        let r = req.into_inner();
        let name: String = r.username.chars().take(64).collect();
        // Throttled before argon2: a guesser costs the hub no hashing once locked out.
        if let Err(t) = self.limiter.begin(&name, &source, Instant::now()) {
            Metrics::inc(&self.ingest.metrics.logins_throttled, 1);
            self.deny_call(&source, &name, "login", t.reason()).await;
            return Err(Status::resource_exhausted(format!(
                "{}: try again in {} s",
                t.reason(),
                t.retry_after().as_secs().max(1)
            )));
        }
        let auth = self.auth.clone();
        let res = tokio::task::spawn_blocking(move || auth.login(&r.username, &r.password)).await;
        let attempt = match &res {
            Ok(Ok(_)) => Attempt::Succeeded,
            Ok(Err(AuthError::BadCredentials)) => Attempt::Failed,
            _ => Attempt::Aborted,
        };
        self.limiter.finish(&name, &source, attempt, Instant::now());
        match res.map_err(|e| Status::internal(e.to_string()))? {
            Ok((token, exp, caller)) => {
                let who = Who { caller, source };
                self.audit(&who, "login", "", "allowed").await?;
                let who = who.caller;
                Ok(Response::new(LoginResponse {
                    token,
                    expires_at_ms: exp,
                    role: who.role.as_str().into(),
                    region: who.region,
                }))
            }
            Err(e) => {
                // A wrong password is a refused call like any other: folded per source,
                // so spraying names cannot make a line each.
                self.deny_call(&source, &name, "login", &e.to_string())
                    .await;
                Err(Status::unauthenticated(e.to_string()))
            }
        }
    }

    async fn list_cases(
        &self,
        req: Request<ListCasesRequest>,
    ) -> Result<Response<ListCasesResponse>, Status> {
        let who = self.caller(&req, "list_cases").await?;
        if who.caller.role == Role::Ministry {
            return Err(self
                .deny(
                    &who,
                    "list_cases",
                    "",
                    "ministry viewers see aggregates only",
                )
                .await);
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
        if who.caller.role == Role::Specialist {
            // The worklist: flagged cases only.
            filter.flagged = Some(true);
        }
        let scope = self.clinic_scope(&who);
        let store = self.ingest.store.clone();
        let cases = blocking(move || {
            let mut f = filter;
            let limit = f.limit;
            f.limit = 0;
            let mut all = listed(store.list(&f))?;
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
        )
        .await?;
        Ok(Response::new(ListCasesResponse {
            cases: cases.into_iter().map(to_case).collect(),
        }))
    }

    async fn get_case(&self, req: Request<GetCaseRequest>) -> Result<Response<Case>, Status> {
        let who = self.caller(&req, "get_case").await?;
        let id = ResultId::from_slice(&req.into_inner().result_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let target = id.to_string();
        if who.caller.role == Role::Ministry {
            return Err(self
                .deny(
                    &who,
                    "get_case",
                    &target,
                    "ministry viewers see aggregates only",
                )
                .await);
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
            return Err(self
                .deny(&who, "get_case", &target, "no such case in your scope")
                .await);
        }
        self.audit(&who, "get_case", &target, "allowed").await?;
        Ok(Response::new(to_case(case.expect("in scope"))))
    }

    async fn aggregates(
        &self,
        req: Request<AggregatesRequest>,
    ) -> Result<Response<AggregatesResponse>, Status> {
        let who = self.caller(&req, "aggregates").await?;
        let r = req.into_inner();
        let regions = self
            .registry
            .as_ref()
            .map(|r| r.regions())
            .unwrap_or_default();
        let only = (who.caller.role == Role::Specialist).then(|| who.caller.region.clone());
        let store = self.ingest.store.clone();
        let rows: Vec<Aggregate> = blocking(move || {
            let f = CaseFilter {
                from_day: (r.from_day > 0).then_some(r.from_day),
                to_day: (r.to_day > 0).then_some(r.to_day),
                ..Default::default()
            };
            let mut acc: std::collections::BTreeMap<(String, u32), Aggregate> = Default::default();
            // A retracted result was a mistake: it counts nowhere.
            for c in listed(store.list(&f))?
                .into_iter()
                .filter(|c| c.retraction.is_none())
            {
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
        self.audit(
            &who,
            "aggregates",
            &format!("{} rows", rows.len()),
            "allowed",
        )
        .await?;
        Ok(Response::new(AggregatesResponse { rows }))
    }

    async fn sync_status(
        &self,
        req: Request<SyncStatusRequest>,
    ) -> Result<Response<SyncStatusResponse>, Status> {
        let who = self.caller(&req, "sync_status").await?;
        if who.caller.role != Role::Operator {
            return Err(self
                .deny(&who, "sync_status", "", "sync status is for operators")
                .await);
        }
        let store = self.ingest.store.clone();
        let mut devices = blocking(move || store.devices().map_err(store_status)).await?;
        let missing = self.ingest.integrity.missing();
        // A device whose stats were lost with the store still shows, with its loss.
        for (clinic, device) in missing.keys() {
            if !devices
                .iter()
                .any(|d| d.clinic == *clinic && d.device == *device)
            {
                devices.push(crate::store::DeviceStats {
                    clinic: clinic.clone(),
                    device: device.clone(),
                    ..Default::default()
                });
            }
        }
        self.audit(
            &who,
            "sync_status",
            &format!("{} devices", devices.len()),
            "allowed",
        )
        .await?;
        let report = &self.ingest.integrity.report;
        Ok(Response::new(SyncStatusResponse {
            devices: devices
                .into_iter()
                .map(|d| DeviceStatus {
                    missing: missing
                        .get(&(d.clinic.clone(), d.device.clone()))
                        .map_or(0, |s| s.len() as u64),
                    clinic_id: d.clinic,
                    device_id: d.device,
                    results: d.results,
                    duplicates: d.duplicates,
                    last_received_ms: d.last_received_ms,
                })
                .collect(),
            missing: self.ingest.integrity.missing_total(),
            journal_damaged_lines: report.journal_damaged,
            corrupt_cases: report.corrupt_cases,
            store_set_aside: report
                .set_aside
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        }))
    }
}
