//! Who is calling, and the audit lines every access leaves: resolving a token, logging
//! in (throttled per account and per source before any hashing), and writing the entry
//! for an allowed or refused access before anything is returned.

use std::time::Instant;

use crate::auth::{AuthError, Caller};
use crate::error::HubError;
use crate::metrics::Metrics;
use crate::ratelimit::Attempt;

use super::policy::Action;
use super::CaseService;

/// A caller whose token checked out, and where they called from (an IP address, as the
/// audit log records it).
#[derive(Debug, Clone, PartialEq)]
pub struct Who {
    pub caller: Caller,
    pub source: String,
}

/// A successful login.
#[derive(Debug, Clone)]
pub struct Session {
    pub token: String,
    pub expires_at_ms: u64,
    pub caller: Caller,
}

impl CaseService {
    /// The caller behind `token` (None: the request carried none). A refusal is audited
    /// (without the token), with the source and the reason, folded per source under a
    /// flood (see `denials`).
    pub async fn caller(
        &self,
        token: Option<&str>,
        source: &str,
        action: Action,
    ) -> Result<Who, HubError> {
        let res = match token {
            Some(t) => self.auth.verify(t),
            None => Err(AuthError::NoToken),
        };
        match res {
            Ok(caller) => Ok(Who {
                caller,
                source: source.to_string(),
            }),
            Err(e @ AuthError::Accounts { .. }) => Err(e.into()),
            Err(e) => {
                let user = match &e {
                    AuthError::Stale(u) => u.chars().take(64).collect(),
                    _ => "-".to_string(),
                };
                self.deny_call(source, &user, action, &e.to_string()).await;
                Err(HubError::Unauthenticated(e.to_string()))
            }
        }
    }

    /// Checks a password and hands out a token; every attempt is audited.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        source: &str,
    ) -> Result<Session, HubError> {
        let name: String = username.chars().take(64).collect();
        // Throttled before argon2: a guesser costs the hub no hashing once locked out.
        if let Err(t) = self.limiter.begin(&name, source, Instant::now()) {
            Metrics::inc(&self.metrics.logins_throttled, 1);
            self.deny_call(source, &name, Action::Login, t.reason())
                .await;
            return Err(HubError::Exhausted(format!(
                "{}: try again in {} s",
                t.reason(),
                t.retry_after().as_secs().max(1)
            )));
        }
        let auth = self.auth.clone();
        let (u, p) = (username.to_string(), password.to_string());
        let res = tokio::task::spawn_blocking(move || auth.login(&u, &p)).await;
        let attempt = match &res {
            Ok(Ok(_)) => Attempt::Succeeded,
            Ok(Err(AuthError::BadCredentials)) => Attempt::Failed,
            _ => Attempt::Aborted,
        };
        self.limiter.finish(&name, source, attempt, Instant::now());
        match res? {
            Ok((token, expires_at_ms, caller)) => {
                let who = Who {
                    caller,
                    source: source.to_string(),
                };
                self.record(&who, Action::Login, "", "allowed").await?;
                Ok(Session {
                    token,
                    expires_at_ms,
                    caller: who.caller,
                })
            }
            Err(e) => {
                // A wrong password is a refused call like any other: folded per source,
                // so spraying names cannot make a line each.
                self.deny_call(source, &name, Action::Login, &e.to_string())
                    .await;
                Err(HubError::Unauthenticated(e.to_string()))
            }
        }
    }

    /// Records a call refused for its identity, off the async workers (the write fsyncs).
    async fn deny_call(&self, source: &str, user: &str, action: Action, reason: &str) {
        let a = self.audit.clone();
        let (source, user, reason) = (source.to_string(), user.to_string(), reason.to_string());
        let _ = tokio::task::spawn_blocking(move || {
            a.deny_call(&source, &user, action.as_str(), &reason)
        })
        .await;
    }

    /// Appends one entry off the async workers (the append fsyncs the log and the
    /// checkpoint); an access whose entry could not be written is refused.
    pub(super) async fn record(
        &self,
        who: &Who,
        action: Action,
        target: &str,
        outcome: &str,
    ) -> Result<(), HubError> {
        let a = self.audit.clone();
        let c = &who.caller;
        let (user, role, source) = (c.username.clone(), c.role.as_str(), who.source.clone());
        let (target, outcome) = (target.to_string(), outcome.to_string());
        tokio::task::spawn_blocking(move || {
            a.append(&user, role, action.as_str(), &target, &outcome, &source, 1)
        })
        .await?
        .map_err(|e| {
            tracing::error!(error = %e, "audit log write failed; refusing the access");
            HubError::Unavailable("audit log unavailable".into())
        })
    }

    /// Audits a refused access and returns the error to answer with.
    pub(super) async fn deny(
        &self,
        who: &Who,
        action: Action,
        target: &str,
        why: &str,
    ) -> HubError {
        match self
            .record(who, action, target, &format!("denied: {why}"))
            .await
        {
            Ok(()) => HubError::Denied(why.to_string()),
            Err(e) => e,
        }
    }
}
