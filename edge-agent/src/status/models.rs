//! The `models` section of `edge-agent status`: which release runs, what is on its way.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelsStatus {
    /// "<name> <version>" of the running model (version 0: the built-in one).
    pub active: String,
    pub active_version: u64,
    pub active_since_ms: u64,
    pub previous: Option<String>,
    /// Release being downloaded: (version, held, total).
    pub downloading: Option<(u64, u64, u64)>,
    pub shadow: Option<String>,
    /// Shadow readings queued for the hub since the agent started.
    pub shadow_results: u64,
    pub last_refusal: Option<String>,
    /// "model <name> <version> rolled back: <reason>" (also in the alarms).
    pub alarm: Option<String>,
    /// Offers are refused while no `[models] root_key` is configured.
    pub root_key: bool,
}

pub fn render(m: &ModelsStatus) -> String {
    if m.active.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "models     active {} (since {} ms){}\n",
        m.active,
        m.active_since_ms,
        if m.root_key {
            ""
        } else {
            "; offers refused: no [models] root_key"
        }
    );
    if let Some(p) = &m.previous {
        out += &format!("           previous {p}\n");
    }
    if let Some((v, held, total)) = m.downloading {
        out += &format!("           downloading release {v}: {held}/{total} bytes\n");
    }
    if let Some(s) = &m.shadow {
        out += &format!(
            "           shadow {s}: {} readings queued (never shown or flagged; waiting for promote)\n",
            m.shadow_results
        );
    }
    if let Some(r) = &m.last_refusal {
        out += &format!("           last refusal {r}\n");
    }
    if let Some(a) = &m.alarm {
        out += &format!("           ALARM {a}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_names_the_release_download_and_alarm() {
        assert_eq!(render(&ModelsStatus::default()), "");
        let m = ModelsStatus {
            active: "pleura-lite 3".into(),
            active_version: 3,
            active_since_ms: 5,
            previous: Some("pleura-lite 0".into()),
            downloading: Some((4, 100, 400)),
            shadow: Some("pleura-lite 4".into()),
            shadow_results: 7,
            last_refusal: Some("2: not_newer: ...".into()),
            alarm: Some("model pleura-lite 5 rolled back: inference jobs crashed".into()),
            root_key: true,
        };
        let text = render(&m);
        assert!(text.contains("active pleura-lite 3"), "{text}");
        assert!(text.contains("previous pleura-lite 0"));
        assert!(text.contains("downloading release 4: 100/400 bytes"));
        assert!(text.contains("last refusal 2: not_newer"));
        assert!(
            text.contains("shadow pleura-lite 4: 7 readings queued"),
            "{text}"
        );
        assert!(text.contains("ALARM model pleura-lite 5 rolled back: inference jobs crashed"));
        assert!(!render(&ModelsStatus {
            root_key: false,
            ..m
        })
        .is_empty());
    }
}
