//! `hub-server model …`: keys, releases and rollouts. Files only: the running hub holds
//! its databases locked, and picks up `rollout.json` within seconds.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{ArgGroup, Args, Subcommand};
use pleura_shared::now_ms;

use crate::models::publish::{self, PublishRequest};
use crate::models::rollout::{self, Change};
use crate::models::shadow::{self, Gate, ShadowReport};
use crate::models::{
    keys, read_json, status, write_json, Cohort, ModelStore, RolloutFile, StatusFile,
};

#[derive(Args)]
pub struct DataDir {
    /// The hub's data_dir (models live in <data_dir>/models).
    #[arg(long)]
    pub data_dir: PathBuf,
}

#[derive(Args)]
pub struct Release {
    #[command(flatten)]
    pub dir: DataDir,
    #[arg(long)]
    pub version: u64,
}

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Create the model root key, the model-signing key and root metadata version 1.
    InitKeys(DataDir),
    /// Sign and store a release: the model, its sidecar (<stem>.json beside it) and
    /// self-test vectors.
    Publish {
        #[command(flatten)]
        dir: DataDir,
        #[arg(long)]
        model: PathBuf,
        /// Above every published version.
        #[arg(long)]
        version: u64,
        /// `{tolerance, vectors: [{frame_hex, expected}]}`, e.g. from
        /// `edge-agent model self-test-vectors`.
        #[arg(long)]
        self_test: PathBuf,
        #[arg(long, default_value = "")]
        card_summary: String,
        #[arg(long, default_value_t = 180)]
        expires_days: u64,
        #[arg(long, default_value = "0.1.0")]
        min_agent: String,
    },
    /// Published releases.
    List(DataDir),
    /// Offer a release to a cohort (again: replace the cohort, e.g. to widen it).
    #[command(group(ArgGroup::new("cohort").required(true).args(["clinics", "percent"])))]
    Rollout {
        #[command(flatten)]
        release: Release,
        /// Clinics whose devices get it, comma-separated.
        #[arg(long, value_delimiter = ',')]
        clinics: Vec<String>,
        /// Share of devices (0-100), chosen stably per device and release.
        #[arg(long)]
        percent: Option<u8>,
        /// Run it beside the active model until promoted.
        #[arg(long)]
        shadow: bool,
    },
    /// Stop offering a release to more devices (downloads under way go on).
    Pause(Release),
    Resume(Release),
    /// Stop a release: no more downloads, devices drop it (an active model stays).
    Abort(Release),
    /// Make a shadowing release the active one on its devices. Prints the shadow
    /// comparison it promotes on; with a gate, refuses unless the comparison meets it.
    Promote {
        #[command(flatten)]
        release: Release,
        /// Refuse unless at least this many reviewed examinations were compared.
        #[arg(long)]
        min_reviewed: Option<u64>,
        /// Refuse unless the candidate's sensitivity is at least the active model's on
        /// the compared examinations.
        #[arg(long)]
        not_worse: bool,
        /// Promote even if the gate is not met.
        #[arg(long)]
        force: bool,
    },
    /// Per release and device: offered / downloading / verified / shadowing / active /
    /// rolled back / refused, with reasons; and each shadowing candidate compared with
    /// the active model on reviewed scans.
    Status {
        #[command(flatten)]
        dir: DataDir,
        #[arg(long)]
        json: bool,
    },
    /// Certify a new signing key in the next root version (the old one retired; with
    /// --revoke-old also revoked).
    RotateSigningKey {
        #[command(flatten)]
        dir: DataDir,
        #[arg(long)]
        revoke_old: bool,
        /// The offline root key [default: <data_dir>/models/root.key].
        #[arg(long)]
        root_key: Option<PathBuf>,
    },
    /// Revoke a signing key in the next root version (devices refuse its releases).
    RevokeSigningKey {
        #[command(flatten)]
        dir: DataDir,
        /// Key id [default: the current signing.key].
        #[arg(long)]
        key_id: Option<String>,
        #[arg(long)]
        root_key: Option<PathBuf>,
    },
}

pub fn run(cmd: ModelCommand) -> Result<()> {
    match cmd {
        ModelCommand::InitKeys(d) => {
            let store = ModelStore::new(&d.data_dir);
            let k = keys::init_keys(&store, now_ms())?;
            println!(
                "model keys created in {}: root {}, signing {}, root metadata v{}.\n\
                 root.key belongs OFFLINE: move {} to offline storage and pass --root-key when rotating or revoking.\n\
                 Devices enrolled from now on get {} in their bundle.",
                store.dir().display(),
                k.root_key_id,
                k.signing_key_id.unwrap_or_default(),
                k.root_version,
                store.root_key().display(),
                store.root_public_key().display()
            );
        }
        ModelCommand::Publish {
            dir,
            model,
            version,
            self_test,
            card_summary,
            expires_days,
            min_agent,
        } => {
            let store = ModelStore::new(&dir.data_dir);
            let req = PublishRequest {
                model,
                version,
                self_test,
                card_summary,
                expires_days,
                min_agent,
            };
            let r = publish::publish(&store, &req, now_ms())?;
            println!(
                "published release {} ({}, {} bytes, sha256 {}) in {}",
                r.version,
                r.manifest.name,
                r.manifest.model_size,
                r.manifest.model_sha256,
                store.release_dir(r.version).display()
            );
        }
        ModelCommand::List(d) => {
            let store = ModelStore::new(&d.data_dir);
            for v in store.versions()? {
                let r = store.release(v)?;
                println!(
                    "{v}\t{}\t{} bytes\tsha256 {}",
                    r.manifest.name, r.manifest.model_size, r.manifest.model_sha256
                );
            }
        }
        ModelCommand::Rollout {
            release,
            clinics,
            percent,
            shadow,
        } => {
            let cohort = match percent {
                Some(p) => Cohort::Percent(p),
                None => Cohort::Clinics(clinics),
            };
            change(&release, Change::Rollout { cohort, shadow })?
        }
        ModelCommand::Pause(r) => change(&r, Change::Pause)?,
        ModelCommand::Resume(r) => change(&r, Change::Resume)?,
        ModelCommand::Abort(r) => change(&r, Change::Abort)?,
        ModelCommand::Promote {
            release,
            min_reviewed,
            not_worse,
            force,
        } => {
            let gate = Gate {
                min_reviewed,
                not_worse,
            };
            promote(&release, gate, force)?
        }
        ModelCommand::Status { dir, json } => show_status(&dir.data_dir, json)?,
        ModelCommand::RotateSigningKey {
            dir,
            revoke_old,
            root_key,
        } => {
            let store = ModelStore::new(&dir.data_dir);
            let k = keys::rotate_signing_key(&store, root_key.as_deref(), revoke_old, now_ms())?;
            println!(
                "new signing key {} certified by root metadata v{}{}",
                k.signing_key_id.unwrap_or_default(),
                k.root_version,
                if revoke_old {
                    "; the old key is revoked"
                } else {
                    ""
                }
            );
        }
        ModelCommand::RevokeSigningKey {
            dir,
            key_id,
            root_key,
        } => {
            let store = ModelStore::new(&dir.data_dir);
            let (k, id) =
                keys::revoke_signing_key(&store, root_key.as_deref(), key_id.as_deref(), now_ms())?;
            println!(
                "signing key {id} revoked in root metadata v{}; the running hub sends it to every \
                 enrolled device. Publish again after `model rotate-signing-key`.",
                k.root_version
            );
        }
    }
    Ok(())
}

fn change(r: &Release, change: Change) -> Result<()> {
    let store = ModelStore::new(&r.dir.data_dir);
    store.release(r.version)?;
    let path = store.rollout_path();
    let mut plan: RolloutFile = read_json(&path)?.unwrap_or_default();
    rollout::apply(&mut plan, r.version, change, now_ms()).map_err(|reason| {
        crate::models::ModelsError::Plan {
            version: r.version,
            reason,
        }
    })?;
    write_json(&path, &plan, 0o600)?;
    let p = &plan.releases[&r.version];
    println!(
        "release {}: {p} (the running hub applies it within seconds)",
        r.version
    );
    Ok(())
}

fn shadow_report(store: &ModelStore) -> Result<ShadowReport> {
    Ok(read_json(&store.shadow_path())
        .context("reading the hub's shadow comparison")?
        .unwrap_or_default())
}

/// Oldest shadow comparison a gate may be checked against.
const STALE_REPORT_MS: u64 = 10 * 60 * 1000;

/// What the gate says, and what `promote` prints before it changes the plan: the
/// comparison, and a forced promotion's unmet gate. Err: refused (nothing changed).
pub fn promote_decision(
    version: u64,
    report: &ShadowReport,
    gate: Gate,
    force: bool,
) -> Result<String, String> {
    let c = report.candidates.get(&version);
    // The running hub rewrites it every ~30 s: an old one means the hub is down, and a
    // gate must not pass on numbers that may no longer hold.
    let age_ms = pleura_shared::now_ms().saturating_sub(report.generated_at_ms);
    if gate.is_set() && !force && age_ms > STALE_REPORT_MS {
        return Err(format!(
            "the shadow comparison is {} min old (is the hub running?); a gate needs a fresh one",
            age_ms / 60_000
        ));
    }
    let mut out = match c {
        Some(c) => format!("promoting on this shadow comparison:\n{}", shadow::render(c)),
        None => format!("release {version}: no shadow comparison (no shadow results on reviewed examinations yet)\n"),
    };
    match gate.check(version, c) {
        Ok(()) => {}
        Err(why) if force => out.push_str(&format!(
            "gate not met, promoting anyway (--force): {why}\n"
        )),
        Err(why) => return Err(why),
    }
    Ok(out)
}

fn promote(r: &Release, gate: Gate, force: bool) -> Result<()> {
    let store = ModelStore::new(&r.dir.data_dir);
    store.release(r.version)?;
    let report = shadow_report(&store)?;
    let said = promote_decision(r.version, &report, gate, force).map_err(anyhow::Error::msg)?;
    print!("{said}");
    change(r, Change::Promote)
}

fn show_status(data_dir: &Path, json: bool) -> Result<()> {
    let store = ModelStore::new(data_dir);
    let mut st: StatusFile = read_json(&store.status_path())
        .context("reading the hub's model status")?
        .unwrap_or_default();
    let plan: RolloutFile = read_json(&store.rollout_path())?.unwrap_or_default();
    let mut pending = Vec::new();
    for (v, p) in &plan.releases {
        let rs = st.releases.entry(*v).or_default();
        if rs.plan.as_ref() != Some(p) {
            pending.push(format!(
                "release {v}: the hub has not applied this plan yet ({p}); is it running?"
            ));
            rs.plan = Some(p.clone());
        }
        if rs.name.is_empty() {
            if let Ok(r) = store.release(*v) {
                rs.name = r.manifest.name;
                rs.size = r.manifest.model_size;
            }
        }
    }
    let report = shadow_report(&store)?;
    if json {
        let mut v = serde_json::to_value(&st)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("shadow".into(), serde_json::to_value(&report)?);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print!("{}", status::render(&st));
    for p in pending {
        println!("{p}");
    }
    if report.candidates.is_empty() {
        println!("shadow comparison: no candidate has shadow results on reviewed examinations yet");
    }
    for c in report.candidates.values() {
        print!("shadow comparison, {}", shadow::render(c));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::shadow::{Comparison, Operating, Rate};

    #[test]
    fn promote_refuses_on_an_unmet_gate_unless_forced_and_always_says_what_it_saw() {
        let mut report = ShadowReport {
            generated_at_ms: pleura_shared::now_ms(),
            ..Default::default()
        };
        report.candidates.insert(
            3,
            Comparison {
                release: 3,
                exams_compared: 60,
                active: Operating {
                    sensitivity: Rate { hits: 9, of: 10 },
                    ..Default::default()
                },
                candidate: Operating {
                    sensitivity: Rate { hits: 8, of: 10 },
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        let none = Gate::default();
        let said = promote_decision(3, &report, none, false).unwrap();
        assert!(
            said.contains("sensitivity   active 90.0% (9/10)   candidate 80.0% (8/10)"),
            "{said}"
        );
        assert!(promote_decision(4, &report, none, false)
            .unwrap()
            .contains("no shadow comparison"));
        let gate = Gate {
            min_reviewed: Some(50),
            not_worse: true,
        };
        let e = promote_decision(3, &report, gate, false).unwrap_err();
        assert!(
            e.contains(
                "candidate sensitivity 80.0% (8/10) is below the active model's 90.0% (9/10)"
            ),
            "{e}"
        );
        let forced = promote_decision(3, &report, gate, true).unwrap();
        assert!(forced.contains("promoting anyway (--force)"), "{forced}");
        let enough = Gate {
            min_reviewed: Some(60),
            not_worse: false,
        };
        assert!(promote_decision(3, &report, enough, false).is_ok());
        assert!(
            promote_decision(4, &report, enough, false).is_err(),
            "no comparison"
        );
        // A comparison the hub has not refreshed for long gates nothing.
        report.generated_at_ms -= STALE_REPORT_MS + 60_000;
        let e = promote_decision(3, &report, enough, false).unwrap_err();
        assert!(e.contains("min old"), "{e}");
        assert!(
            promote_decision(3, &report, none, false).is_ok(),
            "no gate: no check"
        );
    }
}
