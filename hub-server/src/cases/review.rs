//! The specialist's review loop: the worklist of examinations in priority order, one
//! examination with its results and media, claims, clip requests and media access.
//! Visibility is the case policy applied to examinations: a specialist sees the flagged
//! examinations of their region, an operator every one, a ministry viewer none; an
//! examination that is absent and one out of scope answer alike. Every access is audited.

use std::collections::BTreeMap;
use std::sync::Arc;

use pleura_proto::v1::{downlink, ClipRequest, MediaKind, MediaPreview};
use pleura_shared::{now_ms, ExamId, ResultId};
use prost::Message;

use crate::auth::Role;
use crate::downlink::Downlink;
use crate::error::HubError;
use crate::media::{MediaItem, MediaStore, Sha256};
use crate::store::exams::{
    Claim, ClaimOutcome, Exam, Reads, WorklistQuery, WorklistRow, CLAIM_TTL_MS,
};
use crate::store::{ClinicScope, StoredCase};

use super::policy::{self, Action, CaseView};
use super::{blocking, CaseService, Who};

/// What the review loop needs beyond the case store: the media the devices uploaded and
/// the channel to send verdicts and clip requests down.
#[derive(Clone)]
pub struct ReviewParts {
    pub media: Arc<dyn MediaStore>,
    pub downlink: Arc<Downlink>,
}

/// The most examinations one worklist page shows.
pub const MAX_PAGE: usize = 200;

#[derive(Debug, Clone, Default)]
pub struct ExamQuery {
    /// Operators only: unflagged examinations too (specialists always see flagged ones).
    pub include_unflagged: bool,
    /// Some(false): awaiting a read (never read, or scans arrived after the verdict:
    /// the worklist); Some(true): read; None: both.
    pub read: Option<bool>,
    pub offset: usize,
    /// 0: 50; at most `MAX_PAGE`.
    pub limit: usize,
}

#[derive(Debug, Clone)]
pub struct WorklistPage {
    pub rows: Vec<WorklistRow>,
    pub more: bool,
    pub now_ms: u64,
}

/// A result's media as the case page shows them.
#[derive(Debug, Clone, Default)]
pub struct ResultMedia {
    pub preview: Option<(Sha256, MediaPreview)>,
    /// A complete clip.
    pub clip: Option<MediaItem>,
    /// An item held only in part (an upload under way).
    pub uploading: bool,
}

#[derive(Debug, Clone)]
pub struct ExamDetail {
    pub exam: Exam,
    /// Its results (withdrawn and superseded ones too, marked; never shadow results),
    /// zone order.
    pub results: Vec<StoredCase>,
    pub media: BTreeMap<ResultId, ResultMedia>,
    pub claim: Option<Claim>,
    pub reads: Option<Reads>,
    /// The same pseudonym's other examinations at the same clinic the caller may see.
    pub earlier: Vec<Exam>,
    /// Sum over zones of the worst severity in each (live results).
    pub lung_score: u32,
    pub now_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimResult {
    Claimed(Claim),
    HeldBy(Claim),
}

/// One media item's bytes (or the asked range of them).
#[derive(Debug, Clone)]
pub struct MediaBytes {
    pub item: MediaItem,
    pub bytes: Vec<u8>,
}

pub(super) fn exam_visible(view: &CaseView, scope: &ClinicScope, e: &Exam) -> bool {
    scope.allows(&e.clinic) && (!view.flagged_only || e.flagged)
}

/// Label of a result's zone in the verdict form: its zone, or its id for a scan with none.
pub fn zone_label(zone: Option<&str>, id: &ResultId) -> String {
    zone.map_or_else(|| id.to_string(), str::to_string)
}

pub fn lung_score(e: &Exam) -> u32 {
    let mut worst: BTreeMap<String, u8> = BTreeMap::new();
    for r in e.live() {
        let w = worst
            .entry(zone_label(r.zone.as_deref(), &r.id))
            .or_default();
        *w = (*w).max(r.severity);
    }
    worst.values().map(|v| u32::from(*v)).sum()
}

fn media_err(e: crate::media::MediaError) -> HubError {
    tracing::error!(error = %e, "media store");
    HubError::Unavailable("media store unavailable".into())
}

impl CaseService {
    pub(super) fn parts(&self) -> Result<ReviewParts, HubError> {
        self.review
            .clone()
            .ok_or_else(|| HubError::Unavailable("the review loop is not configured".into()))
    }

    /// The examination `id` if `who` may see it (None otherwise, audited as refused).
    pub(super) async fn visible(
        &self,
        who: &Who,
        action: Action,
        id: ExamId,
    ) -> Result<Exam, HubError> {
        let target = id.to_hex();
        let view = match policy::case_view(&who.caller) {
            Ok(v) => v,
            Err(why) => return Err(self.deny(who, action, &target, why).await),
        };
        let (store, directory) = (self.store.clone(), self.directory.clone());
        let exam = blocking(move || {
            let scope = view.reach.scope(&*directory);
            Ok(store.exam(&id)?.filter(|e| exam_visible(&view, &scope, e)))
        })
        .await?;
        match exam {
            Some(e) => Ok(e),
            None => Err(self.deny(who, action, &target, policy::NOT_IN_SCOPE).await),
        }
    }

    /// Examinations `who` may review, most urgent first (tier, deadline, uncertainty).
    pub async fn worklist(&self, who: &Who, q: ExamQuery) -> Result<WorklistPage, HubError> {
        let action = Action::Worklist;
        let view = match policy::case_view(&who.caller) {
            Ok(v) => v,
            Err(why) => return Err(self.deny(who, action, "", why).await),
        };
        let (store, directory) = (self.store.clone(), self.directory.clone());
        let now = now_ms();
        let list = blocking(move || {
            let query = WorklistQuery {
                scope: view.reach.scope(&*directory),
                flagged: (view.flagged_only || !q.include_unflagged).then_some(true),
                read: q.read,
                offset: q.offset,
                limit: q.limit.clamp(1, MAX_PAGE),
            };
            Ok(store.worklist(&query, now)?)
        })
        .await?;
        let target = format!("worklist: {} examinations", list.rows.len());
        self.record(who, action, &target, "allowed").await?;
        Ok(WorklistPage {
            rows: list.rows,
            more: list.more,
            now_ms: now,
        })
    }

    /// One examination with its results, media, claim, reads and the patient's other
    /// examinations; audited as a view of the examination.
    pub async fn exam(&self, who: &Who, id: ExamId) -> Result<ExamDetail, HubError> {
        let action = Action::GetExam;
        let exam = self.visible(who, action, id).await?;
        let view = policy::case_view(&who.caller).map_err(|w| HubError::Denied(w.into()))?;
        let (store, directory) = (self.store.clone(), self.directory.clone());
        let media = self.review.as_ref().map(|p| p.media.clone());
        let now = now_ms();
        let detail = blocking(move || {
            let scope = view.reach.scope(&*directory);
            let mut results = Vec::new();
            let mut by_result = BTreeMap::new();
            // A candidate's shadow reading is never shown as the model's.
            for r in exam.results.iter().filter(|r| !r.shadow) {
                if let Some(c) = store.get(&r.id)? {
                    results.push(c);
                }
                // A withdrawn result's media are not shown (nor served: see `media`).
                if let Some(m) = media.as_ref().filter(|_| r.is_live()) {
                    by_result.insert(r.id, result_media(&**m, &r.id)?);
                }
            }
            results.sort_by(|a, b| a.record.zone.cmp(&b.record.zone));
            let earlier = match &exam.patient_key {
                Some(p) => store
                    .patient_exams(&exam.clinic, p)?
                    .into_iter()
                    .filter(|e| e.id != exam.id && exam_visible(&view, &scope, e))
                    .collect(),
                None => Vec::new(),
            };
            Ok(ExamDetail {
                claim: store.claim_of(&id, now)?,
                reads: store.reads(&id)?,
                lung_score: lung_score(&exam),
                exam,
                results,
                media: by_result,
                earlier,
                now_ms: now,
            })
        })
        .await?;
        self.record(who, action, &id.to_hex(), "allowed").await?;
        Ok(detail)
    }

    /// Claims (or renews) an examination for `who`; a live claim of another specialist
    /// stands. Only specialists read examinations.
    pub async fn claim(&self, who: &Who, id: ExamId) -> Result<ClaimResult, HubError> {
        let action = Action::Claim;
        let exam = self.readable(who, action, id).await?;
        let store = self.store.clone();
        let user = who.caller.username.clone();
        let now = now_ms();
        let out = blocking(move || Ok(store.claim(&id, &user, now, CLAIM_TTL_MS)?)).await?;
        let res = match out {
            ClaimOutcome::Claimed(c) => {
                if exam.claimed_at_ms.is_none() {
                    self.metrics
                        .review
                        .claim
                        .observe(now.saturating_sub(exam.first_received_ms));
                }
                ClaimResult::Claimed(c)
            }
            ClaimOutcome::HeldBy(c) => ClaimResult::HeldBy(c),
            ClaimOutcome::NoSuchExam => {
                return Err(self
                    .deny(who, action, &id.to_hex(), policy::NOT_IN_SCOPE)
                    .await)
            }
        };
        let outcome = match &res {
            ClaimResult::Claimed(_) => "allowed".to_string(),
            ClaimResult::HeldBy(c) => format!("refused: claimed by {}", c.user),
        };
        self.record(who, action, &id.to_hex(), &outcome).await?;
        Ok(res)
    }

    pub async fn release(&self, who: &Who, id: ExamId) -> Result<bool, HubError> {
        let action = Action::Release;
        self.readable(who, action, id).await?;
        let store = self.store.clone();
        let user = who.caller.username.clone();
        let released = blocking(move || Ok(store.release(&id, &user)?)).await?;
        self.record(who, action, &id.to_hex(), "allowed").await?;
        Ok(released)
    }

    /// The examination, if `who` may read it (a specialist who can see it).
    pub(super) async fn readable(
        &self,
        who: &Who,
        action: Action,
        id: ExamId,
    ) -> Result<Exam, HubError> {
        let exam = self.visible(who, action, id).await?;
        if who.caller.role != Role::Specialist {
            return Err(self
                .deny(who, action, &id.to_hex(), policy::SPECIALISTS_ONLY)
                .await);
        }
        Ok(exam)
    }

    /// Asks the device that sent `result` (a live result of the examination) for its clip.
    pub async fn request_clip(
        &self,
        who: &Who,
        id: ExamId,
        result: ResultId,
    ) -> Result<(), HubError> {
        let action = Action::RequestClip;
        let exam = self.readable(who, action, id).await?;
        let target = format!("{} result {result}", id.to_hex());
        let Some(r) = exam.live().find(|r| r.id == result).cloned() else {
            return Err(self.deny(who, action, &target, policy::NOT_IN_SCOPE).await);
        };
        let parts = self.parts()?;
        let clinic = exam.clinic.clone();
        blocking(move || {
            let kind = downlink::Kind::ClipRequest(ClipRequest {
                result_id: result.as_bytes().to_vec(),
                reason: "requested by a specialist".into(),
            });
            parts.downlink.send(&clinic, &r.device, kind).map(|_| ())
        })
        .await?;
        self.record(who, action, &target, "allowed").await
    }

    /// One media item of the examination (an item of one of its results), whole or the
    /// range asked; anything else answers as absent. Audited.
    pub async fn media(
        &self,
        who: &Who,
        id: ExamId,
        sha: Sha256,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<MediaBytes, HubError> {
        let action = Action::GetMedia;
        let exam = self.visible(who, action, id).await?;
        let target = format!("{} media {}", id.to_hex(), hex::encode(sha));
        let parts = self.parts()?;
        // Only the live results' media: a withdrawn scan's are not served.
        let results: Vec<ResultId> = exam.live().map(|r| r.id).collect();
        let found = blocking(move || {
            // An item one device sent for two results (the same scan under two patients)
            // is stored once and listed under both: ask per result, not by its first one.
            let mut item = None;
            for r in &results {
                let items = parts.media.items_for(r).map_err(media_err)?;
                if let Some(i) = items.into_iter().find(|i| i.sha256 == sha && i.complete) {
                    item = Some(i);
                    break;
                }
            }
            let Some(item) = item else {
                return Ok(None);
            };
            let bytes = parts.media.read(&sha, range).map_err(media_err)?;
            Ok(bytes.map(|bytes| MediaBytes { item, bytes }))
        })
        .await?;
        match found {
            Some(m) => {
                self.record(who, action, &target, "allowed").await?;
                Ok(m)
            }
            None => Err(self.deny(who, action, &target, policy::NOT_IN_SCOPE).await),
        }
    }
}

/// A result's preview (decoded) and clip, from the media store.
fn result_media(media: &dyn MediaStore, id: &ResultId) -> Result<ResultMedia, HubError> {
    let mut out = ResultMedia::default();
    for item in media.items_for(id).map_err(media_err)? {
        if !item.complete {
            out.uploading = true;
            continue;
        }
        match item.kind {
            MediaKind::Preview => {
                let Some(bytes) = media.read(&item.sha256, None).map_err(media_err)? else {
                    continue;
                };
                match MediaPreview::decode(bytes.as_slice()) {
                    Ok(p) => out.preview = Some((item.sha256, p)),
                    Err(e) => tracing::warn!(error = %e, "stored preview does not decode"),
                }
            }
            MediaKind::Clip => out.clip = Some(item),
            MediaKind::Unspecified => {}
        }
    }
    Ok(out)
}
