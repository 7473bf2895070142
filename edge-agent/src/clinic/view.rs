//! What one day of the page shows, gathered from local stores only (the hub may be
//! unreachable): the scan log, the outbox (queued or acknowledged), the media outbox
//! (preview and clip uploads) and the verdicts received. The media and verdict stores
//! are read through two small traits, so the page does not depend on how they keep
//! their data.

use std::collections::BTreeMap;
use std::sync::Arc;

use pleura_inference::ModelInfo;
use pleura_proto::v1::Verdict;
use pleura_shared::exam::ExamId;
use pleura_shared::{PatientSummary, ResultId};

use crate::outbox::{Held, Outbox};
use crate::scanlog::{ScanEntry, ScanLog};

/// Where a result's media stands, as far as the page cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MediaSent {
    pub preview_at_hub: bool,
    pub clip_at_hub: bool,
}

pub trait MediaView: Send + Sync {
    fn sent(&self, id: &ResultId) -> Option<MediaSent>;
}

/// A specialist's verdict as received, with when it arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedVerdict {
    pub received_at_ms: u64,
    pub verdict: Verdict,
}

pub trait VerdictView: Send + Sync {
    fn verdicts(&self, exam: &ExamId) -> Vec<ReceivedVerdict>;
    /// Verdicts received after `received_after_ms`, whatever day their scans were.
    fn since(&self, _received_after_ms: u64) -> Vec<ReceivedVerdict> {
        Vec::new()
    }
}

/// A verdict received lately, with the local patient identifier of its examination
/// (from the scan log: on this device only) so staff find it whatever day it was scanned.
pub struct RecentVerdict {
    pub received: ReceivedVerdict,
    pub patient: Option<String>,
}

/// A result's way to the specialist, furthest step first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    Queued,
    AtHub,
    PreviewSent,
    ClipSent,
    Reviewed,
    /// The hub refused the result for good (parked in the outbox).
    Refused,
}

impl SyncState {
    pub fn label(self) -> &'static str {
        match self {
            SyncState::Queued => "queued",
            SyncState::AtHub => "at hub",
            SyncState::PreviewSent => "preview sent",
            SyncState::ClipSent => "clip sent",
            SyncState::Reviewed => "reviewed",
            SyncState::Refused => "refused by hub",
        }
    }

    /// A CSS class (and a stable value for tests): the label without spaces.
    pub fn slug(self) -> &'static str {
        match self {
            SyncState::Queued => "queued",
            SyncState::AtHub => "at-hub",
            SyncState::PreviewSent => "preview-sent",
            SyncState::ClipSent => "clip-sent",
            SyncState::Reviewed => "reviewed",
            SyncState::Refused => "refused",
        }
    }
}

/// The furthest step a result has reached. A result the outbox no longer holds at all
/// was acknowledged and later pruned: at the hub. `reviewed` is whether a verdict names
/// this very result (not merely its examination); a result still queued or refused on
/// this device says so even then.
pub fn sync_state(held: Option<Held>, media: Option<MediaSent>, reviewed: bool) -> SyncState {
    match held {
        Some(Held::Queued) | Some(Held::Lost) => return SyncState::Queued,
        Some(Held::Parked) => return SyncState::Refused,
        Some(Held::Acked) | None => {}
    }
    if reviewed {
        return SyncState::Reviewed;
    }
    match media {
        Some(m) if m.clip_at_hub => SyncState::ClipSent,
        Some(m) if m.preview_at_hub => SyncState::PreviewSent,
        _ => SyncState::AtHub,
    }
}

/// Whether one of `verdicts` names the result `id` among its zones: only such a result
/// was seen by the specialist (a rescan of the same examination that reached the hub
/// after the verdict was not).
pub fn in_a_verdict(verdicts: &[ReceivedVerdict], id: &ResultId) -> bool {
    verdicts.iter().any(|v| {
        v.verdict
            .zones
            .iter()
            .any(|z| z.result_id.as_slice() == id.as_bytes().as_slice())
    })
}

pub struct Row {
    pub entry: ScanEntry,
    pub sync: SyncState,
    /// The verdicts of the scan's examination (newest first); they need not cover it.
    pub verdicts: Vec<ReceivedVerdict>,
    /// Whether one of `verdicts` names this scan's result.
    pub in_verdict: bool,
}

/// One patient's scans of the day (None: scans with no patient).
pub struct PatientGroup {
    pub patient: Option<String>,
    pub rows: Vec<Row>,
    /// The local patient summary (lung score, COVID-19 probability; with the clinic's
    /// vitals when the model weighs them), when the page knows the model.
    pub summary: Option<PatientSummary>,
    /// The inbox has a folder named `patient` (`vitals::has_patient_folder`): the page
    /// offers the vitals form, which writes `vitals.json` there.
    pub vitals_form: bool,
}

/// What the page needs for the local patient summaries: the model's sidecar and the
/// inbox, where a patient folder may hold the clinic's `vitals.json`.
#[derive(Clone)]
pub struct PatientSource {
    pub info: Arc<ModelInfo>,
    pub inbox: std::path::PathBuf,
}

/// The page's sources.
#[derive(Clone)]
pub struct Sources {
    pub scans: ScanLog,
    pub outbox: Arc<dyn Outbox>,
    pub media: Option<Arc<dyn MediaView>>,
    pub verdicts: Option<Arc<dyn VerdictView>>,
    pub patients: Option<PatientSource>,
}

impl Sources {
    /// Verdicts received after `received_after_ms`, newest first. Blocking (sled).
    pub fn recent_verdicts(&self, received_after_ms: u64) -> Result<Vec<RecentVerdict>, String> {
        let Some(store) = &self.verdicts else {
            return Ok(Vec::new());
        };
        let mut days: BTreeMap<u32, Vec<ScanEntry>> = BTreeMap::new();
        let mut out = Vec::new();
        for received in store.since(received_after_ms) {
            let v = &received.verdict;
            let entries = match days.entry(v.scan_day) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(self.scans.day(v.scan_day).map_err(|e| e.to_string())?)
                }
            };
            let patient = entries
                .iter()
                .find(|e| e.exam().as_bytes().as_slice() == v.exam_id.as_slice())
                .and_then(|e| e.patient.clone());
            out.push(RecentVerdict { received, patient });
        }
        out.sort_by_key(|r| std::cmp::Reverse(r.received.received_at_ms));
        Ok(out)
    }

    /// The scans analysed on `day`, grouped by patient (sorted by identifier), each
    /// with its sync state and verdicts. Blocking (sled).
    pub fn day(&self, day: u32) -> Result<Vec<PatientGroup>, String> {
        let entries = self.scans.day(day).map_err(|e| e.to_string())?;
        let mut groups: BTreeMap<Option<String>, Vec<Row>> = BTreeMap::new();
        let mut verdicts: BTreeMap<ExamId, Vec<ReceivedVerdict>> = BTreeMap::new();
        for entry in entries {
            let exam = entry.exam();
            let v = verdicts
                .entry(exam)
                .or_insert_with(|| {
                    let mut v = self
                        .verdicts
                        .as_ref()
                        .map(|s| s.verdicts(&exam))
                        .unwrap_or_default();
                    v.sort_by_key(|r| std::cmp::Reverse(r.received_at_ms));
                    v
                })
                .clone();
            let held = self.outbox.held(&entry.result_id).ok().flatten();
            let media = self.media.as_ref().and_then(|m| m.sent(&entry.result_id));
            let in_verdict = in_a_verdict(&v, &entry.result_id);
            let sync = sync_state(held, media, in_verdict);
            groups.entry(entry.patient.clone()).or_default().push(Row {
                entry,
                sync,
                verdicts: v,
                in_verdict,
            });
        }
        Ok(groups
            .into_iter()
            .map(|(patient, rows)| {
                // The local id is the scan's inbox folder name (`scanlog::local_patient`;
                // intake moves the scans to processed/ but leaves the folder), except for a
                // DICOM file with a PatientID, whose id is that PatientID. The summary reads
                // `inbox/<local id>/vitals.json` and the form writes exactly there, so the
                // two always agree; a DICOM patient whose PatientID names no inbox folder
                // gets no form (and no vitals: the scan log does not keep the folder).
                let vitals_form = match (&self.patients, patient.as_deref()) {
                    (Some(p), Some(id)) => {
                        crate::vitals::has_patient_folder(&p.inbox, id).unwrap_or(false)
                    }
                    _ => false,
                };
                let summary = self.patients.as_ref().map(|p| {
                    let videos: Vec<(String, pleura_shared::ScanAnalysis)> = rows
                        .iter()
                        .map(|r| {
                            let zone = r.entry.zone.clone().unwrap_or_default();
                            (zone, r.entry.analysis.clone())
                        })
                        .collect();
                    crate::vitals::patient_summary(&videos, &p.info, &p.inbox, patient.as_deref())
                });
                PatientGroup {
                    patient,
                    rows,
                    summary,
                    vitals_form,
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_furthest_step_is_shown() {
        let m = |p, c| {
            Some(MediaSent {
                preview_at_hub: p,
                clip_at_hub: c,
            })
        };
        assert_eq!(
            sync_state(Some(Held::Queued), None, false),
            SyncState::Queued
        );
        assert_eq!(sync_state(Some(Held::Lost), None, false), SyncState::Queued);
        assert_eq!(sync_state(Some(Held::Acked), None, false), SyncState::AtHub);
        assert_eq!(sync_state(None, None, false), SyncState::AtHub);
        assert_eq!(
            sync_state(Some(Held::Acked), m(true, false), false),
            SyncState::PreviewSent
        );
        assert_eq!(
            sync_state(Some(Held::Acked), m(true, true), false),
            SyncState::ClipSent
        );
        assert_eq!(
            sync_state(Some(Held::Acked), m(true, true), true),
            SyncState::Reviewed
        );
        assert_eq!(
            sync_state(Some(Held::Parked), None, false),
            SyncState::Refused
        );
        assert_eq!(sync_state(None, None, true), SyncState::Reviewed);
    }

    #[test]
    fn a_result_still_queued_or_refused_here_is_not_shown_reviewed() {
        // A verdict that names the result does not hide that this device still holds
        // it (an acknowledgement lost, or the hub refused it later).
        assert_eq!(
            sync_state(Some(Held::Queued), None, true),
            SyncState::Queued
        );
        assert_eq!(sync_state(Some(Held::Lost), None, true), SyncState::Queued);
        assert_eq!(
            sync_state(Some(Held::Parked), None, true),
            SyncState::Refused
        );
    }

    mod day {
        use super::super::*;
        use crate::outbox::{Outbox, SledOutbox};
        use pleura_proto::v1::ZoneScore;

        struct Fixed(Vec<ReceivedVerdict>);
        impl VerdictView for Fixed {
            fn verdicts(&self, _: &ExamId) -> Vec<ReceivedVerdict> {
                self.0.clone()
            }
        }

        fn verdict_naming(ids: &[ResultId]) -> ReceivedVerdict {
            ReceivedVerdict {
                received_at_ms: 1,
                verdict: Verdict {
                    zones: ids
                        .iter()
                        .map(|id| ZoneScore {
                            zone: "R1".into(),
                            result_id: id.as_bytes().to_vec(),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                },
            }
        }

        #[test]
        fn only_the_results_a_verdict_names_are_reviewed() {
            let dir = tempfile::tempdir().unwrap();
            let store = SledOutbox::open(dir.path(), 1 << 24).unwrap();
            let scans = ScanLog::open(&store).unwrap();
            let day = 20_000u32;
            let rec = |n: u64| {
                let mut r = pleura_shared::record::sample_record("clinic-a", "pi-1", 1, false);
                r.analysed_at_ms = u64::from(day) * 86_400_000 + n * 60_000;
                r.patient_key = Some([5; 16]);
                r
            };
            // The examination's first scan, reviewed and acknowledged; a rescan of the
            // same patient that day, after the verdict, still queued here; another
            // acknowledged after the verdict.
            let (first, rescan, late) = (rec(1), rec(2), rec(3));
            for r in [&first, &rescan, &late] {
                store.put(r).unwrap();
                scans.put(&ScanEntry::of(r, Some("MRN-1".into()))).unwrap();
            }
            store.remove(&[first.id, late.id]).unwrap();
            let e = ScanEntry::of(&first, None);
            assert_eq!(e.exam(), ScanEntry::of(&rescan, None).exam(), "one exam");
            let sources = Sources {
                scans,
                outbox: Arc::new(store),
                media: None,
                verdicts: Some(Arc::new(Fixed(vec![verdict_naming(&[first.id])]))),
                patients: None,
            };
            let groups = sources.day(day).unwrap();
            assert_eq!(groups.len(), 1);
            let state = |id: &ResultId| {
                let r = groups[0].rows.iter().find(|r| r.entry.result_id == *id);
                let r = r.unwrap();
                (r.sync, r.in_verdict, r.verdicts.len())
            };
            assert_eq!(state(&first.id), (SyncState::Reviewed, true, 1));
            assert_eq!(state(&rescan.id), (SyncState::Queued, false, 1));
            assert_eq!(state(&late.id), (SyncState::AtHub, false, 1));
        }
    }
}
