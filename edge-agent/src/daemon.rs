//! `edge-agent run`: intake, sync and status workers under one cancellation root.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use pleura_shared::PseudonymKey;
use tokio_util::sync::CancellationToken;

use crate::config::EdgeConfig;
use crate::intake::Intake;
use crate::outbox::{Outbox, OutboxError, SledOutbox};
use crate::status::{self, Shared};
use crate::sync::SyncWorker;

/// The pseudonym key is missing but the data folder shows one existed: starting would
/// mint a new key and change every patient's pseudonym. `edge-agent run` exits with
/// the configuration-error status (64) on it.
#[derive(Debug, thiserror::Error)]
#[error(
    "the pseudonym key {key} is missing, but {evidence} shows this agent already made results with one; \
     restore the key from the clinic's backup (a new key would give every patient new pseudonyms). \
     Only on a deliberately reset installation: remove {marker} to start with a new key"
)]
pub struct MissingKey {
    pub key: String,
    pub evidence: String,
    pub marker: String,
}

/// Written next to the data when a key is created: its presence without the key
/// means the key was lost (or moved away), not that this is a first start.
pub fn key_marker(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("pseudonym-key.created")
}

/// Signs in `data_dir` that a pseudonym key was in use before.
fn key_evidence(data_dir: &Path) -> Option<String> {
    let marker = key_marker(data_dir);
    if marker.symlink_metadata().is_ok() {
        return Some(marker.display().to_string());
    }
    // Scans in processed/ were analysed with a key. (Not outbox.sled: sled makes its
    // files as soon as anything opens the outbox — `status`, `outbox-fill` — key or not.)
    let processed = data_dir.join("processed");
    std::fs::read_dir(&processed)
        .is_ok_and(|mut d| d.next().is_some())
        .then(|| processed.display().to_string())
}

/// Loads the clinic's pseudonym secret, creating it (mode 0600) on first start. A
/// missing key is only created when its folder (the data folder, by default) shows no
/// sign of an earlier one. For commands that know only the key's path (`deidentify`).
pub fn load_or_create_key(path: &Path) -> Result<PseudonymKey> {
    load_or_create_key_in(path, path.parent())
}

/// `load_or_create_key`, with the data folder whose contents show an earlier key.
pub fn load_or_create_key_in(path: &Path, data_dir: Option<&Path>) -> Result<PseudonymKey> {
    if path.symlink_metadata().is_ok() {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let key =
            PseudonymKey::new(bytes).with_context(|| format!("key file {}", path.display()))?;
        if let Some(d) = data_dir {
            // Installations from before the marker get one now.
            let m = key_marker(d);
            if m.symlink_metadata().is_err() {
                write_marker(&m)?;
            }
        }
        return Ok(key);
    }
    if let Some(evidence) = data_dir.and_then(key_evidence) {
        return Err(MissingKey {
            key: path.display().to_string(),
            evidence,
            marker: data_dir
                .map(key_marker)
                .unwrap_or_default()
                .display()
                .to_string(),
        }
        .into());
    }
    let key = PseudonymKey::generate();
    if let Some(dir) = path.parent() {
        pleura_shared::fsutil::private_dir(dir)?;
    }
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(key.as_bytes())?;
    f.sync_all()?;
    if let Some(d) = data_dir {
        write_marker(&key_marker(d))?;
    }
    tracing::info!(path = %path.display(), "created a new pseudonym key; back it up inside the clinic");
    Ok(key)
}

fn write_marker(m: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(m)
        .with_context(|| format!("creating {}", m.display()))?;
    f.sync_all()?;
    Ok(())
}

/// Removes group and other permissions from everything under `data_dir`, so case data
/// written by an older version or under a looser umask is closed off at start. The
/// inbox is left alone if it lies inside (the exporting device writes there), and the
/// folders above it keep only their search bit. Links are not followed. Returns how
/// many entries were changed.
pub fn tighten(data_dir: &Path, inbox: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::PermissionsExt;
    let mut changed = 0;
    let mut stack = vec![data_dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p == inbox {
            continue;
        }
        let meta = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o7777;
        // Folders on the way to an inbox inside the data folder keep their search bit
        // (x, not r): the exporting device must still reach the inbox.
        let keep = if meta.is_dir() && inbox.starts_with(&p) {
            0o711
        } else {
            0o700
        };
        if mode & 0o077 & !keep != 0 {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & keep))?;
            changed += 1;
        }
        if meta.is_dir() {
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(changed)
}

/// The pseudonym key may live outside the data folder: 0600 wherever it is.
fn tighten_file(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    Ok(())
}

pub fn open_outbox(cfg: &EdgeConfig) -> Result<SledOutbox> {
    pleura_shared::fsutil::private_dir(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    SledOutbox::open(&cfg.data_dir, cfg.quota_bytes)
        .with_context(|| format!("opening the outbox in {}", cfg.data_dir.display()))
}

/// The daemon's open: opening writes (sled recovers its log), so on a full disk the
/// reserve kept for this moment is given up and the agent starts degraded, syncing what
/// it holds, instead of exiting (and being restarted in a loop by systemd). Only the
/// daemon does this; `status` and the other commands never touch the reserve.
fn open_outbox_for_daemon(cfg: &EdgeConfig) -> Result<SledOutbox> {
    match SledOutbox::open(&cfg.data_dir, cfg.quota_bytes) {
        Err(OutboxError::DiskFull(e))
            if std::fs::remove_file(reserve_path(&cfg.data_dir)).is_ok() =>
        {
            tracing::error!(error = %e, "disk full: released the disk reserve to open the outbox; new scans wait until there is room");
            open_outbox(cfg)
        }
        Err(OutboxError::DiskFull(e)) => Err(anyhow::anyhow!(
            "disk full: {e} (and no disk reserve left to release)"
        ))
        .with_context(|| format!("opening the outbox in {}", cfg.data_dir.display())),
        other => other.with_context(|| format!("opening the outbox in {}", cfg.data_dir.display())),
    }
}

/// Space set aside in the data folder so that the outbox can still be opened (and the
/// results in it synced) when the disk has filled up.
const RESERVE_BYTES: usize = 4 << 20;

fn reserve_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("disk-reserve")
}

/// Makes the reserve if it is missing and there is room for it. Whether it exists.
pub fn keep_reserve(data_dir: &Path) -> bool {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = reserve_path(data_dir);
    if path
        .metadata()
        .is_ok_and(|m| m.len() == RESERVE_BYTES as u64)
    {
        return true;
    }
    let tmp = data_dir.join("disk-reserve.tmp");
    let made = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            // Written, not sparse: the blocks must really be held.
            f.write_all(&vec![0u8; RESERVE_BYTES])?;
            f.sync_all()
        })
        .and_then(|_| std::fs::rename(&tmp, &path));
    match made {
        Ok(()) => {
            tracing::info!(bytes = RESERVE_BYTES, "disk reserve in place");
            true
        }
        Err(_) => {
            let _ = std::fs::remove_file(&tmp);
            false
        }
    }
}

pub async fn run(cfg: EdgeConfig, shutdown: CancellationToken) -> Result<()> {
    // The inbox is shared with the exporting device; its mode is the installer's choice.
    std::fs::create_dir_all(&cfg.inbox)
        .with_context(|| format!("creating {}", cfg.inbox.display()))?;
    for d in [
        cfg.data_dir.clone(),
        cfg.processed_dir(),
        cfg.rejected_dir(),
    ] {
        pleura_shared::fsutil::private_dir(&d)
            .with_context(|| format!("creating {}", d.display()))?;
    }
    let _lock = crate::lock::DirLock::take(&cfg.data_dir, Duration::from_secs(10))?;
    let key = load_or_create_key_in(&cfg.pseudonym_key_file, Some(&cfg.data_dir))?;
    let loosened = tighten(&cfg.data_dir, &cfg.inbox)
        .with_context(|| format!("restricting {} to the agent", cfg.data_dir.display()))?;
    tighten_file(&cfg.pseudonym_key_file)?;
    if loosened > 0 {
        tracing::warn!(
            entries = loosened,
            "data folder entries were readable by other users; restricted to the agent"
        );
    }
    // Before any scan is taken in: a wrong bundle must stop the agent, not strand results.
    let creds = crate::credentials::Credentials::load(&cfg).context("loading the [tls] bundle")?;
    let sled_outbox = Arc::new(open_outbox_for_daemon(&cfg)?);
    let outbox: Arc<dyn Outbox> = sled_outbox.clone();
    let reserve_dir = cfg.data_dir.clone();
    let sd = shutdown.clone();
    // Restored as soon as there is room again.
    let reserve = tokio::spawn(async move {
        while !sd.is_cancelled() {
            let d = reserve_dir.clone();
            let _ = tokio::task::spawn_blocking(move || keep_reserve(&d)).await;
            tokio::select! {
                _ = sd.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            }
        }
    });
    let shared = Arc::new(Shared::default());
    shared.restore(&cfg.status_file());
    // The active model release (or the built-in model) and its swappable pool.
    let models = crate::models::run::boot(&cfg, shared.clone())?;
    let model = models.file.clone();
    let live = models.live.clone();
    shared.update(|s| {
        s.pid = std::process::id();
        s.clinic = cfg.clinic.clone();
        s.device = cfg.device.clone();
        s.model_version = model.info.label();
        s.sync.state = "starting".into();
    });
    let queued = Arc::new(tokio::sync::Notify::new());

    let tracker = tokio_util::task::TaskTracker::new();
    // The hub <-> device channel: verdicts and clip requests in, receipts and media out.
    let downlink = crate::downlink::start(
        &cfg,
        crate::credentials::channel_keys(&cfg)?,
        &sled_outbox,
        shared.clone(),
        Some((models.store.clone(), models.events.clone())),
        &tracker,
        shutdown.clone(),
    )
    .context("starting the hub channel")?;
    // Previews and clips of flagged scans, uploaded after the results.
    let (media_hook, media) = crate::media::start(
        &cfg,
        &sled_outbox,
        crate::media::MediaInputs {
            pool: live.clone(),
            outbox: outbox.clone(),
            channel: downlink.channel.clone(),
            acks: downlink.media_acks,
            clip_requests: downlink.clip_requests,
            pending_clips: downlink.clips.clone(),
            verdicts: downlink.verdicts.clone(),
            status: shared.clone(),
        },
        &tracker,
        shutdown.clone(),
    )?;
    // Model downloads wait while results or flagged media wait for the link.
    let busy = {
        let (o, m) = (outbox.clone(), media.clone());
        Arc::new(move || {
            let acked = |id: &pleura_shared::ResultId| {
                matches!(o.held(id), Ok(Some(crate::outbox::Held::Acked)))
            };
            o.stats().map(|s| s.pending > 0).unwrap_or(true)
                || m.next_upload(&acked, true).ok().flatten().is_some()
        })
    };
    models.spawn(downlink.channel.clone(), busy, &tracker, shutdown.clone());
    // The clinic's scan log and page (`clinic`; the page only when enabled).
    let clinic = crate::clinic::sources::open(
        &sled_outbox,
        outbox.clone(),
        media,
        Arc::new(downlink.verdicts.clone()),
        crate::clinic::view::PatientSource {
            info: Arc::new(model.info.clone()),
            inbox: cfg.inbox.clone(),
        },
    )
    .context("opening the clinic's scan log")?;
    let intake = Intake {
        cfg: cfg.clone(),
        pool: live.clone(),
        outbox: outbox.clone(),
        key: Arc::new(key),
        status: shared.clone(),
        queued: queued.clone(),
        abandoned: Arc::default(),
        scan_log: Some(clinic.scans.clone()),
        media: Some(media_hook),
    };
    tracker.spawn(intake.run(shutdown.clone()));
    let sync = SyncWorker {
        cfg: cfg.clone(),
        outbox: outbox.clone(),
        status: shared.clone(),
        queued,
        creds,
    };
    let sd = shutdown.clone();
    let channel = downlink.channel.clone();
    tracker.spawn(async move {
        if let Err(e) = sync.run_with_channel(Some(channel), sd).await {
            tracing::error!(error = %e, "sync worker stopped");
        }
    });
    let status_path = cfg.status_file();
    tracker.spawn(status::writer(
        outbox,
        shared,
        status_path,
        shutdown.clone(),
    ));
    crate::clinic::start(&cfg, clinic, shutdown.clone(), &tracker).await;
    tracker.close();
    tracing::info!(clinic = %cfg.clinic, device = %cfg.device, "agent running");
    shutdown.cancelled().await;
    if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("workers did not stop within 10 s");
    }
    reserve.abort();
    tracing::info!("agent stopped");
    Ok(())
}
