//! Opening the sled outbox: reading all of it (inside `catch_unwind`), setting a store
//! sled cannot read aside, and saying what the comparison with the journal found.

use std::path::{Path, PathBuf};

use pleura_shared::ResultId;

use crate::outbox::ledger::{Check, Holding};

pub(super) struct Trees {
    pub db: sled::Db,
    pub queue: sled::Tree,
    pub index: sled::Tree,
    pub parked: sled::Tree,
    pub corrupt: sled::Tree,
    pub acked: sled::Tree,
    pub acked_ix: sled::Tree,
    pub retract: sled::Tree,
    pub held: Holding,
    pub pending_bytes: u64,
    pub pending_count: u64,
}

/// Opens the store and reads all of it: any corruption sled reports (or panics on)
/// surfaces here, at open, not in the middle of a sync.
fn open_trees(path: &Path) -> Result<Trees, sled::Error> {
    let db = pleura_shared::sled_open::open(&sled::Config::new().path(path))?;
    let t = |n: &str| db.open_tree(n);
    let (queue, index, parked, corrupt) = (t("queue")?, t("index")?, t("parked")?, t("corrupt")?);
    let (acked, acked_ix, retract) = (t("acked")?, t("acked_ix")?, t("retract")?);
    let mut held = Holding::default();
    let (mut pending_bytes, mut pending_count) = (0, 0);
    for kv in queue.iter() {
        let (k, v) = kv?;
        pending_bytes += v.len() as u64;
        pending_count += 1;
        if let Some(id) = k.get(9..).and_then(|b| ResultId::from_slice(b).ok()) {
            held.queued.insert(id);
        }
    }
    for kv in acked.iter() {
        let (k, _) = kv?;
        if k.len() == 20 {
            let day = u32::from_be_bytes(k[..4].try_into().expect("4 bytes"));
            let id = ResultId::from_slice(&k[4..]).expect("16 bytes");
            held.acked.insert(id, day);
        }
    }
    for kv in parked.iter() {
        if let Ok(id) = ResultId::from_slice(&kv?.0) {
            held.parked.insert(id);
        }
    }
    for kv in retract.iter() {
        if let Ok(id) = ResultId::from_slice(&kv?.0) {
            held.retractions.insert(id);
        }
    }
    // The secondary indexes are rebuilt from the primaries they point into.
    for kv in index.iter() {
        let (k, _) = kv?;
        if ResultId::from_slice(&k).is_ok_and(|id| !held.queued.contains(&id)) {
            index.remove(k)?;
        }
    }
    for kv in queue.iter() {
        let (k, _) = kv?;
        if k.len() == 25 && !index.contains_key(&k[9..])? {
            index.insert(&k[9..], &k[..])?;
        }
    }
    for (id, day) in &held.acked {
        // Only what is missing: an open must not need disk space (a full disk).
        if acked_ix.get(id.as_bytes())?.as_deref() != Some(&day.to_be_bytes()[..]) {
            acked_ix.insert(id.as_bytes(), &day.to_be_bytes())?;
        }
    }
    Ok(Trees {
        db,
        queue,
        index,
        parked,
        corrupt,
        acked,
        acked_ix,
        retract,
        held,
        pending_bytes,
        pending_count,
    })
}

pub(super) enum Damaged {
    Io(std::io::Error),
    Corrupt(String),
}

pub(super) fn open_caught(path: &Path) -> Result<Trees, Damaged> {
    match std::panic::catch_unwind(|| open_trees(path)) {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(sled::Error::Io(e))) if e.kind() != std::io::ErrorKind::InvalidData => {
            Err(Damaged::Io(e))
        }
        Ok(Err(e)) => Err(Damaged::Corrupt(e.to_string())),
        Err(p) => Err(Damaged::Corrupt(format!(
            "sled panicked reading it: {}",
            p.downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("?")
        ))),
    }
}

pub(super) fn set_aside(path: &Path) -> std::io::Result<PathBuf> {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".damaged-{}", pleura_shared::now_ms()));
    let aside = PathBuf::from(name);
    std::fs::rename(path, &aside)?;
    pleura_shared::fsutil::private_dir(path)?;
    Ok(aside)
}

/// Damage found at an open is appended to `outbox-damage.log`, and the latest entry is
/// reported at every start until a person removes the file: a loss must not be said
/// once, at one start, and then forgotten.
pub(super) fn damage_record(dir: &Path, found: Option<String>) -> Option<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("outbox-damage.log");
    if let Some(d) = &found {
        let line = format!("{} {d}\n", pleura_shared::now_ms());
        let written = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()).and_then(|_| f.sync_data()));
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot record the outbox damage in outbox-damage.log");
        }
        return found;
    }
    let text = std::fs::read_to_string(&path).ok()?;
    let last = text.lines().rev().find(|l| !l.trim().is_empty())?;
    let (ms, what) = last.split_once(' ')?;
    Some(format!(
        "{what} (found at a start {} s ago; remove {} once dealt with)",
        pleura_shared::now_ms().saturating_sub(ms.parse().unwrap_or(0)) / 1000,
        path.display()
    ))
}

pub(super) fn describe(c: &Check, reset: Option<String>) -> Option<String> {
    if c.is_clean() && reset.is_none() {
        return None;
    }
    let mut parts: Vec<String> = reset.into_iter().collect();
    for (n, what) in [
        (
            c.lost_queued,
            "queued result(s) lost from the store (rebuilt from their scans in processed/)",
        ),
        (
            c.lost_acked,
            "acknowledged result(s) lost (the hub holds them)",
        ),
        (c.lost_parked, "parked result(s) lost"),
        (
            c.lost_retractions,
            "retraction(s) restored without their reason",
        ),
        (c.damaged_lines, "damaged journal line(s)"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    Some(parts.join("; "))
}
