//! HTML building blocks: escaping (every value that reaches a page goes through `esc`),
//! dates, and the page frame with its banner. No external resources: the one
//! stylesheet is served by the page itself.

use std::fmt::Write;

pub const CSS: &str = "\
body{font-family:system-ui,sans-serif;margin:0;color:#1b1b1b;background:#fafafa}\
header{background:#12395b;color:#fff;padding:.6em 1em;display:flex;justify-content:space-between;align-items:center}\
header h1{font-size:1.2em;margin:0}header form{margin:0}\
.banner{background:#fff3cd;border-bottom:1px solid #e0c46c;padding:.5em 1em;font-weight:600}\
main{padding:1em;max-width:70em}\
nav.days a{margin-right:.6em}nav.days a[aria-current]{font-weight:700}\
section.patient{background:#fff;border:1px solid #ddd;border-radius:4px;margin:1em 0;padding:.5em 1em}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.3em .5em;border-bottom:1px solid #eee;vertical-align:top}\
.flagged{color:#a00;font-weight:600}.sync-state{white-space:nowrap}\
.verdict{background:#eef6ee;border-left:4px solid #3a7d3a;padding:.4em .8em;margin:.5em 0}\
.override{color:#a00;font-weight:700}.not-in-verdict{color:#8a5a00;font-size:.9em}.muted{color:#666}.error{color:#a00}\
form.login{background:#fff;border:1px solid #ddd;padding:1em;max-width:20em}\
form.vitals{background:#fff;border:1px solid #ddd;padding:1em;max-width:40em}form.vitals p>label{display:inline-block;min-width:10em}\
.range{color:#666}fieldset{border:1px solid #ddd;margin:.5em 0}\
input,button{font-size:1em;padding:.3em}\n";

pub const BANNER: &str = "Decision support only \u{2014} not a diagnosis";

pub use pleura_shared::html::esc;

/// A page: the banner, the header (with a logout button when `csrf` is given), `body`.
pub fn frame(title: &str, csrf: Option<&str>, body: &str) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{t}</title><link rel=\"stylesheet\" href=\"/style.css\"></head><body>\
         <div class=\"banner\" role=\"note\" id=\"banner\">{BANNER}</div>\
         <header><h1>Pleura \u{2014} {t}</h1>",
        t = esc(title)
    );
    if let Some(token) = csrf {
        let _ = write!(
            h,
            "<form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\" id=\"logout\">Log out</button></form>",
            esc(token)
        );
    }
    let _ = write!(h, "</header><main>{body}</main></body></html>");
    h
}

pub use pleura_shared::calendar::{civil, date};

/// `YYYY-MM-DD` → days since the epoch.
pub fn parse_date(s: &str) -> Option<u32> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y: i64 = s[0..4].parse().ok()?;
    let m: i64 = s[5..7].parse().ok()?;
    let d: i64 = s[8..10].parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let day = u32::try_from(days).ok()?;
    // 31 February and the like do not round-trip.
    (date(day) == s).then_some(day)
}

/// `HH:MM` (UTC) of a time in ms since the epoch.
pub fn time_of_day(ms: u64) -> String {
    let s = (ms / 1000) % 86_400;
    format!("{:02}:{:02}", s / 3600, (s / 60) % 60)
}

/// `YYYY-MM-DD HH:MM` (UTC).
pub fn date_time(ms: u64) -> String {
    format!("{} {}", date((ms / 86_400_000) as u32), time_of_day(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }

    #[test]
    fn dates_round_trip() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(19_723), "2024-01-01");
        assert_eq!(parse_date("2024-02-29"), Some(19_782));
        for d in [0u32, 59, 60, 10_957, 19_782, 20_423, 40_000] {
            assert_eq!(parse_date(&date(d)), Some(d));
        }
        assert_eq!(parse_date("2023-02-29"), None);
        assert_eq!(parse_date("2024-1-01"), None);
        assert_eq!(parse_date("<script>"), None);
        assert_eq!(time_of_day(3_723_000), "01:02");
    }
}
