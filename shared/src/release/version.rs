//! Agent versions as `MAJOR.MINOR.PATCH`, compared numerically (`0.10.0` > `0.9.1`).
//! A pre-release suffix (`-rc.1`) sorts before its release, pre-releases among themselves
//! by plain string order; build metadata (`+…`) is ignored.

use std::cmp::Ordering;
use std::fmt;

use super::ReleaseError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentVersion {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
    pub pre: Option<String>,
}

impl AgentVersion {
    /// Parses `text`; `field` names where it came from in the error.
    pub fn parse(field: &'static str, text: &str) -> Result<Self, ReleaseError> {
        let bad = |reason: &str| ReleaseError::BadVersionString {
            field,
            value: text.chars().take(64).collect(),
            reason: reason.to_string(),
        };
        let core = text.split_once('+').map_or(text, |(c, _)| c);
        let (core, pre) = match core.split_once('-') {
            Some((c, "")) => return Err(bad(&format!("empty pre-release in {c}-"))),
            Some((c, p)) => (c, Some(p.to_string())),
            None => (core, None),
        };
        let parts: Vec<&str> = core.split('.').collect();
        if parts.len() != 3 {
            return Err(bad(&format!("{} numeric parts, expected 3", parts.len())));
        }
        let mut n = [0u64; 3];
        for (slot, part) in n.iter_mut().zip(&parts) {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(&format!("{part:?} is not a number")));
            }
            if part.len() > 1 && part.starts_with('0') {
                return Err(bad(&format!("{part:?} has a leading zero")));
            }
            *slot = part.parse().map_err(|e| bad(&format!("{part:?}: {e}")))?;
        }
        Ok(Self {
            major: n[0],
            minor: n[1],
            patch: n[2],
            pre,
        })
    }
}

impl Ord for AgentVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (&self.pre, &other.pre) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => Ordering::Greater,
                (Some(_), None) => Ordering::Less,
                (Some(a), Some(b)) => a.cmp(b),
            })
    }
}

impl PartialOrd for AgentVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for AgentVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        match &self.pre {
            Some(p) => write!(f, "-{p}"),
            None => Ok(()),
        }
    }
}
