use proptest::prelude::*;

use super::*;

fn plan(state: PlanState, shadow: bool) -> ReleasePlan {
    ReleasePlan {
        cohort: Cohort::Clinics(vec!["c1".into()]),
        shadow,
        state,
        updated_at_ms: 1,
    }
}

#[test]
fn clinic_cohorts_name_clinics() {
    let c = Cohort::Clinics(vec!["c1".into(), "c3".into()]);
    assert!(in_cohort(&c, "c1", "pi-1", 2));
    assert!(in_cohort(&c, "c3", "pi-9", 2));
    assert!(!in_cohort(&c, "c2", "pi-1", 2));
}

#[test]
fn percent_cohorts_cover_roughly_their_share() {
    let inside = (0..1000)
        .filter(|i| in_cohort(&Cohort::Percent(30), "c1", &format!("pi-{i}"), 7))
        .count();
    assert!(
        (220..=380).contains(&inside),
        "{inside} of 1000 in a 30% cohort"
    );
    assert!(!in_cohort(&Cohort::Percent(0), "c1", "pi-1", 7));
    assert!(in_cohort(&Cohort::Percent(100), "c1", "pi-1", 7));
}

proptest! {
    #[test]
    fn percent_cohorts_are_stable_and_grow_monotonically(
        clinic in "[a-z]{1,8}", device in "[a-z0-9-]{1,12}", version in 1u64..1000,
        p in 0u8..=100, q in 0u8..=100,
    ) {
        let (lo, hi) = (p.min(q), p.max(q));
        let a = in_cohort(&Cohort::Percent(lo), &clinic, &device, version);
        prop_assert_eq!(a, in_cohort(&Cohort::Percent(lo), &clinic, &device, version));
        if a {
            prop_assert!(in_cohort(&Cohort::Percent(hi), &clinic, &device, version));
        }
        prop_assert!(percent_bucket(&clinic, &device, version) < 100);
    }
}

#[test]
fn each_action_happens_once_per_device() {
    let none = Delivered::default();
    let offered = |shadow| Delivered {
        offered: Some(shadow),
        ..Default::default()
    };
    let running = plan(PlanState::Running, true);
    assert_eq!(
        next_action(&running, true, &none),
        Some(Action::Offer { shadow: true })
    );
    assert_eq!(next_action(&running, false, &none), None, "not in cohort");
    assert_eq!(next_action(&running, true, &offered(true)), None);
    assert_eq!(
        next_action(&plan(PlanState::Paused, true), true, &none),
        None
    );

    let promoted = plan(PlanState::Promoted, true);
    assert_eq!(
        next_action(&promoted, true, &offered(true)),
        Some(Action::Promote)
    );
    assert_eq!(
        next_action(&promoted, false, &offered(true)),
        Some(Action::Promote)
    );
    let mut done = offered(true);
    done.promote = true;
    assert_eq!(next_action(&promoted, true, &done), None);
    assert_eq!(
        next_action(&promoted, true, &offered(false)),
        None,
        "not shadowing"
    );
    assert_eq!(
        next_action(&promoted, true, &none),
        Some(Action::Offer { shadow: false }),
        "a late device installs the promoted release directly"
    );

    let aborted = plan(PlanState::Aborted, true);
    assert_eq!(next_action(&aborted, true, &none), None, "never offered");
    assert_eq!(
        next_action(&aborted, true, &offered(true)),
        Some(Action::Abort)
    );
    done = offered(true);
    done.abort = true;
    assert_eq!(next_action(&aborted, true, &done), None);
}

#[test]
fn fetches_need_a_live_plan_and_the_cohort() {
    let none = Delivered::default();
    let offered = Delivered {
        offered: Some(false),
        ..Default::default()
    };
    assert!(may_fetch(None, true, &none).is_err());
    assert!(may_fetch(Some(&plan(PlanState::Running, false)), true, &none).is_ok());
    assert!(may_fetch(Some(&plan(PlanState::Paused, false)), true, &none).is_ok());
    assert!(may_fetch(Some(&plan(PlanState::Running, false)), false, &none).is_err());
    assert!(may_fetch(Some(&plan(PlanState::Running, false)), false, &offered).is_ok());
    assert!(may_fetch(Some(&plan(PlanState::Aborted, false)), true, &offered).is_err());
}

#[test]
fn plan_changes_follow_the_state_machine() {
    let mut f = RolloutFile::default();
    assert!(
        apply(&mut f, 3, Change::Pause, 1).is_err(),
        "not rolled out"
    );
    let clinics = Cohort::Clinics(vec!["c1".into()]);
    apply(
        &mut f,
        3,
        Change::Rollout {
            cohort: clinics,
            shadow: true,
        },
        1,
    )
    .unwrap();
    assert_eq!(f.releases[&3].state, PlanState::Running);
    apply(&mut f, 3, Change::Pause, 2).unwrap();
    assert!(apply(&mut f, 3, Change::Pause, 3).is_err());
    apply(&mut f, 3, Change::Resume, 3).unwrap();
    apply(
        &mut f,
        3,
        Change::Rollout {
            cohort: Cohort::Percent(50),
            shadow: true,
        },
        4,
    )
    .unwrap();
    assert_eq!(f.releases[&3].cohort, Cohort::Percent(50));
    apply(&mut f, 3, Change::Promote, 5).unwrap();
    assert_eq!(f.releases[&3].state, PlanState::Promoted);
    apply(
        &mut f,
        3,
        Change::Rollout {
            cohort: Cohort::Percent(100),
            shadow: true,
        },
        6,
    )
    .unwrap();
    assert_eq!(
        f.releases[&3].state,
        PlanState::Promoted,
        "widening keeps it promoted"
    );
    apply(&mut f, 3, Change::Abort, 7).unwrap();
    let e = apply(
        &mut f,
        3,
        Change::Rollout {
            cohort: Cohort::Percent(10),
            shadow: false,
        },
        8,
    );
    assert!(e.unwrap_err().contains("aborted"));
    assert!(apply(
        &mut f,
        4,
        Change::Rollout {
            cohort: Cohort::Percent(101),
            shadow: false
        },
        8
    )
    .is_err());
    assert!(apply(
        &mut f,
        4,
        Change::Rollout {
            cohort: Cohort::Clinics(vec![]),
            shadow: false
        },
        8
    )
    .is_err());

    let json = serde_json::to_string(&f).unwrap();
    assert!(json.contains(r#""cohort":{"percent":100}"#), "{json}");
    assert_eq!(serde_json::from_str::<RolloutFile>(&json).unwrap(), f);
}
