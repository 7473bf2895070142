//! The operator's decisions on a release this device holds (`ModelCommand`): stored in
//! `command.json` by the downlink receiver before its receipt, carried out by the worker.

use pleura_shared::fsutil::write_atomic;
use pleura_shared::wire::{ModelAction, ModelCommand};
use serde::{Deserialize, Serialize};

use super::offer::ModelStore;
use super::slots::Slot;
use super::ModelsError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    pub version: u64,
    pub promote: bool,
}

/// `command.json`: the operator's last decision on each release (a promote waiting for
/// its release must not be lost to a later abort of another one). Agents before this
/// wrote a single decision.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum OnDisk {
    Each(Vec<Stored>),
    One(Stored),
}

#[derive(Debug, PartialEq)]
pub enum Decided {
    /// Switch to the shadow slot holding this version.
    Promote(Slot, u64),
    /// The shadow of this version, or its download (`download`), is gone.
    Aborted { version: u64, download: bool },
}

fn load(store: &ModelStore) -> Vec<Stored> {
    let Ok(bytes) = std::fs::read(store.layout.command_file()) else {
        return Vec::new();
    };
    match serde_json::from_slice(&bytes) {
        Ok(OnDisk::Each(v)) => v,
        Ok(OnDisk::One(c)) => vec![c],
        // Damaged: the hub's next pass re-sends what it still means.
        Err(_) => Vec::new(),
    }
}

fn save(store: &ModelStore, cmds: &[Stored]) -> Result<(), ModelsError> {
    let path = store.layout.command_file();
    if cmds.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ModelsError::io(&path, e)),
            _ => Ok(()),
        };
    }
    let bytes = serde_json::to_vec(&OnDisk::Each(cmds.to_vec())).unwrap_or_default();
    write_atomic(&path, &bytes, 0o600).map_err(|e| ModelsError::io(&path, e))
}

/// Persists `cmd` (blocking; before the receipt), replacing an earlier decision on the
/// same release. Unspecified actions are ignored.
pub fn store(store: &ModelStore, cmd: &ModelCommand) -> Result<bool, ModelsError> {
    let promote = match cmd.action() {
        ModelAction::Promote => true,
        ModelAction::Abort => false,
        ModelAction::Unspecified => return Ok(false),
    };
    let _g = store.guard();
    let mut cmds = load(store);
    cmds.retain(|c| c.version != cmd.release_version);
    cmds.push(Stored {
        version: cmd.release_version,
        promote,
    });
    save(store, &cmds)?;
    Ok(true)
}

/// Reads the stored commands, doing what needs no model engine (abort). An abort is
/// removed once carried out; a promote stays until the switch is done (`promoted`), so
/// that one received mid-download is carried out once the release is installed, and
/// one interrupted by a crash is carried out at the next start.
pub fn take(store: &ModelStore) -> Result<Vec<Decided>, ModelsError> {
    let _g = store.guard();
    let cmds = load(store);
    if cmds.is_empty() {
        return Ok(Vec::new());
    }
    let mut cur = store.layout.read_current()?;
    let rolled_back = store.layout.rolled_back();
    let active = store.layout.check_slot(cur.active).map(|m| m.version).ok();
    let (mut keep, mut decided) = (Vec::new(), Vec::new());
    for cmd in cmds {
        let shadow = cur
            .shadow
            .and_then(|s| store.layout.check_slot(s).ok())
            .filter(|m| m.version == cmd.version && !rolled_back.contains(&m.version));
        let pending = store.pending()?.is_some_and(|p| p.version == cmd.version);
        if cmd.promote {
            match shadow {
                Some(m) => {
                    decided.push(Decided::Promote(m.slot, m.version));
                    keep.push(cmd);
                }
                // On its way: it waits. Already active, or neither held nor on its way:
                // nothing will come of it.
                None if pending && active.is_none_or(|a| a < cmd.version) => keep.push(cmd),
                None => {}
            }
            continue;
        }
        if let Some(m) = &shadow {
            cur.shadow = None;
            store.layout.write_current(&cur)?;
            store.layout.clear_slot(m.slot)?;
        }
        if pending {
            store.drop_pending(None)?;
        }
        if shadow.is_some() || pending {
            decided.push(Decided::Aborted {
                version: cmd.version,
                download: pending,
            });
        }
    }
    save(store, &keep)?;
    Ok(decided)
}

/// The promote of `version` is carried out: its command goes.
pub fn promoted(store: &ModelStore, version: u64) -> Result<(), ModelsError> {
    let _g = store.guard();
    let mut cmds = load(store);
    cmds.retain(|c| !(c.promote && c.version == version));
    save(store, &cmds)
}
