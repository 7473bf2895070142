//! The epidemic curve as inline SVG, drawn on the server: no script, no library, a few
//! kilobytes over a slow link. Presentation attributes only (the CSP allows no inline
//! style). A suppressed week breaks its line and is marked, never drawn as a value.

use std::fmt::Write;

use crate::ministry::suppress::Cell;

use super::esc;

const W: f64 = 760.0;
const H: f64 = 240.0;
const LEFT: f64 = 48.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 40.0;
const COLOURS: [&str; 4] = ["#123", "#e60", "#b00", "#06a"];

/// One line: its label, class and weekly values.
pub struct Series<'a> {
    pub label: &'a str,
    pub id: &'a str,
    pub values: Vec<Cell>,
}

/// An SVG line chart of `series` over `weeks` (labels), y from 0 to the largest shown.
pub fn epicurve(weeks: &[String], series: &[Series<'_>]) -> String {
    let max = series
        .iter()
        .flat_map(|s| s.values.iter())
        .filter_map(|c| match c {
            Cell::Shown(v) => Some(*v),
            Cell::Suppressed => None,
        })
        .max()
        .unwrap_or(0)
        .max(1);
    let n = weeks.len().max(1);
    let step = (W - LEFT - RIGHT) / (n.saturating_sub(1).max(1)) as f64;
    let x = |i: usize| LEFT + step * i as f64;
    let y = |v: u64| TOP + (H - TOP - BOTTOM) * (1.0 - v as f64 / max as f64);
    let mut s = String::with_capacity(4096);
    let _ = write!(
        s,
        "<svg id=\"epicurve\" role=\"img\" viewBox=\"0 0 {W} {H}\" width=\"100%\" \
         xmlns=\"http://www.w3.org/2000/svg\" aria-label=\"Weekly counts, all regions\">"
    );
    // Axes, y gridlines at 0, max/2, max.
    for v in [0, max / 2, max] {
        let _ = write!(
            s,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{v}</text>",
            W - RIGHT,
            LEFT - 4.0,
            y(v) + 4.0,
            y = y(v),
        );
    }
    let every = n.div_ceil(12).max(1);
    for (i, w) in weeks.iter().enumerate().filter(|(i, _)| i % every == 0) {
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
            x(i),
            H - BOTTOM + 14.0,
            esc(w)
        );
    }
    for (k, line) in series.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let _ = write!(s, "<g class=\"series\" data-series=\"{}\">", esc(line.id));
        let mut run: Vec<String> = Vec::new();
        let flush = |s: &mut String, run: &mut Vec<String>| {
            if run.len() > 1 {
                let _ = write!(
                    s,
                    "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
                    run.join(" ")
                );
            }
            run.clear();
        };
        for (i, c) in line.values.iter().enumerate() {
            match c {
                Cell::Shown(v) => {
                    run.push(format!("{:.1},{:.1}", x(i), y(*v)));
                    let _ = write!(
                        s,
                        "<circle class=\"point\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{colour}\">\
                         <title>{} {}: {v}</title></circle>",
                        x(i),
                        y(*v),
                        esc(line.label),
                        esc(&weeks[i])
                    );
                }
                Cell::Suppressed => {
                    flush(&mut s, &mut run);
                    let _ = write!(
                        s,
                        "<text class=\"suppressed-point\" x=\"{:.1}\" y=\"{}\" font-size=\"10\" \
                         text-anchor=\"middle\" fill=\"{colour}\">s<title>{} {}: suppressed (small \
                         count)</title></text>",
                        x(i),
                        H - BOTTOM - 2.0,
                        esc(line.label),
                        esc(&weeks[i])
                    );
                }
            }
        }
        flush(&mut s, &mut run);
        let _ = write!(
            s,
            "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"3\" fill=\"{colour}\"/>\
             <text x=\"{}\" y=\"{}\" font-size=\"11\">{}</text></g>",
            LEFT + 150.0 * k as f64,
            H - 10.0,
            LEFT + 14.0 + 150.0 * k as f64,
            H - 6.0,
            esc(line.label)
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suppressed_weeks_break_the_line_and_no_value_is_drawn_for_them() {
        let weeks: Vec<String> = (1..=4).map(|w| format!("2026-W0{w}")).collect();
        let svg = epicurve(
            &weeks,
            &[Series {
                label: "Scans <all>",
                id: "scans",
                values: vec![
                    Cell::Shown(10),
                    Cell::Shown(20),
                    Cell::Suppressed,
                    Cell::Shown(40),
                ],
            }],
        );
        assert_eq!(svg.matches("<polyline").count(), 1, "W04 stands alone");
        assert_eq!(svg.matches("class=\"point\"").count(), 3);
        assert_eq!(svg.matches("suppressed-point").count(), 1);
        assert!(svg.contains("Scans &lt;all&gt;") && !svg.contains("<all>"));
        assert!(!svg.contains("style="), "the CSP forbids inline style");
    }
}
