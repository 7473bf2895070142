//! Who may see what, by role, without I/O: a specialist works the flagged cases of their
//! own region and sees its aggregates; a ministry viewer sees aggregates of every
//! region and no case; an operator sees everything, and alone the sync status.

use std::collections::HashMap;

use pleura_shared::ScanRecord;

use crate::auth::{Caller, Role};
use crate::directory::Directory;
use crate::store::ClinicScope;

/// What a person did, as the audit log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Login,
    ListCases,
    GetCase,
    Aggregates,
    SyncStatus,
    Worklist,
    GetExam,
    Claim,
    Release,
    Verdict,
    RequestClip,
    GetMedia,
    Turnaround,
    ModelComparison,
    MinistryReport,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Login => "login",
            Action::ListCases => "list_cases",
            Action::GetCase => "get_case",
            Action::Aggregates => "aggregates",
            Action::SyncStatus => "sync_status",
            Action::Worklist => "worklist",
            Action::GetExam => "get_exam",
            Action::Claim => "claim",
            Action::Release => "release",
            Action::Verdict => "verdict",
            Action::RequestClip => "request_clip",
            Action::GetMedia => "get_media",
            Action::Turnaround => "turnaround",
            Action::ModelComparison => "model_comparison",
            Action::MinistryReport => "ministry_report",
        }
    }
}

pub const AGGREGATES_ONLY: &str = "ministry viewers see aggregates only";
/// Absent and out of scope answer alike: a specialist cannot probe other regions for
/// which case ids exist.
pub const NOT_IN_SCOPE: &str = "no such case in your scope";
pub const OPERATORS_ONLY: &str = "sync status is for operators";
/// Claims, verdicts and clip requests: the clinical reading is a specialist's.
pub const SPECIALISTS_ONLY: &str = "only specialists read examinations";

/// Which clinics' data a caller reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    Everywhere,
    Region(String),
}

impl Reach {
    /// The clinics this reach covers, from a clinic → region map.
    pub fn scope_in(&self, regions: &HashMap<String, String>) -> ClinicScope {
        match self {
            Reach::Everywhere => ClinicScope::All,
            Reach::Region(region) => ClinicScope::Only(
                regions
                    .iter()
                    .filter(|(_, r)| *r == region)
                    .map(|(c, _)| c.clone())
                    .collect(),
            ),
        }
    }

    /// The clinics this reach covers; asks the directory only for a region.
    pub fn scope(&self, directory: &dyn Directory) -> ClinicScope {
        match self {
            Reach::Everywhere => ClinicScope::All,
            Reach::Region(_) => self.scope_in(&directory.regions()),
        }
    }
}

/// The cases a caller may list and open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseView {
    pub reach: Reach,
    /// Specialists work from the worklist: flagged cases only.
    pub flagged_only: bool,
}

impl CaseView {
    pub fn allows(&self, scope: &ClinicScope, r: &ScanRecord) -> bool {
        scope.allows(&r.clinic) && (!self.flagged_only || r.analysis.flagged)
    }
}

/// The cases `caller` may see, or why they may see none.
pub fn case_view(caller: &Caller) -> Result<CaseView, &'static str> {
    match caller.role {
        Role::Operator => Ok(CaseView {
            reach: Reach::Everywhere,
            flagged_only: false,
        }),
        Role::Specialist => Ok(CaseView {
            reach: Reach::Region(caller.region.clone()),
            flagged_only: true,
        }),
        Role::Ministry => Err(AGGREGATES_ONLY),
    }
}

/// Whose scans `caller`'s aggregates count (every role may ask for them).
pub fn aggregate_reach(caller: &Caller) -> Reach {
    match caller.role {
        Role::Specialist => Reach::Region(caller.region.clone()),
        Role::Ministry | Role::Operator => Reach::Everywhere,
    }
}

/// Whether `caller` may see exact per-day counts (small ones included): specialists (of
/// their region, whose cases they read anyway) and operators. A ministry viewer sees
/// only the suppressed report.
pub fn exact_counts(caller: &Caller) -> bool {
    matches!(caller.role, Role::Specialist | Role::Operator)
}

pub const READERS_ONLY: &str = "the model comparison is for specialists and operators";

/// The shadow comparison of candidate models (counts only, every clinic): for the people
/// who read and run the hub, not for aggregate-only viewers.
pub fn model_comparison(caller: &Caller) -> Result<(), &'static str> {
    match caller.role {
        Role::Operator | Role::Specialist => Ok(()),
        Role::Ministry => Err(READERS_ONLY),
    }
}

pub const MINISTRY_ONLY: &str = "the ministry dashboard is for ministry viewers and operators";

/// The ministry's report (dashboard, exports, the suppressed tables of `Aggregates`):
/// national counts with small cells suppressed, for the ministry and the hub's operators.
/// A specialist works cases, not national statistics.
pub fn ministry_report(caller: &Caller) -> Result<(), &'static str> {
    match caller.role {
        Role::Ministry | Role::Operator => Ok(()),
        Role::Specialist => Err(MINISTRY_ONLY),
    }
}

pub fn sync_status(caller: &Caller) -> Result<(), &'static str> {
    match caller.role {
        Role::Operator => Ok(()),
        Role::Specialist | Role::Ministry => Err(OPERATORS_ONLY),
    }
}

#[cfg(test)]
mod tests {
    use pleura_shared::record::sample_record;

    use super::*;
    use crate::directory::FixedDirectory;

    fn caller(role: Role, region: &str) -> Caller {
        Caller {
            username: "u".into(),
            role,
            region: region.into(),
        }
    }

    #[test]
    fn each_role_sees_what_it_should() {
        let dir = FixedDirectory::new([("n1", "north"), ("n2", "north"), ("s1", "south")]);
        let north_flagged = sample_record("n1", "d", 3, true);
        let north_normal = sample_record("n2", "d", 0, false);
        let south_flagged = sample_record("s1", "d", 3, true);

        let spec = case_view(&caller(Role::Specialist, "north")).unwrap();
        let scope = spec.reach.scope(&dir);
        assert!(spec.allows(&scope, &north_flagged));
        assert!(
            !spec.allows(&scope, &north_normal),
            "worklist: flagged only"
        );
        assert!(!spec.allows(&scope, &south_flagged), "another region");

        let op = case_view(&caller(Role::Operator, "")).unwrap();
        let all = op.reach.scope(&dir);
        assert_eq!(all, ClinicScope::All);
        assert!([&north_flagged, &north_normal, &south_flagged]
            .iter()
            .all(|r| op.allows(&all, r)));

        assert_eq!(case_view(&caller(Role::Ministry, "")), Err(AGGREGATES_ONLY));
    }

    #[test]
    fn aggregates_are_scoped_and_sync_status_is_for_operators() {
        let dir = FixedDirectory::new([("n1", "north"), ("s1", "south")]);
        let north = aggregate_reach(&caller(Role::Specialist, "north")).scope(&dir);
        assert!(north.allows("n1") && !north.allows("s1"));
        assert!(!north.allows("unenrolled"));
        for role in [Role::Ministry, Role::Operator] {
            assert_eq!(aggregate_reach(&caller(role, "")), Reach::Everywhere);
        }
        // A region no clinic is enrolled in reaches nothing.
        assert_eq!(
            Reach::Region("east".into()).scope(&dir),
            ClinicScope::Only(Default::default())
        );
        assert!(sync_status(&caller(Role::Operator, "")).is_ok());
        for role in [Role::Specialist, Role::Ministry] {
            assert_eq!(sync_status(&caller(role, "x")), Err(OPERATORS_ONLY));
        }
        for role in [Role::Specialist, Role::Operator] {
            assert!(model_comparison(&caller(role, "x")).is_ok());
        }
        assert_eq!(
            model_comparison(&caller(Role::Ministry, "")),
            Err(READERS_ONLY)
        );
    }
}
