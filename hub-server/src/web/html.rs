//! Building pages: every value that is not a literal of this module goes through `esc`
//! (text and attribute values alike), and the one layout all pages share.

use std::fmt::Write;

pub use pleura_shared::html::esc;

/// The page around `body`: title, the user bar when logged in, a flash message.
pub fn page(title: &str, user: Option<(&str, &str, &str)>, body: &str) -> String {
    let mut s = String::with_capacity(body.len() + 1024);
    let _ = write!(
        s,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{} · Pleura</title><link rel=\"stylesheet\" href=\"/static/app.css\">\
         <script src=\"/static/app.js\" defer></script></head><body>\
         <header><a href=\"/\" class=\"brand\">Pleura</a>",
        esc(title)
    );
    if let Some((name, role, csrf)) = user {
        let _ = write!(
            s,
            "<span id=\"user\">{} ({})</span><form method=\"post\" action=\"/logout\" class=\"inline\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button id=\"logout\">Log out</button></form>",
            esc(name),
            esc(role),
            esc(csrf)
        );
    }
    s.push_str("</header><main>");
    s.push_str(body);
    s.push_str("</main></body></html>");
    s
}

/// "1 h 05 min", "12 min", "-35 min" (overdue).
pub fn duration_ms(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let min = ms.unsigned_abs() / 60_000;
    if min >= 60 {
        format!("{sign}{} h {:02} min", min / 60, min % 60)
    } else {
        format!("{sign}{min} min")
    }
}

/// Seconds as "3 min", "2.5 h".
pub fn seconds(s: u64) -> String {
    if s < 3600 {
        format!("{} min", s.div_ceil(60))
    } else {
        format!("{:.1} h", s as f64 / 3600.0)
    }
}

/// A UTC day number as YYYY-MM-DD.
pub fn day(d: u32) -> String {
    let date = time::Date::from_julian_day(2_440_588 + d as i32);
    match date {
        Ok(d) => format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day()),
        Err(_) => d.to_string(),
    }
}

/// Milliseconds since the epoch as "YYYY-MM-DD HH:MM UTC".
pub fn clock_utc(ms: u64) -> String {
    let min = ms / 60_000;
    let d = u32::try_from(ms / 86_400_000).unwrap_or(u32::MAX);
    format!("{} {:02}:{:02} UTC", day(d), (min / 60) % 24, min % 60)
}

/// The short form of a pseudonym shown to people: its first 4 bytes in hex.
pub fn short_pseudonym(key: &[u8; 16]) -> String {
    hex::encode(&key[..4])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_formats() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(duration_ms(-35 * 60_000), "-35 min");
        assert_eq!(duration_ms(65 * 60_000), "1 h 05 min");
        assert_eq!(day(0), "1970-01-01");
        assert_eq!(day(20_000), "2024-10-04");
        assert_eq!(clock_utc(86_400_000 + 61 * 60_000), "1970-01-02 01:01 UTC");
    }
}
