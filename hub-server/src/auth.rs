//! People: accounts with argon2 password hashes, expiring HMAC-signed bearer tokens,
//! and roles with scopes. A specialist sees the flagged cases of their own region; a
//! ministry viewer only aggregates; an operator runs the hub (sync status, every case).
//!
//! Accounts live in a JSON file edited by `hub-server user add` and re-read when it
//! changes, so a removed or changed account loses its tokens at once.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use hmac::{Hmac, Mac};
use pleura_shared::{now_ms, validate_name};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::ca::write_atomic;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Specialist,
    Ministry,
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Specialist => "specialist",
            Role::Ministry => "ministry",
            Role::Operator => "operator",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Account {
    pub username: String,
    pub role: Role,
    /// The specialist's region; empty for other roles.
    #[serde(default)]
    pub region: String,
    /// argon2id PHC string.
    pub password_hash: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct AccountsFile {
    accounts: Vec<Account>,
}

/// Who is calling, once their token checked out.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    pub username: String,
    pub role: Role,
    pub region: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    NoToken,
    #[error("token is malformed or its signature is wrong")]
    BadToken,
    #[error("token expired")]
    Expired,
    #[error("unknown user or wrong password")]
    BadCredentials,
    #[error("account {0} no longer matches its token")]
    Stale(String),
    #[error("accounts file {path}: {reason}")]
    Accounts { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
}

fn accounts_err(path: &Path, e: impl std::fmt::Display) -> AuthError {
    AuthError::Accounts {
        path: path.into(),
        reason: e.to_string(),
    }
}

fn load(path: &Path) -> Result<AccountsFile, AuthError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| accounts_err(path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AccountsFile::default()),
        Err(e) => Err(accounts_err(path, e)),
    }
}

/// Adds or replaces an account (the `hub-server user add` command).
pub fn add_account(
    path: &Path,
    username: &str,
    role: Role,
    region: Option<&str>,
    password: &str,
) -> Result<(), AuthError> {
    validate_name("username", username).map_err(|e| AuthError::Invalid(e.to_string()))?;
    let region = match (role, region) {
        (Role::Specialist, Some(r)) => {
            validate_name("region", r).map_err(|e| AuthError::Invalid(e.to_string()))?;
            r.to_string()
        }
        (Role::Specialist, None) => {
            return Err(AuthError::Invalid("a specialist needs --region".into()))
        }
        (_, Some(_)) => return Err(AuthError::Invalid("only specialists have a region".into())),
        (_, None) => String::new(),
    };
    if password.chars().count() < 12 {
        return Err(AuthError::Invalid(
            "password must be at least 12 characters".into(),
        ));
    }
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| AuthError::Invalid(e.to_string()))?;
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| AuthError::Invalid(e.to_string()))?
        .to_string();
    let mut file = load(path)?;
    file.accounts.retain(|a| a.username != username);
    file.accounts.push(Account {
        username: username.into(),
        role,
        region,
        password_hash: hash,
    });
    let json = serde_json::to_vec_pretty(&file).map_err(|e| accounts_err(path, e))?;
    write_atomic(path, &json, true).map_err(|e| accounts_err(path, e))
}

type HmacSha256 = Hmac<Sha256>;

pub struct Auth {
    accounts_path: PathBuf,
    cache: Mutex<Option<(Option<SystemTime>, Vec<Account>)>>,
    key: [u8; 32],
    pub token_ttl_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    u: String,
    r: Role,
    g: String,
    exp: u64,
}

impl Auth {
    /// `key_file` holds the token-signing secret; it is created (0600) if missing.
    pub fn open(accounts_path: &Path, key_file: &Path, token_ttl_ms: u64) -> anyhow::Result<Self> {
        let key = match std::fs::read(key_file) {
            Ok(k) if k.len() == 32 => k.try_into().expect("32 bytes"),
            Ok(_) => anyhow::bail!("{} is not a 32-byte key", key_file.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let k: [u8; 32] = rand::random();
                write_atomic(key_file, &k, true)?;
                k
            }
            Err(e) => return Err(anyhow::anyhow!("{}: {e}", key_file.display())),
        };
        Ok(Self {
            accounts_path: accounts_path.into(),
            cache: Mutex::new(None),
            key,
            token_ttl_ms,
        })
    }

    fn account(&self, username: &str) -> Result<Option<Account>, AuthError> {
        let mtime = std::fs::metadata(&self.accounts_path)
            .and_then(|m| m.modified())
            .ok();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.as_ref().is_none_or(|(t, _)| *t != mtime) {
            *cache = Some((mtime, load(&self.accounts_path)?.accounts));
        }
        Ok(cache
            .as_ref()
            .and_then(|(_, a)| a.iter().find(|a| a.username == username).cloned()))
    }

    fn mac(&self, payload: &[u8]) -> HmacSha256 {
        let mut m = HmacSha256::new_from_slice(&self.key).expect("any key length");
        m.update(payload);
        m
    }

    /// Checks the password (argon2: slow on purpose; call off the async workers) and
    /// returns a token and its expiry.
    pub fn login(
        &self,
        username: &str,
        password: &str,
    ) -> Result<(String, u64, Caller), AuthError> {
        let acct = self.account(username)?;
        // Hash even for unknown users, so timing does not reveal which names exist.
        let hash = acct
            .as_ref()
            .map(|a| a.password_hash.clone())
            .unwrap_or_else(|| dummy_hash().to_string());
        let parsed = PasswordHash::new(&hash).map_err(|_| AuthError::BadCredentials)?;
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        let acct = match (ok, acct) {
            (true, Some(a)) => a,
            _ => return Err(AuthError::BadCredentials),
        };
        let exp = now_ms() + self.token_ttl_ms;
        let claims = serde_json::to_vec(&Claims {
            u: acct.username.clone(),
            r: acct.role,
            g: acct.region.clone(),
            exp,
        })
        .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let sig = self.mac(&claims).finalize().into_bytes();
        let token = format!("v1.{}.{}", hex::encode(&claims), hex::encode(sig));
        Ok((
            token,
            exp,
            Caller {
                username: acct.username,
                role: acct.role,
                region: acct.region,
            },
        ))
    }

    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let mut parts = token.split('.');
        let (Some("v1"), Some(payload), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::BadToken);
        };
        let payload = hex::decode(payload).map_err(|_| AuthError::BadToken)?;
        let sig = hex::decode(sig).map_err(|_| AuthError::BadToken)?;
        self.mac(&payload)
            .verify_slice(&sig)
            .map_err(|_| AuthError::BadToken)?;
        let c: Claims = serde_json::from_slice(&payload).map_err(|_| AuthError::BadToken)?;
        if c.exp <= now_ms() {
            return Err(AuthError::Expired);
        }
        match self.account(&c.u)? {
            Some(a) if a.role == c.r && a.region == c.g => Ok(Caller {
                username: a.username,
                role: a.role,
                region: a.region,
            }),
            _ => Err(AuthError::Stale(c.u)),
        }
    }
}

/// argon2id of a random password nobody knows: the work done for unknown usernames.
fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| {
        let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).expect("16-byte salt");
        Argon2::default()
            .hash_password(&rand::random::<[u8; 32]>(), &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_the_role_expire_and_die_with_their_account() {
        let dir = tempfile::tempdir().unwrap();
        let accounts = dir.path().join("accounts.json");
        add_account(
            &accounts,
            "ana",
            Role::Specialist,
            Some("north"),
            "correct horse battery",
        )
        .unwrap();
        assert!(add_account(
            &accounts,
            "bob",
            Role::Specialist,
            None,
            "correct horse battery"
        )
        .is_err());
        assert!(add_account(&accounts, "bob", Role::Ministry, None, "short").is_err());
        let auth = Auth::open(&accounts, &dir.path().join("token.key"), 60_000).unwrap();
        assert!(matches!(
            auth.login("ana", "wrong password!!"),
            Err(AuthError::BadCredentials)
        ));
        assert!(matches!(
            auth.login("nobody", "correct horse battery"),
            Err(AuthError::BadCredentials)
        ));
        let (token, _, caller) = auth.login("ana", "correct horse battery").unwrap();
        assert_eq!(caller.region, "north");
        assert_eq!(auth.verify(&token).unwrap(), caller);

        // Tampering with the claims breaks the signature.
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        let claims = String::from_utf8(hex::decode(&parts[1]).unwrap()).unwrap();
        parts[1] = hex::encode(claims.replace("specialist", "operator"));
        assert!(matches!(
            auth.verify(&parts.join(".")),
            Err(AuthError::BadToken)
        ));
        assert!(matches!(auth.verify("garbage"), Err(AuthError::BadToken)));

        // Another hub's key does not verify it.
        let other = Auth::open(&accounts, &dir.path().join("other.key"), 60_000).unwrap();
        assert!(matches!(other.verify(&token), Err(AuthError::BadToken)));

        // Expired.
        let short = Auth::open(&accounts, &dir.path().join("token.key"), 0).unwrap();
        let (t0, _, _) = short.login("ana", "correct horse battery").unwrap();
        assert!(matches!(auth.verify(&t0), Err(AuthError::Expired)));

        // Moving the specialist to another region invalidates the old token.
        std::thread::sleep(std::time::Duration::from_millis(20));
        add_account(
            &accounts,
            "ana",
            Role::Specialist,
            Some("south"),
            "correct horse battery",
        )
        .unwrap();
        assert!(matches!(auth.verify(&token), Err(AuthError::Stale(_))));
    }
}
