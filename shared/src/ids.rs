//! Identifiers that travel between edge and hub.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A scan result's identity: 16 random bytes minted at the edge when the scan is
/// analysed. The hub ingests on it idempotently, so any number of redeliveries of
/// one result count once.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResultId(pub [u8; 16]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("result id must be 16 bytes, got {0}")]
    ResultIdLength(usize),
    #[error("{kind} {value:?} is invalid: use 1-32 characters a-z, 0-9, '-' or '_'")]
    BadName { kind: &'static str, value: String },
}

impl ResultId {
    pub fn random() -> Self {
        Self(rand::random())
    }

    pub fn from_slice(b: &[u8]) -> Result<Self, IdError> {
        b.try_into()
            .map(Self)
            .map_err(|_| IdError::ResultIdLength(b.len()))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for ResultId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ResultId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResultId({self})")
    }
}

/// Checks a clinic or device name. They appear in MQTT topics and certificate
/// subjects, so no wildcards, separators or upper case.
pub fn validate_name(kind: &'static str, value: &str) -> Result<(), IdError> {
    let ok = (1..=32).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(IdError::BadName {
            kind,
            value: value.chars().take(64).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_a_topic_are_refused() {
        assert!(validate_name("clinic", "kisumu-01").is_ok());
        for bad in ["", "a/b", "+", "#", "Upper", "x".repeat(33).as_str(), "a b"] {
            assert!(validate_name("clinic", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn result_ids_round_trip_and_check_length() {
        let id = ResultId::random();
        assert_eq!(ResultId::from_slice(id.as_bytes()).unwrap(), id);
        assert_eq!(
            ResultId::from_slice(&[1, 2, 3]),
            Err(IdError::ResultIdLength(3))
        );
        assert_eq!(id.to_string().len(), 32);
    }
}
