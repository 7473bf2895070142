//! `edge-agent retract`: withdrawing a result the hub already holds (a mistaken
//! export, e.g. a scan filed under the wrong patient). The running agent holds the
//! outbox's lock, so the command never opens the outbox: it spools the request durably
//! into `<data_dir>/retractions/<id>.json` (mode 0600) and the sync worker takes it
//! into the outbox at its next round (`take_spooled`), then sends it to the hub, which
//! marks the result retracted, keeps it and audits it.

use std::path::{Path, PathBuf};

use pleura_shared::ResultId;
use serde::{Deserialize, Serialize};

/// Longest reason, in characters (the hub's limit).
pub const MAX_REASON_CHARS: usize = 200;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RetractError {
    #[error(
        "{0:?} is neither a 32-hex-digit result id nor a scan in processed/ \
         (named <32 hex result id>--<original name>)"
    )]
    Target(String),
    #[error("a reason is required (--reason \"...\")")]
    NoReason,
    #[error("the reason has {0} characters (at most {MAX_REASON_CHARS})")]
    ReasonTooLong(usize),
    #[error("the reason contains a control character (tabs and line breaks included)")]
    ControlCharacter,
}

/// One spooled request, as written by the command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// The result id, 32 hex digits.
    pub result_id: String,
    pub reason: String,
    pub requested_at_ms: u64,
}

/// Where requests wait for the sync worker.
pub fn spool_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("retractions")
}

/// The result a target names: a 32-hex id, or a file in processed/ (its name carries
/// the id; the file itself is not read).
pub fn parse_target(target: &str) -> Result<ResultId, RetractError> {
    let t = target.trim();
    if t.len() == 32 {
        if let Some(id) = hex::decode(t)
            .ok()
            .and_then(|b| ResultId::from_slice(&b).ok())
        {
            return Ok(id);
        }
    }
    crate::processed::id_of(Path::new(t)).ok_or_else(|| RetractError::Target(target.into()))
}

/// A reason the hub will accept: 1-200 characters, no control characters. Returned
/// trimmed.
pub fn validate_reason(reason: &str) -> Result<String, RetractError> {
    if reason.chars().any(char::is_control) {
        return Err(RetractError::ControlCharacter);
    }
    let r = reason.trim();
    match r.chars().count() {
        0 => Err(RetractError::NoReason),
        n if n > MAX_REASON_CHARS => Err(RetractError::ReasonTooLong(n)),
        _ => Ok(r.to_string()),
    }
}

/// Writes the request durably; a second request for the same result replaces the
/// first (the last reason wins). Returns the spool file.
pub fn spool(data_dir: &Path, id: &ResultId, reason: &str) -> std::io::Result<PathBuf> {
    let dir = spool_dir(data_dir);
    pleura_shared::fsutil::private_dir(&dir)?;
    let req = Request {
        result_id: id.to_string(),
        reason: reason.into(),
        requested_at_ms: pleura_shared::now_ms(),
    };
    let path = dir.join(format!("{id}.json"));
    let json = serde_json::to_vec_pretty(&req).map_err(std::io::Error::other)?;
    pleura_shared::fsutil::write_atomic(&path, &json, 0o600)?;
    Ok(path)
}

/// A spooled request read back: its file (to remove once the outbox holds it).
#[derive(Debug, PartialEq)]
pub struct Spooled {
    pub id: ResultId,
    pub reason: String,
    pub file: PathBuf,
}

/// A spool file that is not a valid request, and why.
pub type Invalid = (PathBuf, String);

/// The spooled requests, and the files that are not valid requests (for the caller to
/// report and rename to `<name>.invalid` with `set_aside`, so each is reported once).
pub fn read_spool(data_dir: &Path) -> std::io::Result<(Vec<Spooled>, Vec<Invalid>)> {
    let dir = spool_dir(data_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((vec![], vec![])),
        Err(e) => return Err(e),
    };
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for e in entries {
        let path = e?.path();
        if path.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        match parse_request(&path) {
            Ok((id, reason)) => good.push(Spooled {
                id,
                reason,
                file: path,
            }),
            Err(why) => bad.push((path, why)),
        }
    }
    good.sort_by(|a, b| a.file.cmp(&b.file));
    Ok((good, bad))
}

fn parse_request(path: &Path) -> Result<(ResultId, String), String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let req: Request = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    let id = parse_target(&req.result_id).map_err(|e| e.to_string())?;
    let reason = validate_reason(&req.reason).map_err(|e| e.to_string())?;
    Ok((id, reason))
}

/// Renames an invalid spool file out of the way (`<name>.invalid`).
pub fn set_aside(path: &Path) -> std::io::Result<()> {
    let mut name = path.as_os_str().to_os_string();
    name.push(".invalid");
    std::fs::rename(path, name)
}

/// `edge-agent retract`: validates and spools; prints what will happen.
pub fn command(config: &Path, target: &str, reason: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    let cfg = crate::config::EdgeConfig::load(config)?;
    let id = parse_target(target)?;
    let reason = validate_reason(reason)?;
    let file = spool(&cfg.data_dir, &id, &reason)
        .with_context(|| format!("spooling the retraction into {}", cfg.data_dir.display()))?;
    Ok(format!(
        "retraction of {id} queued ({}); the hub records it at the next sync",
        file.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_hex_ids_or_processed_names() {
        let id = ResultId::random();
        assert_eq!(parse_target(&id.to_string()).unwrap(), id);
        assert_eq!(parse_target(&id.to_string().to_uppercase()).unwrap(), id);
        let p = format!("/var/lib/pleura/processed/p1/{id}--R1.mp4");
        assert_eq!(parse_target(&p).unwrap(), id);
        for bad in [
            "",
            "abc",
            "/var/lib/pleura/processed/p1/R1.mp4",
            &"g".repeat(32),
        ] {
            assert!(
                matches!(parse_target(bad), Err(RetractError::Target(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn reasons_are_checked_like_the_hub_does() {
        assert_eq!(
            validate_reason("  wrong patient ").unwrap(),
            "wrong patient"
        );
        assert_eq!(validate_reason("   "), Err(RetractError::NoReason));
        assert_eq!(validate_reason("a\nb"), Err(RetractError::ControlCharacter));
        assert_eq!(
            validate_reason("a\u{7}"),
            Err(RetractError::ControlCharacter)
        );
        assert!(validate_reason(&"é".repeat(200)).is_ok());
        assert_eq!(
            validate_reason(&"x".repeat(201)),
            Err(RetractError::ReasonTooLong(201))
        );
    }

    #[test]
    fn spooled_requests_read_back_and_bad_files_are_named() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let id = ResultId::random();
        let file = spool(tmp.path(), &id, "wrong patient folder").unwrap();
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let bad = spool_dir(tmp.path()).join("junk.json");
        std::fs::write(&bad, b"{not json").unwrap();
        std::fs::write(spool_dir(tmp.path()).join("x.json.tmp"), b"partial").unwrap();
        let (good, invalid) = read_spool(tmp.path()).unwrap();
        assert_eq!(
            good,
            vec![Spooled {
                id,
                reason: "wrong patient folder".into(),
                file
            }]
        );
        assert_eq!(invalid.len(), 1);
        assert_eq!(invalid[0].0, bad);
        set_aside(&bad).unwrap();
        assert!(read_spool(tmp.path()).unwrap().1.is_empty());
        // No spool folder yet: nothing to do.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(read_spool(empty.path()).unwrap().0, vec![]);
    }
}
