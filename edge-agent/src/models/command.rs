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

#[derive(Debug, PartialEq)]
pub enum Decided {
    /// Switch to the shadow slot holding this version.
    Promote(Slot, u64),
    /// The download or shadow of this version is gone.
    Aborted(u64),
    /// Nothing held matches the command.
    Nothing,
}

/// Persists `cmd` (blocking; before the receipt). Unspecified actions are ignored.
pub fn store(store: &ModelStore, cmd: &ModelCommand) -> Result<bool, ModelsError> {
    let promote = match cmd.action() {
        ModelAction::Promote => true,
        ModelAction::Abort => false,
        ModelAction::Unspecified => return Ok(false),
    };
    let path = store.layout.command_file();
    let s = Stored {
        version: cmd.release_version,
        promote,
    };
    let bytes = serde_json::to_vec(&s).unwrap_or_default();
    write_atomic(&path, &bytes, 0o600).map_err(|e| ModelsError::io(&path, e))?;
    Ok(true)
}

/// Reads the stored command, doing what needs no model engine (abort). An abort is
/// removed once carried out; a promote stays until the switch is done (`promoted`), so
/// that one received mid-download is carried out once the release is installed, and
/// one interrupted by a crash is carried out at the next start.
pub fn take(store: &ModelStore) -> Result<Option<Decided>, ModelsError> {
    let path = store.layout.command_file();
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(None);
    };
    let Ok(cmd) = serde_json::from_slice::<Stored>(&bytes) else {
        let _ = std::fs::remove_file(&path);
        return Ok(None);
    };
    let _g = store.guard();
    let mut cur = store.layout.read_current()?;
    let rolled_back = store.layout.rolled_back();
    let shadow = cur
        .shadow
        .and_then(|s| store.layout.check_slot(s).ok())
        .filter(|m| m.version == cmd.version && !rolled_back.contains(&m.version));
    if cmd.promote {
        let active = store.layout.check_slot(cur.active).map(|m| m.version);
        return Ok(Some(match shadow {
            Some(m) => Decided::Promote(m.slot, m.version),
            None => {
                let waiting = store.pending()?.is_some_and(|p| p.version == cmd.version);
                // Already active, or neither held nor on its way: nothing will come of it.
                if !waiting || active.is_ok_and(|a| a >= cmd.version) {
                    let _ = std::fs::remove_file(&path);
                }
                Decided::Nothing
            }
        }));
    }
    let _ = std::fs::remove_file(&path);
    let mut hit = false;
    if let Some(m) = shadow {
        cur.shadow = None;
        store.layout.write_current(&cur)?;
        store.layout.clear_slot(m.slot)?;
        hit = true;
    }
    if store.pending()?.is_some_and(|p| p.version == cmd.version) {
        store.drop_pending(None)?;
        hit = true;
    }
    Ok(Some(if hit {
        Decided::Aborted(cmd.version)
    } else {
        Decided::Nothing
    }))
}

/// The promote of `version` is carried out: its command goes.
pub fn promoted(store: &ModelStore, version: u64) {
    let path = store.layout.command_file();
    let stored = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Stored>(&b).ok());
    if stored.is_some_and(|c| c.promote && c.version == version) {
        let _ = std::fs::remove_file(&path);
    }
}
