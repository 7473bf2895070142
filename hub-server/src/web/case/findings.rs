//! A zone's findings on the case page (model v2): each with its probability and whether
//! it counts as present, e.g. "B-lines 0.87 ✓". The model's own thresholds do not travel
//! on the wire; the hub uses `Findings::DEFAULT_THRESHOLD`.

use std::fmt::Write;

use pleura_shared::html::esc;
use pleura_shared::Findings;

/// `<ul class="findings">` for a scan's findings; nothing for a model without them.
pub(super) fn render(b: &mut String, findings: Option<&Findings>) {
    let Some(f) = findings else {
        return;
    };
    let present = f.present(&[]);
    b.push_str("<ul class=\"findings\">");
    for (j, p) in f.as_array().iter().enumerate() {
        let (class, mark, title) = if present[j] {
            ("present", "\u{2713}", "present")
        } else {
            ("absent", "\u{2717}", "absent")
        };
        let _ = write!(
            b,
            "<li class=\"finding {class}\" data-finding=\"{}\" title=\"{title}\">{} {:.2} {mark}</li>",
            esc(Findings::NAMES[j]),
            esc(Findings::LABELS[j]),
            p
        );
    }
    b.push_str("</ul>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_show_probability_and_presence() {
        let mut b = String::new();
        render(&mut b, None);
        assert!(b.is_empty());
        render(
            &mut b,
            Some(&Findings::from_array([0.1, 0.87, 0.5, 0.0, 0.49])),
        );
        assert!(
            b.contains("data-finding=\"b_lines\" title=\"present\">B-lines 0.87 \u{2713}</li>"),
            "{b}"
        );
        assert!(b.contains("A-lines 0.10 \u{2717}"), "{b}");
        assert!(b.contains("Consolidation 0.50 \u{2713}"), "{b}");
        assert!(b.contains("Pleural irregularity 0.49 \u{2717}"), "{b}");
        assert_eq!(b.matches("<li").count(), 5);
    }
}
