//! The region directory: which health region each clinic belongs to. Scoping (a
//! specialist sees their region) and aggregation (counts per region) ask it; the device
//! registry is where the answer comes from today, as every enrolment names its region.

use std::collections::{BTreeSet, HashMap};

use crate::ca::Registry;

/// The region of a clinic that no enrolment places anywhere.
pub const UNASSIGNED: &str = "unassigned";

pub trait Directory: Send + Sync {
    /// Region of every known clinic. May read files: call it off the async workers.
    fn regions(&self) -> HashMap<String, String>;

    fn clinics_in(&self, region: &str) -> BTreeSet<String> {
        self.regions()
            .into_iter()
            .filter(|(_, r)| r == region)
            .map(|(c, _)| c)
            .collect()
    }
}

/// Enrolled clinics: lists the enrolment files and reads only those changed since the
/// last call (the registry's mtime cache), so an enrolment applies without a restart.
impl Directory for Registry {
    fn regions(&self) -> HashMap<String, String> {
        self.pki()
            .device_ids()
            .into_iter()
            .filter_map(|(clinic, device)| self.lookup(&clinic, &device).ok().flatten())
            .map(|d| (d.clinic, d.region))
            .collect()
    }
}

/// A directory given up front: insecure development mode (no enrolments, so no
/// clinic has a region) and tests.
#[derive(Debug, Clone, Default)]
pub struct FixedDirectory(pub HashMap<String, String>);

impl FixedDirectory {
    pub fn new<'a>(clinic_regions: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self(
            clinic_regions
                .into_iter()
                .map(|(c, r)| (c.to_string(), r.to_string()))
                .collect(),
        )
    }
}

impl Directory for FixedDirectory {
    fn regions(&self) -> HashMap<String, String> {
        self.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::Pki;

    #[test]
    fn the_registry_places_each_enrolled_clinic_in_its_region() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::init(dir.path(), "test", &[]).unwrap();
        let reg = Registry::new(dir.path()).unwrap();
        let now = (pleura_shared::now_ms() / 1000) as i64;
        let out = dir.path().join("bundle");
        for (c, d, r) in [
            ("n1", "a", "north"),
            ("n1", "b", "north"),
            ("s1", "a", "south"),
        ] {
            pki.enroll(c, d, r, now - 60, now + 600, &out).unwrap();
        }
        assert_eq!(reg.clinics_in("north"), BTreeSet::from(["n1".to_string()]));
        assert_eq!(reg.regions().get("s1").map(String::as_str), Some("south"));
        assert!(reg.clinics_in("east").is_empty());
        // Enrolled while the hub runs: seen at the next call.
        pki.enroll("n2", "a", "north", now - 60, now + 600, &out)
            .unwrap();
        assert_eq!(reg.clinics_in("north").len(), 2);
        // Revoked and enrolled again, a clinic is still in its region, once.
        pki.revoke("n2", "a").unwrap();
        pki.enroll("n2", "a", "north", now - 60, now + 600, &out)
            .unwrap();
        assert_eq!(reg.clinics_in("north").len(), 2);
    }

    #[test]
    fn a_fixed_directory_answers_what_it_was_given() {
        let d = FixedDirectory::new([("n1", "north"), ("s1", "south")]);
        assert_eq!(d.clinics_in("south"), BTreeSet::from(["s1".to_string()]));
        assert!(FixedDirectory::default().regions().is_empty());
    }
}
