//! An examination: the scans of one patient pseudonym at one clinic on one day (all lung
//! zones). It is what a specialist reads and what a verdict answers; scan results stay
//! the unit of sync. The hub and the clinic derive the same id from the same facts, so a
//! verdict finds its scans at the clinic without any identifier crossing the wire twice.

use sha2::{Digest, Sha256};

use crate::ids::ResultId;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExamId(pub [u8; 16]);

impl ExamId {
    /// The examination of `patient_key` (16-byte keyed pseudonym) at `clinic` on `day`.
    /// A scan with no patient (empty key) is an examination of its own: its result id.
    pub fn of(clinic: &str, patient_key: &[u8], day: u32, result: &ResultId) -> Self {
        if patient_key.is_empty() {
            return ExamId(*result.as_bytes());
        }
        let mut h = Sha256::new();
        h.update(b"pleura.v1.exam\0");
        h.update(clinic.as_bytes());
        h.update([0]);
        h.update(patient_key);
        h.update(day.to_be_bytes());
        let d = h.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&d[..16]);
        ExamId(id)
    }

    pub fn from_slice(b: &[u8]) -> Option<Self> {
        <[u8; 16]>::try_from(b).ok().map(ExamId)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 32 {
            return None;
        }
        let mut id = [0u8; 16];
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(ExamId(id))
    }
}

impl std::fmt::Debug for ExamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ExamId({})", self.to_hex())
    }
}

impl std::fmt::Display for ExamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_patient_one_day_one_clinic_is_one_examination() {
        let (r1, r2) = (ResultId([1; 16]), ResultId([2; 16]));
        let a = ExamId::of("c1", &[7; 16], 20_000, &r1);
        assert_eq!(a, ExamId::of("c1", &[7; 16], 20_000, &r2));
        assert_ne!(a, ExamId::of("c2", &[7; 16], 20_000, &r1));
        assert_ne!(a, ExamId::of("c1", &[8; 16], 20_000, &r1));
        assert_ne!(a, ExamId::of("c1", &[7; 16], 20_001, &r1));
        // No patient: each scan stands alone.
        assert_eq!(ExamId::of("c1", &[], 20_000, &r1).0, r1.0);
        assert_ne!(
            ExamId::of("c1", &[], 20_000, &r1),
            ExamId::of("c1", &[], 20_000, &r2)
        );
        assert_eq!(ExamId::from_hex(&a.to_hex()), Some(a));
        assert_eq!(ExamId::from_hex("zz"), None);
    }
}
