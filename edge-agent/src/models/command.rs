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

/// Reads and removes the stored command, doing what needs no model engine (abort).
pub fn take(store: &ModelStore) -> Result<Option<Decided>, ModelsError> {
    let path = store.layout.command_file();
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(None);
    };
    let _ = std::fs::remove_file(&path);
    let Ok(cmd) = serde_json::from_slice::<Stored>(&bytes) else {
        return Ok(None);
    };
    let _g = store.guard();
    let mut cur = store.layout.read_current()?;
    let shadow = cur
        .shadow
        .and_then(|s| store.layout.check_slot(s).ok())
        .filter(|m| m.version == cmd.version);
    if cmd.promote {
        return Ok(Some(match shadow {
            Some(m) => Decided::Promote(m.slot, m.version),
            None => Decided::Nothing,
        }));
    }
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
