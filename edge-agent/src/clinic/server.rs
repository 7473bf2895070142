//! The page's routes: thin handlers over `auth`, `view` and `pages`. Every response
//! carries the same strict headers (CSP `default-src 'self'`, no caching, no framing).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use pleura_shared::holdings::day_of_ms;

use tokio::sync::Semaphore;

use super::auth::{self, Refused, Sessions, Throttle, LOGIN_COOKIE, SESSION_COOKIE};
use super::html::{self, CSS};
use super::pages::{self, DayPage};
use super::view::Sources;
use super::ClinicError;

/// Days the day selector offers (today and the six before).
pub const DAYS: u32 = 7;
const CSP: &str = "default-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub struct Page {
    pub data_dir: PathBuf,
    pub sources: Sources,
    pub sessions: Sessions,
    pub throttle: Throttle,
    /// Permits for PIN checks (`auth::PIN_CHECKS`), shared by all requests.
    pub pin_checks: Arc<Semaphore>,
    /// Served over HTTPS (cookies are marked Secure).
    pub secure: bool,
}

pub fn router(page: Arc<Page>) -> Router {
    Router::new()
        .route("/", get(|| async { redirect("/scans", None) }))
        .route("/style.css", get(style))
        .route("/login", get(login_form).post(login))
        .route("/logout", axum::routing::post(logout))
        .route("/scans", get(scans))
        .route(
            "/vitals",
            get(super::vitals_form::form).post(super::vitals_form::save),
        )
        .fallback(|| async { respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()) })
        .with_state(page)
}

fn with_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub(super) fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response {
    with_headers((status, [(header::CONTENT_TYPE, content_type)], body).into_response())
}

pub(super) fn html(status: StatusCode, body: String) -> Response {
    respond(status, "text/html; charset=utf-8", body)
}

/// A 303 to `to`, a path this module built (`/scans` if it is not a valid header value).
pub(super) fn redirect(to: &str, cookie: Option<String>) -> Response {
    let location = HeaderValue::from_str(to).unwrap_or_else(|_| HeaderValue::from_static("/scans"));
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response();
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().append(header::SET_COOKIE, c);
    }
    with_headers(r)
}

fn add_cookie(mut r: Response, cookie: String) -> Response {
    if let Ok(c) = HeaderValue::from_str(&cookie) {
        r.headers_mut().append(header::SET_COOKIE, c);
    }
    r
}

fn cookie_of<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| auth::cookie(h, name))
}

/// `application/x-www-form-urlencoded` → the value of `name`.
pub fn form_value(body: &str, name: &str) -> Option<String> {
    body.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (decode(k)? == name).then(|| decode(v)).flatten()
    })
}

fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

async fn style() -> Response {
    respond(StatusCode::OK, "text/css; charset=utf-8", CSS.into())
}

pub(super) fn session(page: &Page, headers: &HeaderMap) -> Option<(String, auth::Session)> {
    let id = cookie_of(headers, SESSION_COOKIE)?;
    page.sessions
        .get(id, Instant::now())
        .map(|s| (id.to_string(), s))
}

/// A form post's session: the login page without one, 403 unless the form carries the
/// session's CSRF token.
pub(super) fn posting_session(
    page: &Page,
    headers: &HeaderMap,
    body: &str,
) -> Result<(String, auth::Session), Box<Response>> {
    let Some((id, s)) = session(page, headers) else {
        return Err(Box::new(redirect("/login", None)));
    };
    let sent = form_value(body, "csrf").unwrap_or_default();
    if !auth::same(&sent, &s.csrf) {
        return Err(Box::new(respond(
            StatusCode::FORBIDDEN,
            "text/plain; charset=utf-8",
            "missing or wrong CSRF token\n".into(),
        )));
    }
    Ok((id, s))
}

/// A fresh login form, with its token in a cookie (double submit: another site can
/// neither read the cookie nor, with SameSite=Strict, send it).
fn login_page(page: &Page, status: StatusCode, error: Option<&str>) -> Response {
    let token = auth::token();
    let r = html(status, pages::login(&token, error));
    add_cookie(
        r,
        auth::set_cookie(LOGIN_COOKIE, &token, page.secure, Some(600)),
    )
}

async fn login_form(State(page): State<Arc<Page>>, headers: HeaderMap) -> Response {
    if session(&page, &headers).is_some() {
        return redirect("/scans", None);
    }
    login_page(&page, StatusCode::OK, None)
}

async fn login(
    State(page): State<Arc<Page>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let sent = form_value(&body, "csrf").unwrap_or_default();
    let expected = cookie_of(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !auth::same(&sent, expected) {
        return login_page(
            &page,
            StatusCode::FORBIDDEN,
            Some("The form expired; try again."),
        );
    }
    let source = peer.ip();
    // Counted before the (slow) check: parallel guesses cannot slip past the limit.
    if let Err(why) = page.throttle.attempt(source, Instant::now()) {
        tracing::warn!(%source, ?why, "clinic page: too many login attempts");
        let text = match why {
            Refused::Source => "Too many login attempts from this address; wait a minute.",
            Refused::Everyone => {
                "Too many login attempts on this device from all addresses: logins are \
                 paused for everyone (the right PIN too) for up to a minute."
            }
        };
        return login_page(&page, StatusCode::TOO_MANY_REQUESTS, Some(text));
    }
    let pin = form_value(&body, "pin").unwrap_or_default();
    let dir = page.data_dir.clone();
    let checked = limited(&page.pin_checks, move || auth::check_pin(&dir, &pin)).await;
    match checked {
        Ok(Ok(true)) => {
            page.throttle.clear(source);
            let (id, _) = page.sessions.create(Instant::now());
            tracing::info!(%source, "clinic page: logged in");
            let r = redirect(
                "/scans",
                Some(auth::set_cookie(SESSION_COOKIE, &id, page.secure, None)),
            );
            add_cookie(r, auth::set_cookie(LOGIN_COOKIE, "", page.secure, Some(0)))
        }
        Ok(Ok(false)) => {
            tracing::warn!(%source, "clinic page: wrong PIN");
            login_page(&page, StatusCode::UNAUTHORIZED, Some("Wrong PIN."))
        }
        Ok(Err(e @ ClinicError::NoPin(_))) => {
            tracing::error!(error = %e, "clinic page: no PIN set");
            login_page(
                &page,
                StatusCode::SERVICE_UNAVAILABLE,
                Some("No PIN is set on this device: run `edge-agent clinic-pin set`."),
            )
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "clinic page: checking the PIN");
            login_page(
                &page,
                StatusCode::INTERNAL_SERVER_ERROR,
                Some("The PIN could not be checked."),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "clinic page: PIN check task");
            login_page(
                &page,
                StatusCode::INTERNAL_SERVER_ERROR,
                Some("The PIN could not be checked."),
            )
        }
    }
}

/// Runs `check` (argon2: ~19 MiB and a core) on a blocking thread once one of `gate`'s
/// permits is free. The permit goes with the thread: a client that hangs up while its
/// check runs does not free a slot the check still uses.
pub async fn limited<T: Send + 'static>(
    gate: &Arc<Semaphore>,
    check: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let permit = gate
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        check()
    })
    .await
    .map_err(|e| e.to_string())
}

async fn logout(State(page): State<Arc<Page>>, headers: HeaderMap, body: String) -> Response {
    let (id, _) = match posting_session(&page, &headers, &body) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    page.sessions.end(&id);
    redirect(
        "/login",
        Some(auth::set_cookie(SESSION_COOKIE, "", page.secure, Some(0))),
    )
}

async fn scans(State(page): State<Arc<Page>>, headers: HeaderMap, uri: Uri) -> Response {
    let Some((_, s)) = session(&page, &headers) else {
        return redirect("/login", None);
    };
    let today = day_of_ms(pleura_shared::now_ms());
    let days: Vec<u32> = (0..DAYS).filter_map(|i| today.checked_sub(i)).collect();
    // Any day the scan log keeps can be opened (a recent verdict links to its scans'
    // day); the menu offers the last week.
    let kept = today.saturating_sub(crate::scanlog::KEEP_DAYS)..=today;
    let asked = uri
        .query()
        .and_then(|q| form_value(q, "day"))
        .map(|d| html::parse_date(&d).filter(|d| kept.contains(d)));
    let day = match asked {
        None => today,
        Some(Some(d)) => d,
        Some(None) => {
            return respond(
                StatusCode::BAD_REQUEST,
                "text/plain; charset=utf-8",
                format!(
                    "day must be one of the last {} days, as YYYY-MM-DD\n",
                    crate::scanlog::KEEP_DAYS
                ),
            )
        }
    };
    let sources = page.sources.clone();
    let read = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::task::spawn_blocking(move || {
            let since = pleura_shared::now_ms().saturating_sub(u64::from(DAYS) * 86_400_000);
            Ok::<_, String>((sources.day(day)?, sources.recent_verdicts(since)?))
        }),
    )
    .await;
    let (groups, recent) = match read {
        Ok(Ok(Ok(g))) => g,
        other => {
            let why = match other {
                Ok(Ok(Err(e))) => e,
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".into(),
            };
            tracing::error!(error = %why, "clinic page: reading the day's scans");
            return respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain; charset=utf-8",
                "the scans could not be read; see the agent's log\n".into(),
            );
        }
    };
    html(
        StatusCode::OK,
        pages::scans(&DayPage {
            day,
            days: &days,
            groups: &groups,
            recent: &recent,
            csrf: &s.csrf,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_are_decoded() {
        let b = "csrf=ab%2Bc&pin=12+34%21&x";
        assert_eq!(form_value(b, "csrf").as_deref(), Some("ab+c"));
        assert_eq!(form_value(b, "pin").as_deref(), Some("12 34!"));
        assert_eq!(form_value(b, "x").as_deref(), Some(""));
        assert_eq!(form_value(b, "y"), None);
        assert_eq!(form_value("pin=%zz", "pin"), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn pin_checks_run_at_most_pin_checks_at_a_time() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let gate = Arc::new(Semaphore::new(auth::PIN_CHECKS));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..12 {
            let (gate, running, most) = (gate.clone(), running.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                let check = limited(&gate, move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(30));
                    running.fetch_sub(1, Ordering::SeqCst);
                    i
                });
                if i % 3 == 0 {
                    // A client that hangs up: its check still holds its permit.
                    let _ = tokio::time::timeout(Duration::from_millis(5), check).await;
                    None
                } else {
                    Some(check.await.unwrap())
                }
            }));
        }
        let mut done = 0;
        for t in tasks {
            done += usize::from(t.await.unwrap().is_some());
        }
        assert_eq!(done, 8);
        // The abandoned checks finish on their own threads, still counted.
        while gate.available_permits() < auth::PIN_CHECKS {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(most.load(Ordering::SeqCst) <= auth::PIN_CHECKS, "{most:?}");
        assert!(most.load(Ordering::SeqCst) >= 1);
    }
}
