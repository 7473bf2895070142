//! The specialist's part of the demo, done through the hub's web application exactly as
//! a person's browser would: log in, open the first examination of the worklist once its
//! preview is there, claim it and submit a verdict.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pleura_runtime::web_client::{Answer, Client};

/// A signed-in specialist at the hub's web application.
pub struct Specialist {
    web: Client,
}

/// Signs in to the hub's web application as a person would; the client carries the
/// session cookie.
pub async fn sign_in(addr: SocketAddr, ca: &Path, user: &str, password: &str) -> Result<Client> {
    let tls = pleura_shared::pki::client_config(ca, None)?;
    let mut web = Client::new(addr, Arc::new(tls));
    let form = web.get("/login").await?;
    let nonce = form.cookie("pleura_login").context("login form cookie")?;
    web.set_cookie("pleura_login", &nonce);
    let csrf = form.field("csrf").context("login form token")?;
    let r = web
        .post(
            "/login",
            &[("username", user), ("password", password), ("csrf", &csrf)],
        )
        .await?;
    let session = r
        .cookie("pleura_session")
        .with_context(|| format!("login refused ({}): {}", r.status, r.text()))?;
    web.set_cookie("pleura_session", &session);
    Ok(web)
}

impl Specialist {
    pub async fn login(addr: SocketAddr, ca: &Path, user: &str, password: &str) -> Result<Self> {
        Ok(Self {
            web: sign_in(addr, ca, user, password).await?,
        })
    }

    /// Waits for the top examination of the worklist to show its key frames; returns its
    /// id (hex) and case page.
    pub async fn first_case_with_preview(&self, within: Duration) -> Result<(String, Answer)> {
        let end = Instant::now() + within;
        loop {
            let list = self.web.get("/").await?;
            if let Some(exam) = first_row(&list) {
                let page = self.web.get(&format!("/case/{exam}")).await?;
                if page.status == 200 && page.text().contains("class=\"keyframe") {
                    return Ok((exam, page));
                }
            }
            if Instant::now() > end {
                bail!("no examination with a preview on the worklist after {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Claims the examination and submits a verdict: the model's score for every zone,
    /// the given impression and recommendation, and a comment.
    pub async fn give_verdict(
        &self,
        exam: &str,
        page: &Answer,
        impression: &str,
        recommendation: &str,
        comment: &str,
    ) -> Result<()> {
        let csrf = page.field("csrf").context("case page token")?;
        let claim = self
            .web
            .post(&format!("/claim/{exam}"), &[("csrf", &csrf)])
            .await?;
        if claim.status >= 400 {
            bail!("claim refused ({}): {}", claim.status, claim.text());
        }
        let zones = model_scores(&page.text());
        let mut form: Vec<(&str, &str)> = vec![
            ("csrf", &csrf),
            ("impression", impression),
            ("recommendation", recommendation),
            ("comment", comment),
        ];
        form.extend(zones.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let r = self
            .web
            .post(&format!("/case/{exam}/verdict"), &form)
            .await?;
        let location = r.header("location").unwrap_or_default();
        if r.status != 303 || !location.contains("saved=1") {
            bail!("verdict refused ({}): {}", r.status, r.text());
        }
        Ok(())
    }
}

fn first_row(list: &Answer) -> Option<String> {
    let t = list.text();
    let row = t.split("class=\"case-row").nth(1)?;
    let at = row.find("data-exam=\"")? + 11;
    row.get(at..at + 32).map(str::to_string)
}

/// `zone-<Z>` fields of the verdict form with their preselected (the model's) score.
fn model_scores(page: &str) -> Vec<(String, String)> {
    page.split("<select name=\"")
        .skip(1)
        .filter_map(|s| {
            let name = &s[..s.find('"')?];
            let selected = s.find(" selected")?;
            let value_at = s[..selected].rfind("value=\"")? + 7;
            let value = &s[value_at..value_at + s[value_at..].find('"')?];
            name.starts_with("zone-")
                .then(|| (name.to_string(), value.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forms_model_scores_are_read() {
        let page = "<select name=\"zone-L1\"><option value=\"0\">0</option>\
                    <option value=\"3\" selected>3 (model)</option></select>\
                    <select name=\"zone-R2\"><option value=\"1\" selected>1</option></select>";
        assert_eq!(
            model_scores(page),
            vec![
                ("zone-L1".into(), "3".into()),
                ("zone-R2".into(), "1".into())
            ]
        );
    }
}
