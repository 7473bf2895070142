use std::collections::BTreeSet;

use serde_json::Value;

use super::*;
use crate::ministry::export::sample;

/// The example of the module docs and the report: everything mapped but Clinic D and
/// one disaggregation.
pub(crate) const EXAMPLE: &str = r#"
url = "https://dhis2.example.org"
token_file = "/etc/pleura/dhis2.token"
data_set = "dsLusWeek01"
timeout_s = 30

[org_units]
'Clinic "A"' = "ouClinicA01"
"Clinic B" = "ouClinicB01"
"Coast, Clinic C" = "ouClinicC01"

[data_elements]
examinations = "deScans0001"
flagged = "deFlagged01"

[disaggregation]
data_element = "deScansDis1"

[disaggregation.category_option_combos]
"0/50-64/female" = "cocS0F50641"
"1/50-64/female" = "cocS1F50641"
"2/50-64/female" = "cocS2F50641"
"3/50-64/female" = "cocS3F50641"
"0/unknown/unknown" = "cocS0Unkn01"
"1/unknown/unknown" = "cocS1Unkn01"
"2/unknown/unknown" = "cocS2Unkn01"
"#;

pub(crate) fn config() -> Dhis2Config {
    let cfg: Dhis2Config = toml::from_str(EXAMPLE).unwrap();
    cfg.validate().unwrap();
    cfg
}

/// A published cell as the set carries it.
fn published(c: crate::ministry::suppress::Cell) -> String {
    match c {
        crate::ministry::suppress::Cell::Shown(n) => n.to_string(),
        crate::ministry::suppress::Cell::Suppressed => String::new(),
    }
}

fn values(set: &Value) -> &Vec<Value> {
    set["dataValues"].as_array().unwrap()
}

fn find<'a>(set: &'a Value, de: &str, pe: &str, ou: &str) -> Vec<&'a Value> {
    values(set)
        .iter()
        .filter(|v| v["dataElement"] == de && v["period"] == pe && v["orgUnit"] == ou)
        .collect()
}

#[test]
fn clinic_weeks_become_values_with_the_default_combo() {
    let r = sample::report();
    let out = data_value_set(&r, &config()).unwrap();
    assert_eq!(out.set["dataSet"], "dsLusWeek01");
    // Clinic A's scans: 20 in week 48, 11 in week 49.
    let a48 = find(&out.set, "deScans0001", "2026W48", "ouClinicA01");
    assert_eq!(a48.len(), 1);
    assert_eq!(a48[0]["value"], "20");
    assert!(a48[0].get("categoryOptionCombo").is_none());
    assert!(a48[0].get("deleted").is_none());
    assert_eq!(
        find(&out.set, "deScans0001", "2026W49", "ouClinicA01")[0]["value"],
        "11"
    );
    // A zero is a value, not a gap.
    assert_eq!(
        find(&out.set, "deFlagged01", "2026W49", "ouClinicB01")[0]["value"],
        "0"
    );
    // Every value has the four keys DHIS2 needs.
    for v in values(&out.set) {
        for k in ["dataElement", "period", "orgUnit", "value"] {
            assert!(v[k].is_string(), "{k} in {v}");
        }
    }
}

#[test]
fn suppressed_cells_are_cleared_never_sent() {
    let r = sample::report();
    let out = data_value_set(&r, &config()).unwrap();
    // Clinic B's scans in week 48 are a 3; the Coast clinic's too.
    for (ou, pe) in [("ouClinicB01", "2026W48"), ("ouClinicC01", "2026W48")] {
        let v = find(&out.set, "deScans0001", pe, ou);
        assert_eq!(v.len(), 1, "{ou}");
        assert_eq!(v[0]["value"], "", "{ou}");
        assert_eq!(v[0]["deleted"], true, "{ou}");
    }
    let leak = sample::LEAK.to_string();
    let text = serde_json::to_string(&out.set).unwrap();
    for v in values(&out.set) {
        assert_ne!(v["value"], leak.as_str(), "{v}");
    }
    assert!(!text.contains(&format!("\"value\":\"{leak}\"")));
    assert!(out.cleared >= 3, "{}", out.cleared);
    assert_eq!(out.values + out.cleared, values(&out.set).len());
}

#[test]
fn disaggregations_use_their_combos_and_missing_ones_are_reported() {
    let r = sample::report();
    let out = data_value_set(&r, &config()).unwrap();
    let dis = find(&out.set, "deScansDis1", "2026W48", "ouClinicA01");
    let by_coc = |coc: &str| {
        dis.iter()
            .find(|v| v["categoryOptionCombo"] == coc)
            .copied()
    };
    assert_eq!(by_coc("cocS1F50641").unwrap()["value"], ""); // the 3
    assert_eq!(by_coc("cocS1F50641").unwrap()["deleted"], true);
    assert_eq!(dis.len(), 7);
    // Each value is its published cell.
    let t = &r.disaggregated[0].table;
    let cfg = config();
    let cocs = &cfg.disaggregation.as_ref().unwrap().category_option_combos;
    for (ri, sev) in t.rows.iter().enumerate() {
        for (ci, col) in t.cols.iter().enumerate() {
            let Some(coc) = cocs.get(&format!("{sev}/{col}")) else {
                continue;
            };
            assert_eq!(
                by_coc(coc).unwrap()["value"],
                published(t.cell(ri, ci)),
                "{sev}/{col}"
            );
        }
    }
    assert_eq!(by_coc("cocS2F50641").unwrap()["value"], "0");
    assert_eq!(out.unmapped_combos, vec!["3/unknown/unknown".to_string()]);
}

#[test]
fn unmapped_clinics_are_listed_not_dropped_silently() {
    let r = sample::report();
    let out = data_value_set(&r, &config()).unwrap();
    assert_eq!(
        out.unmapped_clinics,
        vec![Unmapped {
            region: sample::NORTH.into(),
            clinic: sample::CLINIC_D.into()
        }]
    );
    let ous: BTreeSet<&str> = values(&out.set)
        .iter()
        .filter_map(|v| v["orgUnit"].as_str())
        .collect();
    assert_eq!(
        ous,
        BTreeSet::from(["ouClinicA01", "ouClinicB01", "ouClinicC01"])
    );
}

#[test]
fn one_value_per_key_and_the_same_set_each_time() {
    let r = sample::report();
    let cfg = config();
    let out = data_value_set(&r, &cfg).unwrap();
    let keys: BTreeSet<String> = values(&out.set)
        .iter()
        .map(|v| {
            format!(
                "{}|{}|{}|{}",
                v["dataElement"], v["period"], v["orgUnit"], v["categoryOptionCombo"]
            )
        })
        .collect();
    assert_eq!(keys.len(), values(&out.set).len());
    assert_eq!(out, data_value_set(&r, &cfg).unwrap());
}

#[test]
fn regions_are_sent_only_where_no_clinic_is() {
    let r = sample::report();
    let mut cfg = config();
    cfg.region_org_units
        .insert(sample::NORTH.into(), "ouRegionN01".into());
    let err = data_value_set(&r, &cfg).unwrap_err();
    assert!(
        matches!(err, Dhis2BuildError::DoubleCount { ref region, .. } if region == sample::NORTH),
        "{err}"
    );
    // The Coast alone, with its clinic unmapped: region-level values instead.
    let mut cfg = config();
    cfg.org_units.remove(sample::CLINIC_C);
    cfg.region_org_units
        .insert(sample::COAST.into(), "ouRegionC01".into());
    let out = data_value_set(&r, &cfg).unwrap();
    let t = r
        .curve(crate::ministry::report::Measure::Examinations)
        .unwrap();
    for (wi, pe) in ["2026W48", "2026W49"].into_iter().enumerate() {
        let v = find(&out.set, "deScans0001", pe, "ouRegionC01");
        assert_eq!(v[0]["value"], published(t.cell(1, wi)), "{pe}");
    }
    assert_eq!(
        find(&out.set, "deScans0001", "2026W48", "ouRegionC01")[0]["value"],
        ""
    );
    assert!(out
        .unmapped_clinics
        .iter()
        .any(|u| u.clinic == sample::CLINIC_C));
}

fn err(extra: &str) -> String {
    let cfg: Dhis2Config = match toml::from_str(&format!("{EXAMPLE}\n{extra}")) {
        Ok(c) => c,
        Err(e) => return e.to_string(),
    };
    cfg.validate()
        .map(|_| "valid".to_string())
        .unwrap_or_else(|e| e.to_string())
}

fn edited(from: &str, to: &str) -> String {
    let text = EXAMPLE.replacen(from, to, 1);
    assert_ne!(text, EXAMPLE, "{from}");
    match toml::from_str::<Dhis2Config>(&text) {
        Ok(c) => c
            .validate()
            .map(|_| "valid".to_string())
            .unwrap_or_else(|e| e.to_string()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn config_errors_name_the_field() {
    assert!(is_uid("deScans0001"));
    for bad in [
        "deScans000",
        "0eScans0001",
        "deScans000!",
        "deScans00011",
        "",
    ] {
        assert!(!is_uid(bad), "{bad}");
    }
    let e = edited("\"ouClinicB01\"", "\"ouB\"");
    assert!(
        e.contains("ministry.dhis2.org_units.\"Clinic B\"") && e.contains("not a DHIS2 uid"),
        "{e}"
    );
    let e = edited("flagged = ", "flaged = ");
    assert!(
        e.contains("data_elements.flaged") && e.contains("no such measure"),
        "{e}"
    );
    let e = edited("\"deFlagged01\"", "\"deScans0001\"");
    assert!(
        e.contains("data_elements.flagged") && e.contains("is also data_elements.examinations"),
        "{e}"
    );
    let e = edited("\"ouClinicB01\"", "\"ouClinicA01\"");
    assert!(
        e.contains("org_units.\"Clinic B\"") && e.contains("is also"),
        "{e}"
    );
    let e = edited("\"2/unknown/unknown\"", "\"2/unknown\"");
    assert!(e.contains("category_option_combos.\"2/unknown\""), "{e}");
    let e = edited("\"cocS2Unkn01\"", "\"cocS1Unkn01\"");
    assert!(e.contains("is also the COC of"), "{e}");
    let e = edited("timeout_s = 30", "timeout_s = 0");
    assert!(e.contains("ministry.dhis2.timeout_s"), "{e}");
    let e = edited("data_set = \"dsLusWeek01\"", "data_set = \"x\"");
    assert!(e.contains("ministry.dhis2.data_set"), "{e}");
    let e = edited("https://dhis2.example.org", "ftp://dhis2.example.org");
    assert!(e.contains("ministry.dhis2.url"), "{e}");
    let e = edited("timeout_s = 30", "timeout_s = 30\nusername = \"u\"");
    assert!(
        e.contains("ministry.dhis2.token_file") && e.contains("not both"),
        "{e}"
    );
    let e = edited(
        "token_file = \"/etc/pleura/dhis2.token\"",
        "username = \"u\"",
    );
    assert!(e.contains("ministry.dhis2.password_file"), "{e}");
    let e = edited("token_file = \"/etc/pleura/dhis2.token\"", "");
    assert!(e.contains("ministry.dhis2.token_file"), "{e}");
    // Unknown fields are refused by name.
    let e = edited("timeout_s = 30", "timeout_s = 30\ntoken = \"x\"");
    assert!(e.contains("token"), "{e}");
    assert!(err("").contains("valid"));
    // No server: a file-only export needs no credentials.
    let e = edited(
        "url = \"https://dhis2.example.org\"\ntoken_file = \"/etc/pleura/dhis2.token\"",
        "",
    );
    assert_eq!(e, "valid");
}
