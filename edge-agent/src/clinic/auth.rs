//! The page's local login: one PIN for the clinic's staff (its argon2 hash in the data
//! folder, set with `edge-agent clinic-pin set`), logins throttled per source address
//! (IPv6: per /64) and for all sources together, at most `PIN_CHECKS` checks at once,
//! sessions held in memory (a restart logs everyone out), and a CSRF token per session
//! (and per login form) checked on every POST.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use super::ClinicError;

pub const PIN_FILE: &str = "clinic-page.pin";
pub const SESSION_COOKIE: &str = "pleura_clinic";
// Not the hub's name: cookies ignore ports, and the demo serves both pages on 127.0.0.1.
pub const LOGIN_COOKIE: &str = "pleura_clinic_login";
/// Login attempts a source may make per `WINDOW`; beyond it, 429 without a check.
pub const MAX_TRIES: usize = 5;
/// Login attempts all sources together may make per `WINDOW`; beyond it, 429 for
/// everyone (the right PIN too) until the window passes.
pub const MAX_TRIES_ALL: usize = 20;
/// PIN checks (argon2: ~19 MiB and a core each) run at the same time, at most.
pub const PIN_CHECKS: usize = 2;
pub const WINDOW: Duration = Duration::from_secs(60);
const MAX_SOURCES: usize = 10_000;
const MAX_SESSIONS: usize = 256;
pub const MIN_PIN: usize = 6;
pub const MAX_PIN: usize = 128;

pub fn pin_path(data_dir: &Path) -> PathBuf {
    data_dir.join(PIN_FILE)
}

/// Checks a new PIN and stores its argon2id hash (mode 0600), replacing any earlier one.
pub fn set_pin(data_dir: &Path, pin: &str) -> Result<(), ClinicError> {
    let n = pin.chars().count();
    if !(MIN_PIN..=MAX_PIN).contains(&n) {
        return Err(ClinicError::Invalid(format!(
            "the PIN must be {MIN_PIN}-{MAX_PIN} characters (got {n})"
        )));
    }
    if pin.chars().any(char::is_control) {
        return Err(ClinicError::Invalid(
            "the PIN must not contain control characters".into(),
        ));
    }
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| ClinicError::Invalid(e.to_string()))?;
    let hash = Argon2::default()
        .hash_password(pin.as_bytes(), &salt)
        .map_err(|e| ClinicError::Invalid(e.to_string()))?
        .to_string();
    pleura_shared::fsutil::private_dir(data_dir)
        .map_err(|e| ClinicError::Io(format!("creating {}: {e}", data_dir.display())))?;
    write_private(&pin_path(data_dir), hash.as_bytes())
}

/// Replaces `path` with `bytes`, readable by this user only: written to a temporary file
/// of its own beside it (`<name>.tmp.<random>`, created new with mode 0600, so neither
/// another writer's temporary file nor a stale one with a wider mode is reused),
/// fsynced, renamed over `path`, then the folder fsynced. The PIN hash and the page's
/// key and certificate are written this way, possibly at the same time.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ClinicError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e: std::io::Error| ClinicError::Io(format!("writing {}: {e}", path.display()));
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut name = path
        .file_name()
        .ok_or_else(|| ClinicError::Io(format!("{} names no file", path.display())))?
        .to_os_string();
    name.push(format!(".tmp.{}", hex::encode(rand::random::<[u8; 8]>())));
    let tmp = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    let written = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)
}

/// Whether `pin` matches the stored hash (argon2: slow on purpose, call off the async
/// workers). Read at each login, so a PIN changed while the agent runs takes effect.
pub fn check_pin(data_dir: &Path, pin: &str) -> Result<bool, ClinicError> {
    let path = pin_path(data_dir);
    let stored = std::fs::read_to_string(&path).map_err(|e| {
        ClinicError::NoPin(format!(
            "{} ({e}): set it with `edge-agent clinic-pin set`",
            path.display()
        ))
    })?;
    let parsed = PasswordHash::new(stored.trim())
        .map_err(|e| ClinicError::NoPin(format!("{} is not a PIN hash: {e}", path.display())))?;
    Ok(Argon2::default()
        .verify_password(pin.as_bytes(), &parsed)
        .is_ok())
}

/// Random 32 bytes as hex: session ids and CSRF tokens.
pub fn token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Equality that takes the same time wherever the first difference is.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Why a login attempt is refused without a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// This source (an IPv4 address, an IPv6 /64) used its `MAX_TRIES`.
    Source,
    /// All sources together used `MAX_TRIES_ALL`: nobody may try until the window
    /// passes (the login form is not a secret, so many addresses must not add up to
    /// a brute force).
    Everyone,
}

#[derive(Default)]
struct Tries {
    by_source: HashMap<IpAddr, Vec<Instant>>,
    all: VecDeque<Instant>,
}

/// Login attempts per source and from all sources together, in a sliding window (no
/// I/O: the clock is an argument).
#[derive(Default)]
pub struct Throttle {
    tries: Mutex<Tries>,
}

/// The unit a source is counted by: an IPv4 address (also when mapped into IPv6), or
/// an IPv6 /64 (one host or LAN gets a whole /64 and may pick any address in it).
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Throttle {
    /// Counts an attempt from `source`; refused (and not counted) when the source or
    /// all sources together are over their limit.
    pub fn attempt(&self, source: IpAddr, now: Instant) -> Result<(), Refused> {
        let Ok(mut guard) = self.tries.lock() else {
            return Err(Refused::Everyone);
        };
        let t = &mut *guard;
        let live = |i: &Instant| now.saturating_duration_since(*i) < WINDOW;
        while t.all.front().is_some_and(|i| !live(i)) {
            t.all.pop_front();
        }
        if t.by_source.len() >= MAX_SOURCES {
            t.by_source.retain(|_, v| v.iter().any(live));
        }
        let key = source_key(source);
        let mine = t.by_source.entry(key).or_default();
        mine.retain(live);
        if mine.len() >= MAX_TRIES {
            return Err(Refused::Source);
        }
        if t.all.len() >= MAX_TRIES_ALL {
            return Err(Refused::Everyone);
        }
        mine.push(now);
        t.all.push_back(now);
        Ok(())
    }

    /// A successful login clears its source's count (not the count of all sources).
    pub fn clear(&self, source: IpAddr) {
        if let Ok(mut t) = self.tries.lock() {
            t.by_source.remove(&source_key(source));
        }
    }
}

#[derive(Clone)]
pub struct Session {
    pub csrf: String,
    expires: Instant,
}

pub struct Sessions {
    ttl: Duration,
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            map: Mutex::default(),
        }
    }

    /// A new session; its id goes into the cookie.
    pub fn create(&self, now: Instant) -> (String, Session) {
        let id = token();
        let s = Session {
            csrf: token(),
            expires: now + self.ttl,
        };
        if let Ok(mut map) = self.map.lock() {
            map.retain(|_, s| s.expires > now);
            if map.len() >= MAX_SESSIONS {
                // The one closest to expiry makes room.
                if let Some(k) = map
                    .iter()
                    .min_by_key(|(_, s)| s.expires)
                    .map(|(k, _)| k.clone())
                {
                    map.remove(&k);
                }
            }
            map.insert(id.clone(), s.clone());
        }
        (id, s)
    }

    pub fn get(&self, id: &str, now: Instant) -> Option<Session> {
        let map = self.map.lock().ok()?;
        map.get(id).filter(|s| s.expires > now).cloned()
    }

    pub fn end(&self, id: &str) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(id);
        }
    }
}

/// The value of cookie `name` in a Cookie header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// A Set-Cookie value: HttpOnly, SameSite=Strict, Secure over HTTPS.
pub fn set_cookie(name: &str, value: &str, secure: bool, max_age_s: Option<u64>) -> String {
    let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
    if secure {
        c.push_str("; Secure");
    }
    if let Some(a) = max_age_s {
        c.push_str(&format!("; Max-Age={a}"));
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pin_is_stored_hashed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            check_pin(dir.path(), "123456"),
            Err(ClinicError::NoPin(_))
        ));
        assert!(set_pin(dir.path(), "12345").is_err());
        set_pin(dir.path(), "246813").unwrap();
        let stored = std::fs::read_to_string(pin_path(dir.path())).unwrap();
        assert!(stored.starts_with("$argon2id$") && !stored.contains("246813"));
        assert!(check_pin(dir.path(), "246813").unwrap());
        assert!(!check_pin(dir.path(), "246814").unwrap());
    }

    #[test]
    fn a_source_gets_five_tries_a_minute() {
        let t = Throttle::default();
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        let other: IpAddr = "10.0.0.8".parse().unwrap();
        let now = Instant::now();
        for _ in 0..MAX_TRIES {
            assert_eq!(t.attempt(ip, now), Ok(()));
        }
        assert_eq!(
            t.attempt(ip, now + Duration::from_secs(30)),
            Err(Refused::Source)
        );
        assert_eq!(t.attempt(other, now), Ok(()));
        assert_eq!(t.attempt(ip, now + WINDOW + Duration::from_secs(1)), Ok(()));
        t.clear(ip);
        assert_eq!(t.attempt(ip, now + WINDOW + Duration::from_secs(1)), Ok(()));
    }

    #[test]
    fn many_sources_together_get_twenty_tries_a_minute_then_nobody_may_try() {
        let t = Throttle::default();
        let now = Instant::now();
        let ip = |i: usize| -> IpAddr { format!("10.0.{}.{}", i / 200, i % 200).parse().unwrap() };
        for i in 0..MAX_TRIES_ALL {
            assert_eq!(t.attempt(ip(i), now), Ok(()), "try {i}");
        }
        // A fresh address, and one with tries left, are refused too — even a
        // successful login elsewhere does not reopen the window.
        assert_eq!(t.attempt(ip(1000), now), Err(Refused::Everyone));
        t.clear(ip(0));
        assert_eq!(
            t.attempt(ip(0), now + Duration::from_secs(59)),
            Err(Refused::Everyone)
        );
        // Once the window has passed, tries are counted afresh.
        let later = now + WINDOW;
        for i in 0..MAX_TRIES_ALL {
            assert_eq!(t.attempt(ip(2000 + i), later), Ok(()), "try {i}");
        }
        assert_eq!(t.attempt(ip(5000), later), Err(Refused::Everyone));
    }

    #[test]
    fn ipv6_sources_are_counted_per_64() {
        let t = Throttle::default();
        let now = Instant::now();
        for i in 0..MAX_TRIES {
            let a: IpAddr = format!("2001:db8:1:2::{:x}", i + 1).parse().unwrap();
            assert_eq!(t.attempt(a, now), Ok(()));
        }
        // Another address of the same /64 is the same source.
        let same: IpAddr = "2001:db8:1:2:dead:beef:0:1".parse().unwrap();
        assert_eq!(t.attempt(same, now), Err(Refused::Source));
        let next: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(t.attempt(next, now), Ok(()));
        // An IPv4 address mapped into IPv6 is that IPv4 address.
        let mapped: IpAddr = "::ffff:10.1.1.1".parse().unwrap();
        let v4: IpAddr = "10.1.1.1".parse().unwrap();
        assert_eq!(source_key(mapped), v4);
        assert_eq!(source_key(v4), v4);
        t.clear(same);
        assert_eq!(t.attempt(same, now), Ok(()));
    }

    #[test]
    fn a_stale_temporary_file_does_not_widen_the_pins_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // What an earlier writer (or an interrupted one) left beside the PIN file.
        let stale = dir.path().join("clinic-page.tmp");
        std::fs::write(&stale, b"stale").unwrap();
        std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o644)).unwrap();
        set_pin(dir.path(), "246813").unwrap();
        let mode = std::fs::metadata(pin_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read(&stale).unwrap(), b"stale");
        assert!(check_pin(dir.path(), "246813").unwrap());
    }

    #[test]
    fn concurrent_writes_of_the_pin_key_and_certificate_keep_their_own_contents() {
        let dir = tempfile::tempdir().unwrap();
        let names = ["clinic-page.pin", "clinic-page.key", "clinic-page.crt"];
        std::thread::scope(|s| {
            for name in names {
                let path = dir.path().join(name);
                s.spawn(move || {
                    for i in 0..200 {
                        let body = format!("{name} {i}");
                        write_private(&path, body.as_bytes()).unwrap();
                        let read = std::fs::read_to_string(&path).unwrap();
                        assert!(read.starts_with(name), "{name} holds {read}");
                    }
                });
            }
        });
        for name in names {
            let read = std::fs::read_to_string(dir.path().join(name)).unwrap();
            assert_eq!(read, format!("{name} 199"));
        }
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), names.len());
    }

    #[test]
    fn sessions_expire_and_end() {
        let s = Sessions::new(Duration::from_secs(60));
        let now = Instant::now();
        let (id, sess) = s.create(now);
        assert_eq!(s.get(&id, now).unwrap().csrf, sess.csrf);
        assert!(s.get(&id, now + Duration::from_secs(61)).is_none());
        s.end(&id);
        assert!(s.get(&id, now).is_none());
        assert!(s.get("nope", now).is_none());
    }

    #[test]
    fn cookies_are_parsed_and_set_strict() {
        assert_eq!(
            cookie("a=1; pleura_clinic=xyz; b=2", SESSION_COOKIE),
            Some("xyz")
        );
        assert_eq!(cookie("pleura_clinicx=1", SESSION_COOKIE), None);
        let c = set_cookie(SESSION_COOKIE, "v", true, None);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Secure"));
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
