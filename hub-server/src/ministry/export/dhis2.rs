//! DHIS2 aggregate data (`dataValueSets` JSON) from a [`Report`], for a configured
//! mapping of Pleura's clinics, measures and disaggregations onto DHIS2 metadata.
//!
//! # What is sent
//!
//! One data value per (data element, weekly period `2026W48`, org unit, category option
//! combo): from each region's clinic tables (the default category option combo: the
//! value carries no `categoryOptionCombo`, and DHIS2 then uses its default) and, when
//! `disaggregation` is configured, from the per-clinic severity × age band × sex tables
//! (one COC per "severity/ageband/sex"). Regions mapped in `region_org_units` also get
//! their region-level counts. Totals are never sent: DHIS2 adds up itself.
//!
//! # Re-sending replaces; suppressed values are cleared
//!
//! DHIS2 keys a data value by (data element, period, org unit, COC, attribute option
//! combo), and `push` imports with `importStrategy=CREATE_AND_UPDATE`, so re-sending a
//! week updates the values sent before instead of adding to them. A cell that is
//! suppressed now may have been sent as a number before (an earlier export when the
//! count was ≥ 5, a late retraction since), so it is sent as an **empty value with
//! `deleted: true`**: DHIS2's import (`DefaultDataValueSetService`) soft-deletes an
//! existing value whose new value is null/empty or marked deleted (counted `deleted`),
//! and ignores it (counted `ignored`) when there is none. The suppressed number itself
//! is never in the payload. A zero is sent as `"0"`: DHIS2 stores it for a data element
//! whose zeros are significant and otherwise deletes the existing value (and skips a new
//! one), which is the right meaning either way.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{json, Value};
use thiserror::Error;

use super::fhir::week_column;
use crate::ministry::report::{Measure, NamedTable, Report};
use crate::ministry::suppress::Cell;

/// `[ministry.dhis2]` in hub.toml.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dhis2Config {
    /// The DHIS2 server's base URL (`https://dhis2.example.org` or with a context path,
    /// `https://example.org/dhis`); absent: the set is only written to a file.
    #[serde(default)]
    pub url: Option<String>,
    /// A personal access token (sent as `Authorization: ApiToken <token>`).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Basic authentication: the user, with `password_file`.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PEM CA certificate(s) to trust instead of the system's, for a private DHIS2.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The data set uid, put on the set when given (DHIS2 then checks its locking).
    #[serde(default)]
    pub data_set: Option<String>,
    /// Clinic name → org unit uid.
    #[serde(default)]
    pub org_units: BTreeMap<String, String>,
    /// Region name → org unit uid, for region-level values (only for regions none of
    /// whose clinics is mapped: DHIS2 adds children up into their parent).
    #[serde(default)]
    pub region_org_units: BTreeMap<String, String>,
    /// Measure id (`scans`, `flagged`, …) → data element uid.
    #[serde(default)]
    pub data_elements: BTreeMap<String, String>,
    #[serde(default)]
    pub disaggregation: Option<Disaggregation>,
    /// Seconds for the whole push (connect, send, answer).
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
}

/// Scans by severity × age band × sex, as one data element with a category combo.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disaggregation {
    pub data_element: String,
    /// "severity/ageband/sex" (e.g. "2/50-64/female", "0/unknown/unknown") → COC uid.
    pub category_option_combos: BTreeMap<String, String>,
}

fn default_timeout() -> u64 {
    60
}

/// Longest push timeout accepted.
pub const MAX_TIMEOUT_S: u64 = 600;

/// What is wrong with `[ministry.dhis2]`, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("ministry.dhis2.{field}: {problem}")]
pub struct Dhis2ConfigError {
    pub field: String,
    pub problem: String,
}

fn bad(field: impl Into<String>, problem: impl Into<String>) -> Dhis2ConfigError {
    Dhis2ConfigError {
        field: field.into(),
        problem: problem.into(),
    }
}

/// A DHIS2 uid: 11 characters, a letter then 10 letters or digits (DHIS2's
/// `CodeGenerator`: `^[a-zA-Z][a-zA-Z0-9]{10}$`).
pub fn is_uid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 11 && b[0].is_ascii_alphabetic() && b.iter().all(|c| c.is_ascii_alphanumeric())
}

fn uid(field: String, s: &str) -> Result<(), Dhis2ConfigError> {
    if is_uid(s) {
        Ok(())
    } else {
        let shown: String = s.chars().take(40).collect();
        Err(bad(
            field,
            format!(
                "{shown:?} is not a DHIS2 uid (11 characters: a letter, then 10 letters or digits)"
            ),
        ))
    }
}

impl Dhis2Config {
    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), Dhis2ConfigError> {
        if let Some(u) = &self.url {
            let uri: hyper::Uri = u
                .parse()
                .map_err(|e| bad("url", format!("{u:?} is not a URL: {e}")))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(bad(
                    "url",
                    format!("{u:?} must be http(s)://host[:port][/path]"),
                ));
            }
            if uri.query().is_some() {
                return Err(bad("url", "must not hold a query (`?…`)"));
            }
            if self.token_file.is_none() && self.username.is_none() {
                return Err(bad(
                    "token_file",
                    "the server needs token_file or username + password_file",
                ));
            }
        }
        match (&self.token_file, &self.username, &self.password_file) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(bad(
                    "token_file",
                    "give either token_file or username + password_file, not both",
                ))
            }
            (None, Some(_), None) => {
                return Err(bad("password_file", "username needs password_file"))
            }
            (None, None, Some(_)) => return Err(bad("username", "password_file needs username")),
            (None, Some(u), Some(_)) if u.is_empty() || u.contains(':') => {
                return Err(bad("username", "must be non-empty and hold no ':'"))
            }
            _ => {}
        }
        if !(1..=MAX_TIMEOUT_S).contains(&self.timeout_s) {
            return Err(bad("timeout_s", format!("must be 1..={MAX_TIMEOUT_S}")));
        }
        if let Some(ds) = &self.data_set {
            uid("data_set".into(), ds)?;
        }
        // One uid used for two things would make one DHIS2 value overwrite the other.
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        let mut once = |field: String, v: &str| match seen.insert(v.to_string(), field.clone()) {
            Some(other) => Err(bad(
                field,
                format!("{v} is also {other}: one DHIS2 value would overwrite the other"),
            )),
            None => Ok(()),
        };
        for (map, name) in [
            (&self.org_units, "org_units"),
            (&self.region_org_units, "region_org_units"),
        ] {
            for (k, v) in map {
                let field = format!("{name}.{k:?}");
                uid(field.clone(), v)?;
                once(field, v)?;
            }
        }
        for (k, v) in &self.data_elements {
            let field = format!("data_elements.{k}");
            if !Measure::ALL.iter().any(|m| m.id() == k) {
                let ids: Vec<&str> = Measure::ALL.iter().map(|m| m.id()).collect();
                return Err(bad(
                    field,
                    format!("no such measure (one of {})", ids.join(", ")),
                ));
            }
            uid(field.clone(), v)?;
            once(field, v)?;
        }
        if let Some(d) = &self.disaggregation {
            let field = "disaggregation.data_element".to_string();
            uid(field.clone(), &d.data_element)?;
            once(field, &d.data_element)?;
            if d.category_option_combos.is_empty() {
                return Err(bad("disaggregation.category_option_combos", "is empty"));
            }
            let mut cocs: BTreeMap<&str, &str> = BTreeMap::new();
            for (k, v) in &d.category_option_combos {
                let field = format!("disaggregation.category_option_combos.{k:?}");
                if let Some(other) = cocs.insert(v, k) {
                    return Err(bad(field, format!("{v} is also the COC of {other:?}: a suppressed count cannot be added up")));
                }
                let parts: Vec<&str> = k.split('/').collect();
                if parts.len() != 3
                    || parts.iter().any(|p| p.is_empty())
                    || !matches!(parts[0], "0" | "1" | "2" | "3")
                {
                    return Err(bad(
                        field,
                        "keys are \"severity/ageband/sex\", severity 0-3 (e.g. \"2/50-64/female\")",
                    ));
                }
                uid(field, v)?;
            }
        }
        Ok(())
    }
}

/// Why a data value set could not be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Dhis2BuildError {
    #[error(transparent)]
    Config(#[from] Dhis2ConfigError),
    #[error(
        "region {region:?} is mapped to an org unit and so is its clinic {clinic:?}: DHIS2 would count its scans twice"
    )]
    DoubleCount { region: String, clinic: String },
    #[error("two values for data element {de}, period {pe}, org unit {ou} ({first} and {second})")]
    Duplicate {
        de: String,
        pe: String,
        ou: String,
        first: String,
        second: String,
    },
}

/// A clinic whose values were not exported because it has no org unit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Unmapped {
    pub region: String,
    pub clinic: String,
}

/// The data value set and what it leaves out.
#[derive(Debug, Clone, PartialEq)]
pub struct Dhis2Export {
    /// The `dataValueSets` JSON.
    pub set: Value,
    /// Values with a number (zeros included).
    pub values: usize,
    /// Values sent empty to clear a suppressed cell.
    pub cleared: usize,
    /// Clinics with no org unit: none of their values is in `set`.
    pub unmapped_clinics: Vec<Unmapped>,
    /// Disaggregation keys ("2/50-64/female") with no COC: left out of `set`.
    pub unmapped_combos: Vec<String>,
}

/// A data value's key: (data element, period, org unit, COC; empty for the default).
type Key = (String, String, String, String);

#[derive(Default)]
struct Builder {
    /// (de, pe, ou, coc) → (value, where from).
    values: BTreeMap<Key, (Option<u64>, String)>,
    unmapped: BTreeSet<Unmapped>,
    combos: BTreeSet<String>,
}

impl Builder {
    fn add(&mut self, key: Key, cell: Cell, from: String) -> Result<(), Dhis2BuildError> {
        let v = match cell {
            Cell::Shown(n) => Some(n),
            Cell::Suppressed => None,
        };
        if let Some((_, first)) = self.values.get(&key) {
            return Err(Dhis2BuildError::Duplicate {
                de: key.0,
                pe: key.1,
                ou: key.2,
                first: first.clone(),
                second: from,
            });
        }
        self.values.insert(key, (v, from));
        Ok(())
    }

    /// Every cell of a table whose rows are org units and columns weeks.
    fn weekly(
        &mut self,
        report: &Report,
        t: &NamedTable,
        de: &str,
        ou_of: &dyn Fn(&str) -> Option<String>,
        region: &str,
    ) -> Result<(), Dhis2BuildError> {
        for (r, name) in t.rows.iter().enumerate() {
            let Some(ou) = ou_of(name) else {
                if region.is_empty() {
                    continue;
                }
                self.unmapped.insert(Unmapped {
                    region: region.to_string(),
                    clinic: name.clone(),
                });
                continue;
            };
            for (wi, week) in report.weeks.iter().enumerate() {
                let Some(c) = week_column(t, *week, wi) else {
                    continue;
                };
                let key = (de.to_string(), week.dhis2(), ou.clone(), String::new());
                self.add(key, t.cell(r, c), format!("{} row {name:?}", t.id))?;
            }
        }
        Ok(())
    }
}

/// The `dataValueSets` payload for the report under `cfg` (validated here too).
pub fn data_value_set(report: &Report, cfg: &Dhis2Config) -> Result<Dhis2Export, Dhis2BuildError> {
    cfg.validate()?;
    let mut b = Builder::default();
    for rc in &report.clinics {
        if cfg.region_org_units.contains_key(&rc.region) {
            let rows = rc.curves.iter().flat_map(|c| &c.table.rows);
            if let Some(clinic) = rows.into_iter().find(|c| cfg.org_units.contains_key(*c)) {
                return Err(Dhis2BuildError::DoubleCount {
                    region: rc.region.clone(),
                    clinic: clinic.clone(),
                });
            }
        }
        for curve in &rc.curves {
            let Some(de) = cfg.data_elements.get(curve.measure.id()) else {
                continue;
            };
            let ou_of = |clinic: &str| cfg.org_units.get(clinic).cloned();
            b.weekly(report, &curve.table, de, &ou_of, &rc.region)?;
        }
    }
    if !cfg.region_org_units.is_empty() {
        for curve in &report.curves {
            let Some(de) = cfg.data_elements.get(curve.measure.id()) else {
                continue;
            };
            let ou_of = |region: &str| cfg.region_org_units.get(region).cloned();
            b.weekly(report, &curve.table, de, &ou_of, "")?;
        }
    }
    if let Some(d) = &cfg.disaggregation {
        for dg in &report.disaggregated {
            let Some(ou) = cfg.org_units.get(&dg.clinic) else {
                b.unmapped.insert(Unmapped {
                    region: dg.region.clone(),
                    clinic: dg.clinic.clone(),
                });
                continue;
            };
            let t = &dg.table;
            for (r, sev) in t.rows.iter().enumerate() {
                for (c, age_sex) in t.cols.iter().enumerate() {
                    let combo = format!("{sev}/{age_sex}");
                    let Some(coc) = d.category_option_combos.get(&combo) else {
                        b.combos.insert(combo);
                        continue;
                    };
                    let key = (
                        d.data_element.clone(),
                        dg.week.dhis2(),
                        ou.clone(),
                        coc.clone(),
                    );
                    b.add(key, t.cell(r, c), format!("{} {combo:?}", t.id))?;
                }
            }
        }
    }
    Ok(finish(b, cfg))
}

fn finish(b: Builder, cfg: &Dhis2Config) -> Dhis2Export {
    let (mut values, mut cleared) = (0, 0);
    let data_values: Vec<Value> = b
        .values
        .into_iter()
        .map(|((de, pe, ou, coc), (v, _))| {
            let mut dv = json!({"dataElement": de, "period": pe, "orgUnit": ou});
            if !coc.is_empty() {
                dv["categoryOptionCombo"] = json!(coc);
            }
            match v {
                Some(n) => {
                    values += 1;
                    dv["value"] = json!(n.to_string());
                }
                None => {
                    cleared += 1;
                    dv["value"] = json!("");
                    dv["deleted"] = json!(true);
                }
            }
            dv
        })
        .collect();
    let mut set = json!({ "dataValues": data_values });
    if let Some(ds) = &cfg.data_set {
        set["dataSet"] = json!(ds);
    }
    let unmapped_clinics: Vec<Unmapped> = b.unmapped.into_iter().collect();
    let unmapped_combos: Vec<String> = b.combos.into_iter().collect();
    for u in &unmapped_clinics {
        tracing::warn!(region = %u.region, clinic = %u.clinic, "DHIS2 export: clinic has no org unit in ministry.dhis2.org_units; its values are left out");
    }
    if !unmapped_combos.is_empty() {
        tracing::warn!(combos = ?unmapped_combos, "DHIS2 export: disaggregations with no category option combo are left out");
    }
    Dhis2Export {
        set,
        values,
        cleared,
        unmapped_clinics,
        unmapped_combos,
    }
}

#[cfg(test)]
#[path = "dhis2_tests.rs"]
pub(crate) mod tests;
