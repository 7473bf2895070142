//! Suppression across the org-unit hierarchy. A measure is published twice: by region
//! and week, and for each region by clinic and week, and the second table's column
//! totals *are* the first table's region row (its grand total the region's row total).
//! Suppressing each table alone leaks: the region table may hide north's week (a small
//! cell's complement) while north's clinic table shows its week total. So the two are
//! suppressed together until they agree: an entry hidden in either is forced hidden
//! (and protected) in the other, and this repeats until nothing changes. Hidden sets
//! only grow and hiding more never unprotects anything, so it ends, and in the end each
//! table is protected alone and no value one hides is shown by the other.

use super::suppress::{suppress_forced, Cell, Forced, Published, Suppressed, Table, TableError};

/// The region table's cells (`regions × weeks`) and each region's clinic table
/// (`clinics × weeks`, in region order; a region without clinics has an empty one).
pub struct Hierarchy<'a> {
    pub regions: &'a [Vec<u64>],
    pub clinics: &'a [Vec<Vec<u64>>],
}

/// The published region table and clinic tables.
pub struct Suppressed2 {
    pub regions: Published,
    pub clinics: Vec<Published>,
}

fn hidden(c: Option<Cell>) -> bool {
    c == Some(Cell::Suppressed)
}

/// Suppresses both levels consistently (see the module doc). Errors only if a table's
/// counts overflow.
pub fn suppress_hierarchy(h: &Hierarchy<'_>, threshold: u64) -> Result<Suppressed2, TableError> {
    let region_t = Table::from_rows(h.regions)?;
    let weeks = region_t.cols();
    let clinic_ts: Vec<Option<Table>> = h
        .clinics
        .iter()
        .map(|rows| {
            if rows.is_empty() {
                Ok(None)
            } else {
                Table::from_rows(rows).map(Some)
            }
        })
        .collect::<Result<_, _>>()?;
    let mut forced_region = Forced::default();
    loop {
        let rs = suppress_forced(&region_t, threshold, &forced_region);
        let cs: Vec<Option<Suppressed>> = clinic_ts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let t = t.as_ref()?;
                let forced = Forced {
                    col_totals: (0..weeks).filter(|&w| hidden(rs.cell(i, w))).collect(),
                    grand_total: hidden(rs.row_total(i)),
                    ..Forced::default()
                };
                Some(suppress_forced(t, threshold, &forced))
            })
            .collect();
        let mut changed = false;
        for (i, c) in cs.iter().enumerate() {
            let Some(c) = c else { continue };
            for w in 0..weeks {
                if hidden(c.col_total(w)) && !hidden(rs.cell(i, w)) {
                    forced_region.cells.push((i, w));
                    changed = true;
                }
            }
            if hidden(Some(c.grand_total())) && !hidden(rs.row_total(i)) {
                forced_region.row_totals.push(i);
                changed = true;
            }
        }
        if !changed {
            return Ok(Suppressed2 {
                regions: rs.published(),
                clinics: cs
                    .iter()
                    .map(|c| {
                        c.as_ref().map(Suppressed::published).unwrap_or(Published {
                            rows: 0,
                            cols: weeks,
                            cells: Vec::new(),
                            row_totals: Vec::new(),
                            col_totals: vec![Cell::Shown(0); weeks],
                            grand_total: Cell::Shown(0),
                        })
                    })
                    .collect(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ministry::suppress::{derivable, derivable_totals, suppress};
    use proptest::prelude::*;

    /// Region rows are the sums of their clinics' rows.
    fn regions_of(clinics: &[Vec<Vec<u64>>], weeks: usize) -> Vec<Vec<u64>> {
        clinics
            .iter()
            .map(|rows| {
                (0..weeks)
                    .map(|w| rows.iter().map(|r| r[w]).sum())
                    .collect()
            })
            .collect()
    }

    fn check(clinics: &[Vec<Vec<u64>>], weeks: usize) {
        let regions = regions_of(clinics, weeks);
        let s = suppress_hierarchy(
            &Hierarchy {
                regions: &regions,
                clinics,
            },
            5,
        )
        .unwrap();
        for (i, c) in s.clinics.iter().enumerate() {
            if clinics[i].is_empty() {
                continue;
            }
            for w in 0..weeks {
                assert_eq!(
                    c.col_totals[w] == Cell::Suppressed,
                    s.regions.cells[i * weeks + w] == Cell::Suppressed,
                    "region {i} week {w}: both views agree"
                );
            }
            assert_eq!(
                c.grand_total == Cell::Suppressed,
                s.regions.row_totals[i] == Cell::Suppressed
            );
            for (k, cell) in c.cells.iter().enumerate() {
                let v = clinics[i][k / weeks][k % weeks];
                if v > 0 && v < 5 {
                    assert_eq!(*cell, Cell::Suppressed);
                }
            }
        }
        for (k, cell) in s.regions.cells.iter().enumerate() {
            let v = regions[k / weeks][k % weeks];
            if v > 0 && v < 5 {
                assert_eq!(*cell, Cell::Suppressed);
            }
        }
    }

    #[test]
    fn a_region_cell_hidden_as_a_complement_is_hidden_in_its_clinic_table_too() {
        // North: 3 in week 1 (small). South: 40 in week 1 from one clinic; the region
        // table hides south's 40 as the complement, so south's clinic table must not
        // show its week-1 total.
        let clinics = vec![vec![vec![3, 0]], vec![vec![40, 0]]];
        let regions = regions_of(&clinics, 2);
        let alone = suppress(&Table::from_rows(&regions).unwrap(), 5).published();
        assert_eq!(alone.cells[2], Cell::Suppressed, "the complement");
        let south_alone = suppress(&Table::from_rows(&clinics[1]).unwrap(), 5).published();
        assert_eq!(
            south_alone.col_totals[0],
            Cell::Shown(40),
            "the leak, unlinked"
        );
        let s = suppress_hierarchy(
            &Hierarchy {
                regions: &regions,
                clinics: &clinics,
            },
            5,
        )
        .unwrap();
        assert_eq!(s.clinics[1].col_totals[0], Cell::Suppressed);
        assert_eq!(s.clinics[1].cells[0], Cell::Suppressed);
        check(&clinics, 2);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
        #[test]
        fn both_views_agree_and_each_table_protects_itself(
            clinics in proptest::collection::vec(
                proptest::collection::vec(proptest::collection::vec(
                    prop_oneof![3 => Just(0u64), 3 => 1u64..5, 4 => 5u64..60], 3), 0..4),
                1..4)
        ) {
            check(&clinics, 3);
            let regions = regions_of(&clinics, 3);
            let s = suppress_hierarchy(&Hierarchy { regions: &regions, clinics: &clinics }, 5).unwrap();
            // Each table alone: nothing hidden can be derived from what it shows.
            let rt = Table::from_rows(&regions).unwrap();
            let as_suppressed = |t: &Table, p: &Published| {
                let forced = Forced {
                    cells: (0..t.rows() * t.cols())
                        .filter(|k| p.cells[*k] == Cell::Suppressed)
                        .map(|k| (k / t.cols(), k % t.cols()))
                        .collect(),
                    row_totals: (0..t.rows()).filter(|r| p.row_totals[*r] == Cell::Suppressed).collect(),
                    col_totals: (0..t.cols()).filter(|c| p.col_totals[*c] == Cell::Suppressed).collect(),
                    grand_total: p.grand_total == Cell::Suppressed,
                };
                let again = suppress_forced(t, 5, &forced);
                prop_assert_eq!(&again.published(), p, "the published pattern is a fixpoint");
                prop_assert!(derivable(t, &again).is_empty());
                prop_assert!(derivable_totals(t, &again).is_empty());
                Ok(())
            };
            as_suppressed(&rt, &s.regions)?;
            for (i, rows) in clinics.iter().enumerate() {
                if !rows.is_empty() {
                    as_suppressed(&Table::from_rows(rows).unwrap(), &s.clinics[i])?;
                }
            }
        }
    }
}
