//! Folding refused calls for the audit log, without I/O. Refusals are keyed by SOURCE
//! only (`ratelimit::source_key`: an IPv6 caller by its /64), never by anything the
//! caller chooses (user name, action): the first refusal from a source in a window is
//! written at once; the rest of that window become one counted line when it closes,
//! giving how many distinct user names were tried (not the names). Immediate lines are
//! capped across all sources (`MAX_IMMEDIATE` per window) and sources are bounded
//! (`MAX_SOURCES`); past either, refusals are counted in one global overflow line. So
//! every refused call is counted in some line, and a flood writes at most
//! `MAX_IMMEDIATE + MAX_SOURCES + 1` lines per window whatever its rate or spread.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::ratelimit::source_key;

pub const WINDOW: Duration = Duration::from_secs(1);
pub const MAX_SOURCES: usize = 64;
pub const MAX_IMMEDIATE: u32 = 32;
/// Distinct user names counted exactly per bucket; past it, "more than".
const MAX_NAMES: usize = 1024;
/// The source named on lines for calls folded globally.
pub const OVERFLOW: &str = "other sources";

/// One line to write: `count` refused calls.
#[derive(Debug, Clone, PartialEq)]
pub struct Fold {
    pub source: String,
    /// The user name for a line standing for one call; "-" for a folded line.
    pub user: String,
    /// Distinct user names among the calls (capped at `MAX_NAMES`). A folded line names
    /// the distinct actions and reasons of its calls (up to `MAX_KINDS` each).
    pub users: usize,
    pub action: String,
    pub reason: String,
    pub count: u64,
    pub window: Duration,
}

/// Distinct actions and reasons (both chosen by the hub, not the caller) named on a
/// folded line; past it, "...".
const MAX_KINDS: usize = 4;

fn add_kind(kinds: &mut Vec<String>, k: &str) {
    if kinds.iter().any(|x| x == k) {
        return;
    }
    if kinds.len() < MAX_KINDS {
        kinds.push(k.into());
    } else if kinds.len() == MAX_KINDS {
        kinds.push("...".into());
    }
}

struct Bucket {
    opened: Instant,
    actions: Vec<String>,
    reasons: Vec<String>,
    /// Refusals since the first (which was written when it happened, unless overflow).
    pending: u64,
    names: HashSet<u64>,
}

pub struct Folder {
    window: Duration,
    cap: usize,
    max_immediate: u32,
    immediate: u32,
    immediate_since: Option<Instant>,
    open: HashMap<String, Bucket>,
}

impl Default for Folder {
    fn default() -> Self {
        Self::new()
    }
}

fn name_hash(user: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    user.hash(&mut h);
    h.finish()
}

impl Folder {
    pub fn new() -> Self {
        Self::with(WINDOW, MAX_SOURCES, MAX_IMMEDIATE)
    }

    pub fn with(window: Duration, cap: usize, max_immediate: u32) -> Self {
        Self {
            window,
            cap,
            max_immediate,
            immediate: 0,
            immediate_since: None,
            open: HashMap::new(),
        }
    }

    /// One refused call from `source` (an address; folded by `source_key`); returns the
    /// lines to write now.
    pub fn note(
        &mut self,
        source: &str,
        user: &str,
        action: &str,
        reason: &str,
        now: Instant,
    ) -> Vec<Fold> {
        let mut out = self.flush(now, false);
        if self
            .immediate_since
            .is_none_or(|t| now.duration_since(t) >= self.window)
        {
            self.immediate_since = Some(now);
            self.immediate = 0;
        }
        let key = source_key(source);
        let name = name_hash(user);
        if let Some(b) = self.open.get_mut(&key) {
            b.pending += 1;
            add_kind(&mut b.actions, action);
            add_kind(&mut b.reasons, reason);
            if b.names.len() < MAX_NAMES {
                b.names.insert(name);
            }
            return out;
        }
        let room = self.open.len() < self.cap && self.immediate < self.max_immediate;
        if !room {
            let b = self.open.entry(OVERFLOW.into()).or_insert_with(|| Bucket {
                opened: now,
                actions: Vec::new(),
                reasons: vec!["refused calls past the audit line budget".into()],
                pending: 0,
                names: HashSet::new(),
            });
            b.pending += 1;
            add_kind(&mut b.actions, action);
            add_kind(&mut b.reasons, reason);
            if b.names.len() < MAX_NAMES {
                b.names.insert(name);
            }
            return out;
        }
        self.immediate += 1;
        out.push(Fold {
            source: key.clone(),
            user: user.into(),
            users: 1,
            action: action.into(),
            reason: reason.into(),
            count: 1,
            window: self.window,
        });
        self.open.insert(
            key,
            Bucket {
                opened: now,
                actions: Vec::new(),
                reasons: Vec::new(),
                pending: 0,
                names: HashSet::new(),
            },
        );
        out
    }

    /// Lines for every window closed by `now` (every window if `all`), which are forgotten.
    pub fn flush(&mut self, now: Instant, all: bool) -> Vec<Fold> {
        let window = self.window;
        let closed: Vec<String> = self
            .open
            .iter()
            .filter(|(_, b)| all || now.duration_since(b.opened) >= window)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for k in closed {
            if let Some(b) = self.open.remove(&k) {
                if b.pending > 0 {
                    out.push(Fold {
                        source: k,
                        user: "-".into(),
                        users: b.names.len(),
                        action: b.actions.join(","),
                        reason: b.reasons.join("; "),
                        count: b.pending,
                        window,
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total(lines: &[Fold]) -> u64 {
        lines.iter().map(|l| l.count).sum()
    }

    #[test]
    fn a_flood_of_refusals_is_counted_in_full_in_a_bounded_number_of_lines() {
        let mut f = Folder::with(Duration::from_secs(1), 4, 32);
        let t0 = Instant::now();
        let mut lines = Vec::new();
        // 1000 calls over ~2.5 s from one source.
        for i in 0..1000u64 {
            let now = t0 + Duration::from_micros(i * 2500);
            lines.extend(f.note("10.0.0.9", "-", "get_case", "no bearer token", now));
        }
        lines.extend(f.flush(t0 + Duration::from_secs(10), false));
        assert_eq!(total(&lines), 1000);
        assert!(lines.len() <= 6, "{} lines", lines.len());
        assert_eq!(lines[0].count, 1, "the first refusal is written at once");

        // Many sources: bounded buckets, the rest counted under the overflow source.
        let mut lines = Vec::new();
        for i in 0..1000u64 {
            let src = format!("10.1.{}.{}", i / 256, i % 256);
            lines.extend(f.note(&src, "-", "list_cases", "token expired", t0));
        }
        lines.extend(f.flush(t0, true));
        assert_eq!(total(&lines), 1000);
        assert!(lines.len() <= 6, "{} lines", lines.len());
        assert!(lines.iter().any(|l| l.source == OVERFLOW && l.count == 996));
        assert!(f.open.is_empty());
    }

    #[test]
    fn distinct_user_names_from_one_source_fold_into_one_line_with_a_count() {
        let mut f = Folder::new();
        let t0 = Instant::now();
        let mut lines = Vec::new();
        for i in 0..1000u64 {
            lines.extend(f.note(
                "10.0.0.9",
                &format!("user{i}"),
                "login",
                "too many attempts from this source",
                t0 + Duration::from_micros(i * 100),
            ));
        }
        lines.extend(f.flush(t0 + Duration::from_secs(5), false));
        assert_eq!(total(&lines), 1000);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[1].users, 999);
        assert_eq!(lines[1].user, "-", "folded lines carry no names");
    }

    #[test]
    fn an_ipv6_64_is_one_source_and_immediate_lines_are_capped_across_sources() {
        let mut f = Folder::new();
        let t0 = Instant::now();
        let mut lines = Vec::new();
        for i in 0..300u32 {
            let src = format!("2001:db8:7:7:{:x}::{:x}", i, i + 1);
            lines.extend(f.note(&src, &format!("u{i}"), "login", "bad", t0));
        }
        lines.extend(f.flush(t0 + Duration::from_secs(5), false));
        assert_eq!(total(&lines), 300);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0].source, "2001:db8:7:7::/64");

        // 1000 distinct /64s inside one second: at most MAX_IMMEDIATE lines at once, the
        // rest in the windows' folded lines and one overflow line.
        let mut f = Folder::new();
        let (mut now_lines, mut later) = (0, Vec::new());
        for i in 0..1000u32 {
            let src = format!("2001:db8:{:x}:{:x}::1", i / 7, i);
            let out = f.note(&src, "x", "login", "bad", t0);
            now_lines += out.len();
            later.extend(out);
        }
        assert_eq!(now_lines, MAX_IMMEDIATE as usize);
        later.extend(f.flush(t0 + Duration::from_secs(5), false));
        assert_eq!(total(&later), 1000);
        assert!(later.len() <= MAX_IMMEDIATE as usize + 1, "{}", later.len());
    }
}
