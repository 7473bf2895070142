//! Media URLs: each request authorised and audited by the case service (the item must
//! belong to a result of an examination the caller may see); everything else is 404.
//! Clips honour HTTP Range (206) so the browser can seek.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use pleura_proto::v1::{MediaKind, MediaPreview};
use pleura_shared::ExamId;
use prost::Message;

use super::session::Ctx;
use super::{error_page, not_found, WebState};
use crate::cases::Action;
use crate::media::Sha256;

fn sha_of(s: &str) -> Option<Sha256> {
    hex::decode(s).ok()?.try_into().ok()
}

/// `bytes=a-b` / `bytes=a-` as a half-open range; None for no (or an unusable) header.
/// Suffix ranges (`bytes=-n`) and several ranges are answered with the whole item.
pub fn parse_range(h: &HeaderMap) -> Option<std::ops::Range<u64>> {
    let v = h.get(header::RANGE)?.to_str().ok()?;
    let spec = v.strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let start: u64 = a.trim().parse().ok()?;
    let end = match b.trim() {
        "" => u64::MAX,
        b => b.parse::<u64>().ok()?.checked_add(1)?,
    };
    (end > start).then_some(start..end)
}

pub async fn item(
    State(s): State<WebState>,
    ctx: Ctx,
    Path((exam, sha)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let (Some(id), Some(sha)) = (ExamId::from_hex(&exam), sha_of(&sha)) else {
        return not_found();
    };
    let session = match ctx.session(&s, Action::GetMedia).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let range = parse_range(&headers);
    let m = match s.cases.media(&session.who, id, sha, range.clone()).await {
        Ok(m) => m,
        Err(e) => return error_page(e),
    };
    let content_type = match m.item.kind {
        MediaKind::Clip => "video/mp4",
        _ => "application/octet-stream",
    };
    let total = m.item.total;
    let common = [
        (header::CONTENT_TYPE, content_type.to_string()),
        (header::ACCEPT_RANGES, "bytes".to_string()),
        (header::CACHE_CONTROL, "no-store".to_string()),
    ];
    match range {
        Some(r) if r.start >= total => (
            StatusCode::RANGE_NOT_SATISFIABLE,
            common,
            [(header::CONTENT_RANGE, format!("bytes */{total}"))],
        )
            .into_response(),
        Some(r) => {
            let end = r.start + m.bytes.len() as u64;
            (
                StatusCode::PARTIAL_CONTENT,
                common,
                [(
                    header::CONTENT_RANGE,
                    format!("bytes {}-{}/{total}", r.start, end.saturating_sub(1)),
                )],
                m.bytes,
            )
                .into_response()
        }
        None => (StatusCode::OK, common, m.bytes).into_response(),
    }
}

pub async fn frame(
    State(s): State<WebState>,
    ctx: Ctx,
    Path((exam, sha, i, layer)): Path<(String, String, String, String)>,
) -> Response {
    let (Some(id), Some(sha), Ok(i)) = (ExamId::from_hex(&exam), sha_of(&sha), i.parse::<usize>())
    else {
        return not_found();
    };
    if layer != "image" && layer != "overlay" {
        return not_found();
    }
    let session = match ctx.session(&s, Action::GetMedia).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let m = match s.cases.media(&session.who, id, sha, None).await {
        Ok(m) => m,
        Err(e) => return error_page(e),
    };
    if m.item.kind != MediaKind::Preview {
        return not_found();
    }
    let Some(f) = MediaPreview::decode(m.bytes.as_slice())
        .ok()
        .and_then(|p| p.frames.into_iter().nth(i))
    else {
        return not_found();
    };
    let (ct, bytes) = if layer == "image" {
        ("image/jpeg", f.jpeg)
    } else {
        ("image/png", f.overlay_png)
    };
    (
        [
            (header::CONTENT_TYPE, ct),
            (header::CACHE_CONTROL, "no-store"),
        ],
        bytes,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::RANGE, v.parse().unwrap());
            parse_range(&m)
        };
        assert_eq!(h("bytes=0-99"), Some(0..100));
        assert_eq!(h("bytes=100-"), Some(100..u64::MAX));
        assert_eq!(h("bytes=-5"), None);
        assert_eq!(h("bytes=0-1,5-6"), None);
        assert_eq!(h("items=0-1"), None);
        assert_eq!(parse_range(&HeaderMap::new()), None);
    }
}
