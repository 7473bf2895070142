//! Login throttling per account and per source address, without I/O (the clock is an
//! argument). After `threshold` failed logins within `forget_after`, the account (or the
//! source) is refused without a password check for a backoff that doubles with each
//! further failure, up to `max_backoff`. A successful login clears its account's count.
//! Refusing before argon2 also caps the CPU a guesser can make the hub spend. Attempts
//! in flight count too, so parallel guesses cannot all slip past the check before the
//! first failure is recorded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The key a caller's address is counted under: an IPv4 address as is (IPv4-mapped IPv6
/// addresses too), an IPv6 address by its /64 — one host is normally given a whole /64,
/// so rotating addresses inside it does not make a new source. Anything else verbatim.
pub fn source_key(addr: &str) -> String {
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return addr.to_string();
    };
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("{net}/64")
            }
        },
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub threshold: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub forget_after: Duration,
    /// Keys tracked at most; beyond it, new keys share one bucket.
    pub cap: usize,
}

pub const PER_ACCOUNT: Policy = Policy {
    threshold: 5,
    backoff: Duration::from_secs(60),
    max_backoff: Duration::from_secs(15 * 60),
    forget_after: Duration::from_secs(15 * 60),
    cap: 10_000,
};

pub const PER_SOURCE: Policy = Policy {
    threshold: 20,
    backoff: Duration::from_secs(60),
    max_backoff: Duration::from_secs(15 * 60),
    forget_after: Duration::from_secs(15 * 60),
    cap: 10_000,
};

struct Strikes {
    failures: u32,
    /// Attempts whose password check is still running.
    pending: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

struct Table {
    policy: Policy,
    map: HashMap<String, Strikes>,
}

impl Table {
    fn blocked(&self, key: &str, now: Instant) -> Option<Duration> {
        let s = self.map.get(key)?;
        if let Some(t) = s.blocked_until.filter(|t| *t > now) {
            return Some(t.duration_since(now));
        }
        // Enough guesses already running to reach the threshold if they all fail.
        (s.pending > 0 && s.failures + s.pending >= self.policy.threshold)
            .then_some(Duration::from_secs(1))
    }

    /// The key's record, made if needed; None if the table is full of locked or busy keys
    /// (the attempt is then refused: an untracked key would be unlimited).
    fn slot(&mut self, key: &str, now: Instant) -> Option<&mut Strikes> {
        let p = self.policy;
        if !self.map.contains_key(key) && self.map.len() >= p.cap {
            // Make room: forget the least recent key that is neither locked nor busy.
            let victim = self
                .map
                .iter()
                .filter(|(_, s)| s.pending == 0 && s.blocked_until.is_none_or(|t| t <= now))
                .min_by_key(|(_, s)| s.last)
                .map(|(k, _)| k.clone())?;
            self.map.remove(&victim);
        }
        let s = self.map.entry(key.into()).or_insert(Strikes {
            failures: 0,
            pending: 0,
            last: now,
            blocked_until: None,
        });
        if now.duration_since(s.last) >= p.forget_after && s.blocked_until.is_none_or(|t| t <= now)
        {
            s.failures = 0;
        }
        Some(s)
    }

    fn fail(&mut self, key: &str, now: Instant) {
        let p = self.policy;
        let Some(s) = self.slot(key, now) else {
            return;
        };
        s.failures += 1;
        s.last = now;
        if s.failures >= p.threshold {
            let doublings = (s.failures - p.threshold).min(16);
            let wait = p.backoff.saturating_mul(1 << doublings).min(p.max_backoff);
            s.blocked_until = Some(now + wait);
        }
    }

    fn release(&mut self, key: &str) {
        if let Some(s) = self.map.get_mut(key) {
            s.pending = s.pending.saturating_sub(1);
        }
    }
}

/// How a login attempt that `begin` let through ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    Succeeded,
    /// Wrong password or unknown user.
    Failed,
    /// Ended by something else (accounts file unreadable, task failed): not counted.
    Aborted,
}

fn lock(m: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct LoginLimiter {
    accounts: Mutex<Table>,
    sources: Mutex<Table>,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        Self::new(PER_ACCOUNT, PER_SOURCE)
    }
}

/// Why a login was refused before its password was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Throttled {
    Account(Duration),
    Source(Duration),
    /// The tables are full of locked or busy keys: refused rather than let through
    /// untracked.
    Full,
}

impl Throttled {
    pub fn retry_after(&self) -> Duration {
        match self {
            Throttled::Account(d) | Throttled::Source(d) => *d,
            Throttled::Full => Duration::from_secs(1),
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Throttled::Account(_) => "too many attempts for this account",
            Throttled::Source(_) => "too many attempts from this source",
            Throttled::Full => "too many login attempts in progress",
        }
    }
}

impl LoginLimiter {
    pub fn new(account: Policy, source: Policy) -> Self {
        let t = |policy| {
            Mutex::new(Table {
                policy,
                map: HashMap::new(),
            })
        };
        Self {
            accounts: t(account),
            sources: t(source),
        }
    }

    /// Admits a login attempt (counted as running until `finish`), or says why not.
    /// `source` is the caller's address (counted by `source_key`). When a table has no
    /// room for a new key the attempt is refused (fail closed).
    pub fn begin(&self, account: &str, source: &str, now: Instant) -> Result<(), Throttled> {
        let source = &source_key(source);
        let (mut accounts, mut sources) = (lock(&self.accounts), lock(&self.sources));
        if let Some(d) = accounts.blocked(account, now) {
            return Err(Throttled::Account(d));
        }
        if let Some(d) = sources.blocked(source, now) {
            return Err(Throttled::Source(d));
        }
        // Both slots or neither: check room in both before counting in either.
        if sources.slot(source, now).is_none() {
            return Err(Throttled::Full);
        }
        let Some(a) = accounts.slot(account, now) else {
            return Err(Throttled::Full);
        };
        a.pending += 1;
        sources
            .slot(source, now)
            .expect("made just above, under the same lock")
            .pending += 1;
        Ok(())
    }

    /// Records how an admitted attempt ended. A success clears its account's count.
    pub fn finish(&self, account: &str, source: &str, attempt: Attempt, now: Instant) {
        let source = &source_key(source);
        let (mut accounts, mut sources) = (lock(&self.accounts), lock(&self.sources));
        accounts.release(account);
        sources.release(source);
        match attempt {
            Attempt::Succeeded => {
                if accounts.map.get(account).is_some_and(|s| s.pending == 0) {
                    accounts.map.remove(account);
                }
            }
            Attempt::Failed => {
                accounts.fail(account, now);
                sources.fail(source, now);
            }
            Attempt::Aborted => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guess(l: &LoginLimiter, a: &str, s: &str, now: Instant) -> Result<(), Throttled> {
        l.begin(a, s, now)?;
        l.finish(a, s, Attempt::Failed, now);
        Ok(())
    }

    #[test]
    fn guessing_locks_the_account_and_the_source_but_not_others() {
        let l = LoginLimiter::default();
        let t0 = Instant::now();
        for _ in 0..5 {
            guess(&l, "ana", "10.0.0.1", t0).unwrap();
        }
        // The account is locked, from any source.
        assert!(matches!(
            l.begin("ana", "10.9.9.9", t0),
            Err(Throttled::Account(_))
        ));
        // Spraying other accounts from one source locks the source.
        for i in 0..15 {
            guess(&l, &format!("user{i}"), "10.0.0.1", t0).unwrap();
        }
        assert!(matches!(
            l.begin("bob", "10.0.0.1", t0),
            Err(Throttled::Source(_))
        ));
        l.begin("bob", "10.0.0.2", t0).unwrap();
        l.finish("bob", "10.0.0.2", Attempt::Succeeded, t0);
        // The lock lifts after the backoff; another failure locks again, for longer.
        let later = t0 + Duration::from_secs(61);
        guess(&l, "ana", "10.9.9.9", later).unwrap();
        let again = l.begin("ana", "10.9.9.9", later).unwrap_err();
        assert_eq!(again.retry_after(), Duration::from_secs(120));
        // A success clears the account.
        let much_later = later + Duration::from_secs(121);
        l.begin("ana", "10.9.9.8", much_later).unwrap();
        l.finish("ana", "10.9.9.8", Attempt::Succeeded, much_later);
        guess(&l, "ana", "10.9.9.8", much_later).unwrap();
        l.begin("ana", "10.9.9.8", much_later).unwrap();
    }

    #[test]
    fn parallel_guesses_cannot_outrun_the_count() {
        let l = LoginLimiter::default();
        let t0 = Instant::now();
        // 100 guesses at once: only as many as the threshold are let through.
        let admitted = (0..100)
            .filter(|i| l.begin("ana", &format!("10.0.0.{i}"), t0).is_ok())
            .count();
        assert_eq!(admitted, 5);
        for i in 0..5 {
            l.finish("ana", &format!("10.0.0.{i}"), Attempt::Failed, t0);
        }
        assert!(matches!(
            l.begin("ana", "x", t0),
            Err(Throttled::Account(_))
        ));
    }

    #[test]
    fn the_tables_stay_bounded() {
        let p = Policy {
            cap: 8,
            ..PER_SOURCE
        };
        let l = LoginLimiter::new(p, p);
        let t0 = Instant::now();
        for i in 0..1000 {
            guess(&l, &format!("u{i}"), &format!("s{i}"), t0).unwrap();
        }
        assert_eq!(l.accounts.lock().unwrap().map.len(), 8);
        assert_eq!(l.sources.lock().unwrap().map.len(), 8);
        // A guesser cycling through names cannot evict a locked account.
        let l = LoginLimiter::new(Policy { threshold: 1, ..p }, p);
        guess(&l, "ana", "s", t0).unwrap();
        for i in 0..1000 {
            let _ = guess(&l, &format!("u{i}"), "s", t0 + Duration::from_millis(1));
        }
        assert!(l.begin("ana", "elsewhere", t0).is_err());
    }

    #[test]
    fn ipv6_rotation_inside_a_64_is_one_source_and_mapped_v4_is_v4() {
        assert_eq!(source_key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(source_key("::ffff:10.0.0.7"), "10.0.0.7");
        assert_eq!(source_key("10.0.0.7"), "10.0.0.7");
        let l = LoginLimiter::default();
        let t0 = Instant::now();
        let mut admitted = 0;
        for i in 0..300u32 {
            let src = format!("2001:db8:1:2:{:x}:{:x}::1", i, i * 7);
            if guess(&l, &format!("u{i}"), &src, t0).is_ok() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, PER_SOURCE.threshold, "one /64 is one source");
        assert!(matches!(
            l.begin("bob", "2001:db8:1:2:ffff::9", t0),
            Err(Throttled::Source(_))
        ));
        // Another /64 is another source.
        l.begin("bob", "2001:db8:1:3::9", t0).unwrap();
        // IPv4 and its mapped form are the same source.
        for i in 0..PER_SOURCE.threshold {
            guess(&l, &format!("v{i}"), "10.0.0.7", t0).unwrap();
        }
        assert!(matches!(
            l.begin("carl", "::ffff:10.0.0.7", t0),
            Err(Throttled::Source(_))
        ));
    }

    #[test]
    fn a_full_table_refuses_instead_of_leaving_keys_untracked() {
        let p = Policy {
            cap: 8,
            threshold: 1,
            ..PER_ACCOUNT
        };
        let wide = Policy {
            cap: 10_000,
            threshold: 1_000_000,
            ..PER_SOURCE
        };
        let l = LoginLimiter::new(p, wide);
        let t0 = Instant::now();
        // Eight locked accounts fill the account table.
        for i in 0..8 {
            guess(&l, &format!("u{i}"), &format!("10.0.0.{i}"), t0).unwrap();
        }
        // A ninth account finds no room: refused, and again and again.
        for _ in 0..100 {
            assert_eq!(l.begin("u9", "10.0.1.1", t0), Err(Throttled::Full));
        }
        // Full source table too.
        let l = LoginLimiter::new(wide, p);
        for i in 0..8 {
            guess(&l, &format!("u{i}"), &format!("10.0.0.{i}"), t0).unwrap();
        }
        assert_eq!(l.begin("ana", "10.0.9.9", t0), Err(Throttled::Full));
        // A refused attempt left nothing pending behind.
        assert!(l
            .accounts
            .lock()
            .unwrap()
            .map
            .get("ana")
            .is_none_or(|s| s.pending == 0));
    }
}
