use super::*;
use crate::ministry::query::{build, ReportQuery};
use crate::store::rollup::{Rollup, RollupRow};

#[test]
fn the_page_shows_suppressed_cells_as_such_and_escapes_names() {
    let w = IsoWeek::parse("2026-W10").unwrap();
    let rows = vec![
        RollupRow {
            clinic: "<b>clinic</b>".into(),
            day: w.first_day(),
            rollup: Rollup {
                exams: 3,
                flagged_exams: 3,
                severe_exams: 3,
                exams_by_severity: [0, 0, 3, 0],
                ..Rollup::default()
            },
        },
        RollupRow {
            clinic: "c2".into(),
            day: w.first_day() + 1,
            rollup: Rollup {
                exams: 40,
                exams_by_severity: [40, 0, 0, 0],
                ..Rollup::default()
            },
        },
    ];
    let q = ReportQuery {
        from: w,
        to: w,
        threshold: 5,
        silent_days: 3,
        clinics_of: ClinicDetail::All,
        disaggregate: false,
        now_ms: 0,
    };
    let regions = [("<b>clinic</b>".to_string(), "north".to_string())].into();
    let page = render(&build(&q, &rows, &regions, &[]), &Params::default(), "tok");
    assert!(page.contains("id=\"epicurve\""));
    assert!(page.contains("id=\"curve-examinations-regions\""));
    assert!(page.contains("td class=\"n suppressed\""));
    assert!(!page.contains("<b>clinic"), "names are escaped");
    assert!(page.contains("&lt;b&gt;clinic"));
    // Three flagged scans after two quiet weeks alarm; the alert's count is suppressed.
    assert!(
        page.contains("<tr class=\"alert\" data-region=\"north\""),
        "{page}"
    );
    assert!(page.contains("<td class=\"n suppressed\" title=\"suppressed: small count, or the complement that protects one\">s</td></tr></tbody></table>"));
    assert!(page.contains("name=\"csrf\" value=\"tok\""));
    // The three flagged scans of one clinic appear nowhere as a number.
    assert!(!page.contains("<td class=\"n\">3</td>"), "{page}");
    // The leak the hierarchy closes: the region table hides the other region's 40 as
    // the complement of north's 3, so that region's clinic table may not show it.
    assert!(
        !page.contains("<td class=\"n\">40</td><td class=\"n\">40</td>"),
        "{page}"
    );
}
