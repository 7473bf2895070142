//! Tests for small-cell suppression: hand-made tables, a brute-force cross-check of the
//! checker, and property tests of the algorithm against the checker.

use super::*;
use proptest::prelude::*;

fn table(rows: &[&[u64]]) -> Table {
    Table::from_rows(rows).expect("valid test table")
}

fn hidden_cells(s: &Suppressed, t: &Table) -> Vec<(usize, usize)> {
    let all = (0..t.rows()).flat_map(|r| (0..t.cols()).map(move |c| (r, c)));
    all.filter(|&(r, c)| s.cell(r, c) == Some(Cell::Suppressed))
        .collect()
}

fn hidden_totals(s: &Suppressed, t: &Table) -> Vec<Total> {
    let rows = (0..t.rows()).filter(|&r| s.row_total(r) == Some(Cell::Suppressed));
    let cols = (0..t.cols()).filter(|&c| s.col_total(c) == Some(Cell::Suppressed));
    let mut out: Vec<Total> = rows.map(Total::Row).chain(cols.map(Total::Col)).collect();
    if s.grand_total() == Cell::Suppressed {
        out.push(Total::Grand);
    }
    out
}

/// Suppresses, then asserts that the checker finds nothing derivable.
fn safe(t: &Table, threshold: u64) -> Suppressed {
    let s = suppress(t, threshold);
    assert_eq!(derivable(t, &s), vec![], "{t:?} -> {:?}", s.published());
    assert_eq!(
        derivable_totals(t, &s),
        vec![],
        "{t:?} -> {:?}",
        s.published()
    );
    s
}

/// A suppression pattern chosen by hand (for checker tests).
fn masked(t: &Table, cells: &[(usize, usize)], totals: &[Total]) -> Suppressed {
    Suppressed {
        table: t.clone(),
        cells: (0..t.rows() * t.cols())
            .map(|k| cells.contains(&(k / t.cols(), k % t.cols())))
            .collect(),
        row_totals: (0..t.rows())
            .map(|r| totals.contains(&Total::Row(r)))
            .collect(),
        col_totals: (0..t.cols())
            .map(|c| totals.contains(&Total::Col(c)))
            .collect(),
        grand_total: totals.contains(&Total::Grand),
    }
}

#[test]
fn single_small_cell_gets_the_cheapest_rectangle() {
    let t = table(&[&[2, 20, 30], &[25, 40, 35], &[30, 45, 50]]);
    let s = safe(&t, 5);
    assert_eq!(hidden_cells(&s, &t), vec![(0, 0), (0, 1), (1, 0), (1, 1)]);
    assert_eq!(hidden_totals(&s, &t), vec![]);
    assert_eq!(s.published().cells[8], Cell::Shown(50));
}

#[test]
fn small_cell_alone_in_its_row_hides_totals() {
    let t = table(&[&[3, 0, 0], &[10, 20, 30], &[15, 25, 35]]);
    let s = safe(&t, 5);
    assert_eq!(hidden_cells(&s, &t), vec![(0, 0), (1, 0)]);
    assert_eq!(hidden_totals(&s, &t), vec![Total::Row(0), Total::Row(1)]);
    assert_eq!(s.cell(0, 1), Some(Cell::Shown(0)));
}

#[test]
fn one_row_table_hides_column_totals() {
    let t = table(&[&[3, 8, 12, 40]]);
    let s = safe(&t, 5);
    assert_eq!(hidden_cells(&s, &t), vec![(0, 0), (0, 1)]);
    assert_eq!(hidden_totals(&s, &t), vec![Total::Col(0), Total::Col(1)]);
    assert_eq!(s.grand_total(), Cell::Shown(63));
}

#[test]
fn one_column_table_hides_row_totals() {
    let t = table(&[&[3], &[8], &[12], &[40]]);
    let s = safe(&t, 5);
    assert_eq!(hidden_cells(&s, &t), vec![(0, 0), (1, 0)]);
    assert_eq!(hidden_totals(&s, &t), vec![Total::Row(0), Total::Row(1)]);
}

#[test]
fn one_small_cell_alone_hides_everything() {
    let t = table(&[&[3]]);
    let p = safe(&t, 5).published();
    assert_eq!(p.cells, vec![Cell::Suppressed]);
    assert_eq!(
        (p.row_totals, p.col_totals),
        (vec![Cell::Suppressed], vec![Cell::Suppressed])
    );
    assert_eq!(p.grand_total, Cell::Suppressed);
}

#[test]
fn all_zeros_are_shown() {
    let t = table(&[&[0, 0], &[0, 0], &[0, 0]]);
    let s = safe(&t, 5);
    assert_eq!(hidden_cells(&s, &t), vec![]);
    assert_eq!(hidden_totals(&s, &t), vec![]);
}

#[test]
fn all_small_cells_are_hidden_and_the_grand_total_shown() {
    let t = table(&[&[1, 2, 1], &[3, 1, 1], &[1, 1, 4]]);
    let s = safe(&t, 5);
    assert_eq!(hidden_cells(&s, &t).len(), 9);
    assert_eq!(s.grand_total(), Cell::Shown(15));
    // 5 is not small, but with G shown it would give R_0 away.
    assert_eq!(s.row_total(1), Some(Cell::Suppressed));
}

#[test]
fn zeros_are_never_used_to_close_a_cycle() {
    // (0,1) = 0 would close the cheapest rectangle 2, 0, 7, 6; it cannot protect.
    let t = table(&[&[2, 0, 40], &[6, 7, 45], &[30, 35, 50]]);
    let s = safe(&t, 5);
    assert_eq!(hidden_cells(&s, &t), vec![(0, 0), (0, 2), (1, 0), (1, 2)]);
}

#[test]
fn threshold_one_or_zero_suppresses_nothing() {
    let t = table(&[&[1, 0], &[2, 3]]);
    for threshold in [0, 1] {
        assert_eq!(hidden_cells(&suppress(&t, threshold), &t), vec![]);
    }
}

#[test]
fn checker_finds_a_cell_alone_in_its_row() {
    let t = table(&[&[2, 20], &[25, 40]]);
    assert_eq!(derivable(&t, &masked(&t, &[(0, 0)], &[])), vec![(0, 0)]);
    let rect = masked(&t, &[(0, 0), (0, 1), (1, 0), (1, 1)], &[]);
    assert_eq!(derivable(&t, &rect), vec![]);
}

#[test]
fn checker_sees_zero_blocking_both_directions() {
    // Column 1 is all zero and its total says so: the rectangle cannot move.
    let t = table(&[&[3, 0], &[4, 0]]);
    let all = [(0, 0), (0, 1), (1, 0), (1, 1)];
    assert_eq!(derivable(&t, &masked(&t, &all, &[])), all.to_vec());
    // Zeros on one diagonal only: the rectangle moves the other way.
    let t = table(&[&[3, 0], &[0, 7]]);
    assert_eq!(derivable(&t, &masked(&t, &all, &[])), vec![]);
    let ranges = attacker_ranges(&masked(&t, &all, &[]).published(), &t).expect("agrees");
    assert_eq!((ranges[0].1, ranges[0].2), (0, Some(3)));
}

#[test]
fn checker_uses_grand_total_when_row_totals_are_hidden() {
    // Row 1 total hidden, grand total shown: R_1 = G − R_0, so (1,0) = R_1 − 9.
    let t = table(&[&[2, 9], &[3, 9]]);
    let s = masked(&t, &[(1, 0)], &[Total::Row(1)]);
    assert_eq!(derivable(&t, &s), vec![(1, 0)]);
    assert_eq!(derivable_totals(&t, &s), vec![Total::Row(1)]);
    let unbounded = masked(&t, &[(1, 0)], &[Total::Row(1), Total::Col(0), Total::Grand]);
    assert_eq!(derivable(&t, &unbounded), vec![]);
}

#[test]
fn checker_fails_safe_on_a_foreign_table() {
    let t = table(&[&[2, 20, 30], &[25, 40, 35], &[30, 45, 50]]);
    let s = suppress(&t, 5);
    let other = table(&[&[2, 21, 30], &[25, 40, 35], &[30, 45, 50]]);
    assert_eq!(derivable(&other, &s), hidden_cells(&s, &t));
}

#[test]
fn table_errors() {
    assert_eq!(
        Table::new(2, 2, vec![1, 2, 3]),
        Err(TableError::Shape {
            rows: 2,
            cols: 2,
            len: 3
        })
    );
    let ragged = Table::from_rows(&[vec![1, 2], vec![3]]);
    assert_eq!(
        ragged,
        Err(TableError::Ragged {
            row: 1,
            len: 1,
            expected: 2
        })
    );
    assert_eq!(
        Table::new(1, 2, vec![u64::MAX, 1]),
        Err(TableError::Overflow)
    );
    assert_eq!(table(&[&[1, 2]]).cell(1, 0), None);
}

/// Derivable cells and totals by enumerating every assignment of the hidden cells in
/// `0..=max+1` (a hidden value that can move at all can move by one along a cycle, so
/// this box finds it) that reproduces every shown number.
fn brute_force(t: &Table, p: &Published) -> (Vec<(usize, usize)>, Vec<Total>) {
    let hidden: Vec<usize> = (0..p.cells.len())
        .filter(|&k| p.cells[k] == Cell::Suppressed)
        .collect();
    let bound = t.cells.iter().max().copied().unwrap_or(0) + 1;
    let (mut moved_cells, mut moved) = (vec![false; hidden.len()], Vec::new());
    let mut x = t.cells.clone();
    for &k in &hidden {
        x[k] = 0;
    }
    loop {
        let cand = Table::new(t.rows, t.cols, x.clone()).expect("small values");
        let fits = |shown: &[Cell], v: &[u64]| {
            shown
                .iter()
                .zip(v)
                .all(|(s, &v)| *s == Cell::Suppressed || *s == Cell::Shown(v))
        };
        if fits(&p.row_totals, &cand.row_totals)
            && fits(&p.col_totals, &cand.col_totals)
            && fits(&[p.grand_total], &[cand.grand_total])
        {
            for (i, &k) in hidden.iter().enumerate() {
                moved_cells[i] |= x[k] != t.cells[k];
            }
            let differ =
                |a: &[u64], b: &[u64]| (0..a.len()).filter(|&i| a[i] != b[i]).collect::<Vec<_>>();
            moved.extend(
                differ(&cand.row_totals, &t.row_totals)
                    .into_iter()
                    .map(Total::Row),
            );
            moved.extend(
                differ(&cand.col_totals, &t.col_totals)
                    .into_iter()
                    .map(Total::Col),
            );
            if cand.grand_total != t.grand_total {
                moved.push(Total::Grand);
            }
        }
        // Odometer over the hidden cells.
        let Some(i) = hidden.iter().position(|&k| x[k] < bound) else {
            break;
        };
        x[hidden[i]] += 1;
        for &k in &hidden[..i] {
            x[k] = 0;
        }
    }
    let cells = hidden
        .iter()
        .zip(&moved_cells)
        .filter(|(_, &m)| !m)
        .map(|(&k, _)| (k / t.cols, k % t.cols))
        .collect();
    let totals = hidden_totals_of(p)
        .into_iter()
        .filter(|x| !moved.contains(x))
        .collect();
    (cells, totals)
}

fn hidden_totals_of(p: &Published) -> Vec<Total> {
    let rows = (0..p.rows)
        .filter(|&r| p.row_totals[r] == Cell::Suppressed)
        .map(Total::Row);
    let cols = (0..p.cols)
        .filter(|&c| p.col_totals[c] == Cell::Suppressed)
        .map(Total::Col);
    let grand = (p.grand_total == Cell::Suppressed).then_some(Total::Grand);
    rows.chain(cols).chain(grand).collect()
}

/// Counts skewed toward the small ones, zeros included.
fn count() -> impl Strategy<Value = u64> + Clone {
    prop_oneof![3 => Just(0u64), 6 => 1..10u64, 3 => 10..60u64, 1 => 60..5000u64]
}

fn tables(max: usize, value: impl Strategy<Value = u64> + Clone) -> impl Strategy<Value = Table> {
    (1..=max, 1..=max).prop_flat_map(move |(rows, cols)| {
        prop::collection::vec(value.clone(), rows * cols)
            .prop_map(move |cells| Table::new(rows, cols, cells).expect("shape"))
    })
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Properties (1) and (3): small counts hidden, zeros and all else shown truthfully.
fn shown_truthfully(t: &Table, p: &Published, threshold: u64) -> Result<(), TestCaseError> {
    let grand = (&vec![p.grand_total], &vec![t.grand_total]);
    let all = [
        (&p.cells, &t.cells),
        (&p.row_totals, &t.row_totals),
        (&p.col_totals, &t.col_totals),
        grand,
    ];
    for (shown, truth) in all {
        prop_assert_eq!(shown.len(), truth.len());
        for (c, &v) in shown.iter().zip(truth.iter()) {
            match *c {
                Cell::Suppressed => prop_assert!(v > 0, "a zero was hidden"),
                Cell::Shown(x) => prop_assert!(x == v && !(v > 0 && v < threshold), "{x} {v}"),
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn suppression_is_safe_and_truthful(t in tables(6, count()), threshold in 1..=10u64) {
        let s = suppress(&t, threshold);
        shown_truthfully(&t, &s.published(), threshold)?;
        prop_assert_eq!(derivable(&t, &s), vec![]);
        prop_assert_eq!(derivable_totals(&t, &s), vec![]);
        prop_assert_eq!(&suppress(&t, threshold), &s);
        // Skipping entries that already lie on a hidden cycle changes nothing.
        prop_assert_eq!(super::suppress_every_entry(&t, threshold), s);
    }
}

/// A table of counts `0..=3` with a random hiding pattern (at most six hidden cells).
fn masked_tables() -> impl Strategy<Value = (Table, Suppressed)> {
    tables(3, 0..=3u64).prop_flat_map(|t| {
        let n = t.rows() * t.cols();
        let (rows, cols) = (t.rows(), t.cols());
        (
            Just(t),
            prop::collection::vec(any::<bool>(), n),
            prop::collection::vec(any::<bool>(), rows + cols + 1),
        )
            .prop_map(|(t, cells, totals)| {
                let mut hidden: Vec<(usize, usize)> = (0..cells.len())
                    .filter(|&k| cells[k])
                    .map(|k| (k / t.cols(), k % t.cols()))
                    .collect();
                hidden.truncate(6);
                let totals: Vec<Total> = (0..t.rows())
                    .map(Total::Row)
                    .chain((0..t.cols()).map(Total::Col))
                    .chain([Total::Grand])
                    .zip(totals)
                    .filter(|(_, h)| *h)
                    .map(|(x, _)| x)
                    .collect();
                let s = masked(&t, &hidden, &totals);
                (t, s)
            })
    })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn checker_agrees_with_brute_force((t, s) in masked_tables()) {
        let (cells, totals) = brute_force(&t, &s.published());
        prop_assert_eq!(derivable(&t, &s), cells);
        let mut found = derivable_totals(&t, &s);
        found.sort();
        let mut expected = totals;
        expected.sort();
        prop_assert_eq!(found, expected);
    }
}
