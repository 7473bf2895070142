//! The ministry's part of the demo: the ministry viewer signs in to the hub's web
//! application, reads the dashboard, downloads the FHIR MeasureReports and the CSV, and
//! sends the week's data values to DHIS2 — here a local DHIS2-shaped endpoint
//! ([`Dhis2Stand`]) that checks the payload's shape and answers with an import summary
//! as DHIS2 2.40 does. The exports are kept in `demo-output/`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use hub_server::ministry::export::dhis2::Dhis2Config;
use pleura_runtime::web_client::{Answer, Client};
use serde_json::{json, Value};

use crate::review::sign_in;

/// The stand-in's API token (the hub reads it from a file, as from a real PAT).
const TOKEN: &str = "d2pat_demo0000000000000000000000000000";

/// A local stand-in for a DHIS2 server's `POST /api/dataValueSets`: checks each value's
/// shape and the token, keeps the values by (data element, period, org unit, COC) so a
/// re-sent period updates rather than adds, and answers with DHIS2's import summary.
#[derive(Clone, Default)]
pub struct Dhis2Stand {
    held: Arc<Mutex<BTreeMap<ValueKey, String>>>,
}

/// (data element, period, org unit, category option combo).
type ValueKey = (String, String, String, String);

async fn data_value_sets(
    State(s): State<Dhis2Stand>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    let (status, answer) = import(&s, &headers, &body);
    (
        status,
        [("content-type", "application/json")],
        answer.to_string(),
    )
}

fn import(s: &Dhis2Stand, headers: &HeaderMap, body: &[u8]) -> (StatusCode, Value) {
    let Ok(set) = serde_json::from_slice::<Value>(body) else {
        return (
            StatusCode::BAD_REQUEST,
            json!({"httpStatus": "Bad Request", "httpStatusCode": 400, "status": "ERROR",
                   "message": "the body is not JSON"}),
        );
    };
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("ApiToken {TOKEN}"))
    {
        return (
            StatusCode::UNAUTHORIZED,
            json!({"httpStatus": "Unauthorized", "httpStatusCode": 401, "status": "ERROR"}),
        );
    }
    let (mut imported, mut updated, mut deleted, mut conflicts) = (0, 0, 0, Vec::new());
    let mut held = s.held.lock().expect("stand lock");
    for v in set["dataValues"].as_array().into_iter().flatten() {
        let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        let key = (
            field("dataElement"),
            field("period"),
            field("orgUnit"),
            field("categoryOptionCombo"),
        );
        if key.0.len() != 11 || key.2.len() != 11 || key.1.is_empty() {
            conflicts.push(json!({"object": key.0, "value": "Data value is missing a data element, period or org unit"}));
            continue;
        }
        match field("value").as_str() {
            "" => deleted += u64::from(held.remove(&key).is_some()),
            value => match held.insert(key, value.to_string()) {
                Some(_) => updated += 1,
                None => imported += 1,
            },
        }
    }
    let status = if conflicts.is_empty() {
        "SUCCESS"
    } else {
        "WARNING"
    };
    let ignored = conflicts.len();
    let code = if conflicts.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::CONFLICT
    };
    (
        code,
        json!({
            "httpStatus": if conflicts.is_empty() { "OK" } else { "Conflict" },
            "httpStatusCode": code.as_u16(),
            "status": if conflicts.is_empty() { "OK" } else { "WARNING" },
            "message": "Import complete",
            "response": {
                "responseType": "ImportSummary",
                "status": status,
                "importOptions": {"importStrategy": "CREATE_AND_UPDATE"},
                "description": "Import process completed successfully",
                "importCount": {"imported": imported, "updated": updated, "ignored": ignored, "deleted": deleted},
                "conflicts": conflicts,
                "dataSetComplete": "false"
            }
        }),
    )
}

impl Dhis2Stand {
    /// Serves on a loopback port; returns its base URL.
    pub async fn start(self) -> Result<String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/api/dataValueSets", post(data_value_sets))
            .with_state(self);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(format!("http://{addr}"))
    }

    /// The hub's `[ministry.dhis2]` for the demo's clinics.
    pub fn config(url: &str, dir: &Path) -> Result<Dhis2Config> {
        let token = dir.join("dhis2.token");
        std::fs::write(&token, TOKEN)?;
        let cfg: Dhis2Config = serde_json::from_value(json!({
            "url": url,
            "token_file": token,
            "org_units": {"clinic-north": "NrthClinic1", "clinic-south": "SthClinic01"},
            "data_elements": {
                "examinations": "LusExams001", "flagged": "LusFlagged1",
                "covid_suspected": "LusCovid001", "severity_2_plus": "LusSevere01"
            },
        }))?;
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Where the demo leaves the ministry's exports (kept after it ends).
pub fn output_dir() -> PathBuf {
    std::env::var_os("PLEURA_DEMO_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("demo-output"))
}

fn ok(a: Answer, what: &str) -> Result<Answer> {
    if a.status != 200 {
        bail!(
            "{what}: HTTP {}: {}",
            a.status,
            a.text().chars().take(300).collect::<String>()
        );
    }
    Ok(a)
}

fn between<'a>(page: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = page.find(start)? + start.len();
    Some(&page[from..from + page[from..].find(end)?])
}

/// The ministry's visit: dashboard, exports, the DHIS2 push (twice: the second replaces).
pub async fn visit(addr: SocketAddr, ca: &Path, user: &str, password: &str) -> Result<()> {
    let web: Client = sign_in(addr, ca, user, password).await?;
    let page = ok(web.get("/ministry").await?, "the dashboard")?.text();
    let scans =
        between(&page, "id=\"curve-examinations-regions\"", "</table>").context("scans table")?;
    let total = between(scans, "<tr class=\"total\"><th>Total</th>", "</tr>").unwrap_or_default();
    let grand = total
        .rsplit("<td class=\"n")
        .next()
        .and_then(|c| between(c, ">", "</td>"))
        .map(|v| if v == "s" { "suppressed" } else { v })
        .unwrap_or("?");
    let suppressed = scans.matches("n suppressed").count();
    println!(
        "   the dashboard (https://{addr}/ministry): epidemic curve, review shares, severity,\n   \
         completeness and alerts. Patients examined in 12 weeks, all regions: {grand}; {suppressed}\n   \
         entries of that table are suppressed (counts of people under 5 never reach a ministry)."
    );
    let out = output_dir();
    std::fs::create_dir_all(&out)?;
    for (path, file) in [
        ("/ministry/fhir.json", "ministry-fhir.json"),
        ("/ministry/export.csv", "ministry-tables.csv"),
        ("/ministry/dhis2.json", "ministry-dhis2.json"),
    ] {
        let a = ok(web.get(path).await?, path)?;
        std::fs::write(out.join(file), &a.body)?;
    }
    let fhir: Value = serde_json::from_slice(&std::fs::read(out.join("ministry-fhir.json"))?)?;
    println!(
        "   exports in {}: a FHIR R4 Bundle of {} MeasureReport(s), the CSV, and the DHIS2\n   \
         dataValueSet;",
        out.display(),
        fhir["entry"].as_array().map_or(0, Vec::len)
    );
    let csrf = between(&page, "name=\"csrf\" value=\"", "\"")
        .context("csrf")?
        .to_string();
    for round in [
        "sent",
        "sent again (the same period: values updated, not added)",
    ] {
        let a = web.post("/ministry/dhis2/push", &[("csrf", &csrf)]).await?;
        let text = a.text();
        let status = between(&text, "id=\"dhis2-status\">", "</dd>").unwrap_or("?");
        let count = |name: &str| {
            between(&text, &format!("<dt>{name}</dt>"), "</dd>")
                .and_then(|d| d.rsplit('>').next())
                .unwrap_or("?")
                .to_string()
        };
        println!(
            "   DHIS2 push {round}: {status}; imported {}, updated {}, ignored {}, deleted {}",
            count("Imported"),
            count("Updated"),
            count("Ignored"),
            count("Deleted")
        );
        if a.status != 200 {
            bail!(
                "the DHIS2 push answered {}: {}",
                a.status,
                text.chars().take(400).collect::<String>()
            );
        }
    }
    Ok(())
}
