//! Who is at the browser: the session cookie (the same token gRPC Login hands out, so the
//! same accounts, expiry and login throttling), the caller's address for the audit log,
//! and the CSRF token every POST must carry.

use std::net::SocketAddr;

use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::serve::IncomingStream;
use axum::Form;
use pleura_shared::now_ms;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::html::{esc, page};
use super::{error_page, html, WebState};
use crate::cases::{Action, Who};
use crate::error::HubError;

pub const SESSION_COOKIE: &str = "pleura_session";
const LOGIN_COOKIE: &str = "pleura_login";

/// The peer address of a connection, for `into_make_service_with_connect_info`.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, crate::tls::TlsListener>> for PeerAddr {
    fn connect_info(s: IncomingStream<'_, crate::tls::TlsListener>) -> Self {
        PeerAddr(*s.remote_addr())
    }
}

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for PeerAddr {
    fn connect_info(s: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        PeerAddr(*s.remote_addr())
    }
}

/// The request's session token (if any) and source address.
pub struct Ctx {
    pub token: Option<String>,
    pub source: String,
    headers: HeaderMap,
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let source = parts
            .extensions
            .get::<ConnectInfo<PeerAddr>>()
            .map_or_else(|| "-".to_string(), |c| c.0 .0.ip().to_string());
        Ok(Self {
            token: cookie(&parts.headers, SESSION_COOKIE),
            source,
            headers: parts.headers.clone(),
        })
    }
}

pub fn cookie(h: &HeaderMap, name: &str) -> Option<String> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty())
}

/// The CSRF token of a session: derived from its (HttpOnly) token, so a page of another
/// site can neither read nor compute it.
pub fn csrf_of(token: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"pleura.v1.csrf\0");
    h.update(token.as_bytes());
    hex::encode(&h.finalize()[..16])
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A logged-in caller.
pub struct Session {
    pub who: Who,
    pub csrf: String,
}

impl Session {
    /// The user bar of the layout.
    pub fn bar(&self) -> Option<(&str, &str, &str)> {
        Some((
            self.who.caller.username.as_str(),
            self.who.caller.role.as_str(),
            self.csrf.as_str(),
        ))
    }
}

impl Ctx {
    /// The caller, or the answer to give (to the login page) if there is none.
    pub async fn session(&self, s: &WebState, action: Action) -> Result<Session, Response> {
        let who = s
            .cases
            .caller(self.token.as_deref(), &self.source, action)
            .await
            .map_err(error_page)?;
        Ok(Session {
            who,
            csrf: csrf_of(self.token.as_deref().unwrap_or_default()),
        })
    }

    /// As `session`, for a POST: its `csrf` field must be the session's.
    pub async fn post_session(
        &self,
        s: &WebState,
        action: Action,
        csrf: &str,
    ) -> Result<Session, Response> {
        let session = self.session(s, action).await?;
        if !same(&session.csrf, csrf) {
            tracing::warn!(user = %session.who.caller.username, "POST without its CSRF token refused");
            return Err(super::html(
                StatusCode::FORBIDDEN,
                page("Refused", None, "<h1>Refused</h1><p id=\"error\">This form has expired or did not come from Pleura. Go back, reload and try again.</p>"),
            ));
        }
        Ok(session)
    }

    fn secure_flag(&self, s: &WebState) -> &'static str {
        if s.secure {
            "; Secure"
        } else {
            ""
        }
    }
}

fn login_page(status: StatusCode, nonce: &str, error: Option<&str>, secure: bool) -> Response {
    let err = error.map_or(String::new(), |e| {
        format!("<p id=\"login-error\" class=\"error\">{}</p>", esc(e))
    });
    let body = format!(
        "<h1>Log in</h1>{err}<form id=\"login-form\" method=\"post\" action=\"/login\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{n}\">\
         <label>User <input name=\"username\" autocomplete=\"username\" required></label>\
         <label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
         <button id=\"login-submit\">Log in</button></form>",
        n = esc(nonce)
    );
    let mut r = html(status, page("Log in", None, &body));
    let c = format!(
        "{LOGIN_COOKIE}={nonce}; Path=/login; HttpOnly; SameSite=Strict; Max-Age=3600{}",
        if secure { "; Secure" } else { "" }
    );
    if let Ok(v) = c.parse() {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

pub async fn login_form(State(s): State<WebState>) -> Response {
    login_page(
        StatusCode::OK,
        &hex::encode(rand::random::<[u8; 16]>()),
        None,
        s.secure,
    )
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
}

pub async fn login(State(s): State<WebState>, ctx: Ctx, Form(f): Form<LoginForm>) -> Response {
    let fresh = hex::encode(rand::random::<[u8; 16]>());
    let expected = cookie(&ctx.headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !same(&expected, &f.csrf) {
        let msg = "The login form expired; please try again.";
        return login_page(StatusCode::FORBIDDEN, &fresh, Some(msg), s.secure);
    }
    match s.cases.login(&f.username, &f.password, &ctx.source).await {
        Ok(session) => {
            let max_age = session.expires_at_ms.saturating_sub(now_ms()) / 1000;
            let c = format!(
                "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
                session.token,
                ctx.secure_flag(&s)
            );
            let mut r = Redirect::to("/").into_response();
            if let Ok(v) = c.parse() {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Err(e) => {
            let (status, msg) = match &e {
                HubError::Exhausted(m) => (StatusCode::TOO_MANY_REQUESTS, m.clone()),
                HubError::Unauthenticated(_) => (
                    StatusCode::UNAUTHORIZED,
                    "Unknown user or wrong password.".to_string(),
                ),
                e => (e.http_status(), e.to_string()),
            };
            login_page(status, &fresh, Some(&msg), s.secure)
        }
    }
}

#[derive(Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    pub csrf: String,
}

pub async fn logout(State(s): State<WebState>, ctx: Ctx, Form(f): Form<CsrfOnly>) -> Response {
    if let Err(r) = ctx.post_session(&s, Action::Login, &f.csrf).await {
        return r;
    }
    let mut r = Redirect::to("/login").into_response();
    let c = format!(
        "{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        ctx.secure_flag(&s)
    );
    if let Ok(v) = c.parse() {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}
