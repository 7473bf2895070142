//! `edge-agent verdicts`: the specialists' verdicts this clinic received, as JSON (one
//! array, oldest first). Reads the agent's store, so the agent must be stopped (the
//! clinic page shows them while it runs).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use pleura_shared::ExamId;

use crate::downlink::{VerdictStore, VerdictView, VERDICT_TREE};

pub fn show(config: &Path, since_ms: Option<u64>, exam: Option<&str>) -> Result<ExitCode> {
    let cfg = crate::config::EdgeConfig::load(config)?;
    let outbox = crate::daemon::open_outbox(&cfg).context(
        "the verdicts are in the agent's store, which a running agent holds: stop it first \
         (or read them on the clinic page)",
    )?;
    let store = VerdictStore::new(outbox.tree(VERDICT_TREE)?);
    let list = match exam {
        Some(hex) => {
            let id = ExamId::from_hex(hex)
                .with_context(|| format!("{hex:?} is not an examination id (32 hex digits)"))?;
            store.for_exam(&id)?
        }
        None => store.since(since_ms.unwrap_or(0))?,
    };
    let views: Vec<VerdictView> = list.iter().map(VerdictView::from).collect();
    println!("{}", serde_json::to_string_pretty(&views)?);
    Ok(ExitCode::SUCCESS)
}
