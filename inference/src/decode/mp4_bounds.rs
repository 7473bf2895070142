//! A walk over an MP4/MOV file's box tree before the `mp4` crate reads it.
//!
//! Why: inside a container box the crate loops "read a child header, skip the child's
//! size" until the container's end; a child declaring size 0 (or a 64-bit size of 0)
//! never moves the loop on, so a 118 KB file hangs the decoder forever (found by the
//! `decode_scan` fuzzer, docs/FUZZING.md). The walk descends into every container the
//! crate loops over and refuses a child that is empty, shorter than its own header, or
//! longer than what is left of its parent. The top level keeps the format's leniency:
//! a last box of size 0 runs to the end of the file, and a truncated `mdat` is left for
//! the demuxer to report.

/// Containers nested deeper than this are refused (real files nest about 8 levels).
pub const MAX_DEPTH: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoxError {
    #[error("MP4 box {kind:?} at byte {offset} declares size 0 inside {parent:?}")]
    Empty {
        kind: String,
        parent: String,
        offset: usize,
    },
    #[error("MP4 box {kind:?} at byte {offset} declares {size} bytes, less than its {header}-byte header")]
    ShorterThanHeader {
        kind: String,
        offset: usize,
        size: u64,
        header: u64,
    },
    #[error(
        "MP4 box {kind:?} at byte {offset} declares {size} bytes but {parent:?} has only {left} left"
    )]
    BeyondParent {
        kind: String,
        parent: String,
        offset: usize,
        size: u64,
        left: u64,
    },
    #[error("MP4 boxes nested deeper than {MAX_DEPTH} levels at byte {offset}")]
    TooDeep { offset: usize },
}

/// Where the children of a container start, after its header, for every box type whose
/// children the `mp4` crate reads in a loop; `None` for the others. `meta` has a
/// version/flags word, except in files that omit it (then `hdlr` follows at once).
fn children_at(kind: &[u8; 4], payload: &[u8], parent: &[u8; 4]) -> Option<usize> {
    match kind {
        b"moov" | b"trak" | b"mdia" | b"minf" | b"stbl" | b"dinf" | b"mvex" | b"moof" | b"traf"
        | b"udta" | b"ilst" => Some(0),
        b"meta" => Some(if payload.get(..4) == Some(&[0, 0, 0, 0]) {
            4
        } else {
            0
        }),
        // every item of an `ilst` is a list of boxes (`data`)
        _ if parent == b"ilst" => Some(0),
        _ => None,
    }
}

fn name(kind: &[u8; 4]) -> String {
    String::from_utf8_lossy(kind).into_owned()
}

/// Checks the box tree of a whole MP4/MOV file.
pub fn check(bytes: &[u8]) -> Result<(), BoxError> {
    walk(bytes, 0, bytes.len(), b"file", 0)
}

fn walk(
    b: &[u8],
    start: usize,
    end: usize,
    parent: &[u8; 4],
    depth: usize,
) -> Result<(), BoxError> {
    if depth > MAX_DEPTH {
        return Err(BoxError::TooDeep { offset: start });
    }
    let top = depth == 0;
    let mut pos = start;
    while pos < end {
        let Some(h) = b.get(pos..pos + 8) else {
            return Ok(()); // a header cut short at the end of the file: the demuxer reports it
        };
        let kind: [u8; 4] = h[4..8].try_into().expect("4 bytes");
        // Inside a container the demuxer would read a header that crosses the
        // container's end from the bytes of whatever follows it.
        let within = |header: usize| {
            if !top && pos + header > end {
                return Err(BoxError::BeyondParent {
                    kind: name(&kind),
                    parent: name(parent),
                    offset: pos,
                    size: header as u64,
                    left: (end - pos) as u64,
                });
            }
            Ok(())
        };
        within(8)?;
        let mut size = u64::from(u32::from_be_bytes(h[..4].try_into().expect("4 bytes")));
        let mut header = 8u64;
        if size == 1 {
            within(16)?;
            let Some(large) = b.get(pos + 8..pos + 16) else {
                return Ok(()); // cut short at the end of the file
            };
            size = u64::from_be_bytes(large.try_into().expect("8 bytes"));
            header = 16;
        }
        if size == 0 {
            if top {
                return Ok(()); // "to the end of the file"; the demuxer stops here
            }
            return Err(BoxError::Empty {
                kind: name(&kind),
                parent: name(parent),
                offset: pos,
            });
        }
        if size < header {
            return Err(BoxError::ShorterThanHeader {
                kind: name(&kind),
                offset: pos,
                size,
                header,
            });
        }
        let left = (end - pos) as u64;
        let children = children_at(&kind, b.get(pos + header as usize..).unwrap_or(&[]), parent);
        if size > left && !(top && children.is_none()) {
            return Err(BoxError::BeyondParent {
                kind: name(&kind),
                parent: name(parent),
                offset: pos,
                size,
                left,
            });
        }
        let box_end = pos.saturating_add(size.min(left) as usize);
        if let Some(skip) = children {
            walk(b, pos + header as usize + skip, box_end, &kind, depth + 1)?;
        }
        pos = box_end;
    }
    Ok(())
}
