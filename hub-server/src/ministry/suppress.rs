//! Small-cell suppression for every table a ministry sees (issue #16, item 2).
//!
//! Why: a count of 1–4 patients in a district, age band or finding can point at a
//! person. So non-zero counts below a threshold ([`DEFAULT_THRESHOLD`] = 5) are hidden
//! ("primary" suppression), and because a ministry table also publishes row totals,
//! column totals and a grand total, more entries are hidden ("complementary"
//! suppression) until no hidden value can be worked out exactly from what is shown.
//! Zeros are shown: a zero is not a small cell.
//!
//! The model. Read the table with its margins as one `(rows+1) × (cols+1)` grid (the
//! column totals as an extra row, the row totals as an extra column, the grand total in
//! the corner). Every row and column of that grid obeys one identity ("the cells add up
//! to the total"), so an attacker who sees the shown entries knows the hidden ones only
//! up to a change that keeps all identities: a sum of moves of `+1, −1, +1, …` around
//! cycles of hidden entries (rows and columns alternating), as long as every count stays
//! `≥ 0`. A hidden entry is safe exactly when it lies on such a cycle that can move.
//!
//! The algorithm hides only positive entries, and a positive entry can always move by
//! one in either direction, so "can move" reduces to "lies on a cycle of hidden entries"
//! (its edge is not a bridge of the graph rows ↔ columns). For each hidden entry in
//! index order it finds the cheapest cycle through it (Dijkstra; hidden entries cost
//! nothing, a shown cell costs its value, a shown total costs more than any set of
//! cells) and hides that cycle. So a total is hidden as a complement only where no
//! cycle of cells exists (a one-row table, a small cell alone in its row). Hiding more
//! never breaks a cycle, so one pass protects everything; hiding every positive entry
//! is always safe (cell, its column total, the grand total, its row total form a
//! cycle) and is the fallback. Zeros are never hidden: an attacker may know a zero is
//! structural (a device not deployed there), and then it would protect nothing.
//!
//! The checker ([`derivable`], [`derivable_totals`]) is written separately from the
//! algorithm and does not assume its invariants; see `attacker_ranges` below.
//!
//! Residual risk: this protects each table on its own, against exact disclosure. It
//! does not stop differencing across overlapping tables (two periods that differ by a
//! week, a district and its parent region minus the other districts); ministry queries
//! use fixed periods and the org-unit hierarchy to limit that. Nor does it enforce a
//! minimum width for the range an attacker can narrow a hidden value to.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Counts `0 < n < DEFAULT_THRESHOLD` are suppressed unless a caller configures otherwise.
pub const DEFAULT_THRESHOLD: u64 = 5;

/// Why a table could not be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TableError {
    #[error("a {rows}x{cols} table cannot hold {len} cells")]
    Shape {
        rows: usize,
        cols: usize,
        len: usize,
    },
    #[error("row {row} has {len} cells, row 0 has {expected}")]
    Ragged {
        row: usize,
        len: usize,
        expected: usize,
    },
    #[error("the counts add up to more than a u64 holds")]
    Overflow,
}

/// A `rows × cols` table of counts (row-major) with its totals, which are published too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    rows: usize,
    cols: usize,
    cells: Vec<u64>,
    row_totals: Vec<u64>,
    col_totals: Vec<u64>,
    grand_total: u64,
}

impl Table {
    /// A table from row-major cells; fails if the shape is wrong or a total overflows.
    pub fn new(rows: usize, cols: usize, cells: Vec<u64>) -> Result<Self, TableError> {
        if rows.checked_mul(cols) != Some(cells.len()) {
            let len = cells.len();
            return Err(TableError::Shape { rows, cols, len });
        }
        let (mut row_totals, mut col_totals, mut grand_total) = (vec![0; rows], vec![0; cols], 0);
        for (k, &v) in cells.iter().enumerate() {
            let (r, c) = (k / cols, k % cols);
            row_totals[r] = add(row_totals[r], v)?;
            col_totals[c] = add(col_totals[c], v)?;
            grand_total = add(grand_total, v)?;
        }
        Ok(Self {
            rows,
            cols,
            cells,
            row_totals,
            col_totals,
            grand_total,
        })
    }

    /// A table from its rows, which must all be as long as the first.
    pub fn from_rows<R: AsRef<[u64]>>(rows: &[R]) -> Result<Self, TableError> {
        let expected = rows.first().map_or(0, |r| r.as_ref().len());
        let mut cells = Vec::new();
        for (row, r) in rows.iter().enumerate() {
            let r = r.as_ref();
            if r.len() != expected {
                let len = r.len();
                return Err(TableError::Ragged { row, len, expected });
            }
            cells.extend_from_slice(r);
        }
        Self::new(rows.len(), expected, cells)
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn cell(&self, r: usize, c: usize) -> Option<u64> {
        (r < self.rows && c < self.cols).then(|| self.cells[r * self.cols + c])
    }

    pub fn row_total(&self, r: usize) -> Option<u64> {
        self.row_totals.get(r).copied()
    }

    pub fn col_total(&self, c: usize) -> Option<u64> {
        self.col_totals.get(c).copied()
    }

    pub fn grand_total(&self) -> u64 {
        self.grand_total
    }
}

fn add(a: u64, b: u64) -> Result<u64, TableError> {
    a.checked_add(b).ok_or(TableError::Overflow)
}

/// One published number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Cell {
    Shown(u64),
    Suppressed,
}

/// A total of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Total {
    Row(usize),
    Col(usize),
    Grand,
}

/// What a ministry sees of a table: the only form that leaves the hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub rows: usize,
    pub cols: usize,
    /// Row-major, like [`Table`].
    pub cells: Vec<Cell>,
    pub row_totals: Vec<Cell>,
    pub col_totals: Vec<Cell>,
    pub grand_total: Cell,
}

/// A table together with which of its cells and totals are suppressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppressed {
    table: Table,
    cells: Vec<bool>,
    row_totals: Vec<bool>,
    col_totals: Vec<bool>,
    grand_total: bool,
}

impl Suppressed {
    pub fn cell(&self, r: usize, c: usize) -> Option<Cell> {
        let v = self.table.cell(r, c)?;
        Some(show(v, self.cells[r * self.table.cols + c]))
    }

    pub fn row_total(&self, r: usize) -> Option<Cell> {
        Some(show(self.table.row_total(r)?, self.row_totals[r]))
    }

    pub fn col_total(&self, c: usize) -> Option<Cell> {
        Some(show(self.table.col_total(c)?, self.col_totals[c]))
    }

    pub fn grand_total(&self) -> Cell {
        show(self.table.grand_total, self.grand_total)
    }

    /// The ministry's view: shown numbers and `Suppressed` markers, nothing else.
    pub fn published(&self) -> Published {
        let t = &self.table;
        let view = |values: &[u64], hidden: &[bool]| {
            values
                .iter()
                .zip(hidden)
                .map(|(&v, &h)| show(v, h))
                .collect()
        };
        Published {
            rows: t.rows,
            cols: t.cols,
            cells: view(&t.cells, &self.cells),
            row_totals: view(&t.row_totals, &self.row_totals),
            col_totals: view(&t.col_totals, &self.col_totals),
            grand_total: self.grand_total(),
        }
    }
}

fn show(v: u64, hidden: bool) -> Cell {
    if hidden {
        Cell::Suppressed
    } else {
        Cell::Shown(v)
    }
}

/// Suppresses `0 < n < threshold` counts (cells and totals) and enough complementary
/// entries that none of them can be derived exactly. Deterministic.
pub fn suppress(t: &Table, threshold: u64) -> Suppressed {
    suppress_forced(t, threshold, &Forced::default())
}

/// Entries another table shares with this one (a region's clinic table has the region's
/// row of the region table as its column totals) and hides: hidden here too, and
/// protected like a small cell, so no view publishes what the other suppresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forced {
    pub cells: Vec<(usize, usize)>,
    pub row_totals: Vec<usize>,
    pub col_totals: Vec<usize>,
    pub grand_total: bool,
}

/// [`suppress`], with the `forced` entries hidden (when positive) from the start.
pub fn suppress_forced(t: &Table, threshold: u64, forced: &Forced) -> Suppressed {
    let mut grid = Grid::new(t);
    let w = t.cols + 1;
    for e in 0..grid.values.len() {
        grid.hidden[e] = grid.values[e] > 0 && grid.values[e] < threshold;
    }
    let at = |i: usize, j: usize| (i <= t.rows && j <= t.cols).then_some(i * w + j);
    let entries = forced
        .cells
        .iter()
        .filter_map(|&(r, c)| (r < t.rows && c < t.cols).then(|| at(r, c)).flatten())
        .chain(
            forced
                .row_totals
                .iter()
                .filter_map(|&r| (r < t.rows).then(|| at(r, t.cols)).flatten()),
        )
        .chain(
            forced
                .col_totals
                .iter()
                .filter_map(|&c| (c < t.cols).then(|| at(t.rows, c)).flatten()),
        )
        .chain(forced.grand_total.then(|| at(t.rows, t.cols)).flatten());
    for e in entries {
        grid.hidden[e] |= grid.values[e] > 0;
    }
    // Only a hidden entry that is a bridge of the hidden entries' graph needs a cycle:
    // for any other, the cheapest cycle costs nothing (hidden entries only) and
    // `protect` would hide nothing, so skipping it changes no result, only the time.
    let mut bridge = grid.hidden_bridges();
    for e in 0..grid.values.len() {
        if grid.hidden[e] && bridge[e] {
            if !protect(&mut grid, e) {
                grid.hide_all_positive();
                return grid.into_suppressed(t);
            }
            bridge = grid.hidden_bridges();
        }
    }
    grid.into_suppressed(t)
}

/// The loop `suppress_forced` replaced, kept for the equivalence test: `protect` on
/// every hidden entry in index order.
#[cfg(test)]
fn suppress_every_entry(t: &Table, threshold: u64) -> Suppressed {
    let mut grid = Grid::new(t);
    for e in 0..grid.values.len() {
        grid.hidden[e] = grid.values[e] > 0 && grid.values[e] < threshold;
    }
    for e in 0..grid.values.len() {
        if grid.hidden[e] && !protect(&mut grid, e) {
            grid.hide_all_positive();
            break;
        }
    }
    grid.into_suppressed(t)
}

/// The table and its totals as a `(rows+1) × (cols+1)` grid (see the module doc), and a
/// bipartite graph on its rows (nodes `0..=rows`) and columns (nodes after those) in
/// which entry `(i, j)` is the edge between row `i` and column `j`.
struct Grid {
    rows: usize,
    cols: usize,
    values: Vec<u64>,
    hidden: Vec<bool>,
}

/// Dijkstra cost of hiding a path: (totals newly hidden, sum of values newly hidden).
type Cost = (u32, u128);

impl Grid {
    fn new(t: &Table) -> Self {
        let mut values = Vec::with_capacity((t.rows + 1) * (t.cols + 1));
        for r in 0..t.rows {
            values.extend_from_slice(&t.cells[r * t.cols..(r + 1) * t.cols]);
            values.push(t.row_totals[r]);
        }
        values.extend_from_slice(&t.col_totals);
        values.push(t.grand_total);
        let hidden = vec![false; values.len()];
        Self {
            rows: t.rows,
            cols: t.cols,
            values,
            hidden,
        }
    }

    fn nodes(&self) -> usize {
        self.rows + self.cols + 2
    }

    /// The (row node, column node) an entry joins.
    fn ends(&self, e: usize) -> (usize, usize) {
        (e / (self.cols + 1), self.rows + 1 + e % (self.cols + 1))
    }

    /// (neighbour node, entry) pairs of a node.
    fn edges(&self, u: usize) -> Vec<(usize, usize)> {
        let w = self.cols + 1;
        if u <= self.rows {
            (0..w).map(|j| (self.rows + 1 + j, u * w + j)).collect()
        } else {
            let j = u - self.rows - 1;
            (0..=self.rows).map(|i| (i, i * w + j)).collect()
        }
    }

    fn is_total(&self, e: usize) -> bool {
        let (i, j) = (e / (self.cols + 1), e % (self.cols + 1));
        i == self.rows || j == self.cols
    }

    fn step_cost(&self, e: usize) -> Cost {
        match (self.hidden[e], self.is_total(e)) {
            (true, _) => (0, 0),
            (false, total) => (u32::from(total), u128::from(self.values[e])),
        }
    }

    /// For each entry: whether it is hidden and a bridge of the graph of hidden entries
    /// (its row and column are connected by no other chain of hidden entries). Tarjan's
    /// bridge search, iterative.
    fn hidden_bridges(&self) -> Vec<bool> {
        let n = self.nodes();
        let mut adj: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n];
        for e in (0..self.values.len()).filter(|&e| self.hidden[e] && self.values[e] > 0) {
            let (r, c) = self.ends(e);
            adj[r].push((c, e));
            adj[c].push((r, e));
        }
        let mut bridge = vec![false; self.values.len()];
        let (mut disc, mut low) = (vec![usize::MAX; n], vec![0usize; n]);
        let mut timer = 0;
        for s in 0..n {
            if disc[s] != usize::MAX || adj[s].is_empty() {
                continue;
            }
            disc[s] = timer;
            low[s] = timer;
            timer += 1;
            // (node, the entry it was reached by, next neighbour to look at)
            let mut stack = vec![(s, usize::MAX, 0usize)];
            while let Some(top) = stack.last_mut() {
                let (u, via) = (top.0, top.1);
                if let Some(&(v, e)) = adj[u].get(top.2) {
                    top.2 += 1;
                    if e == via {
                        continue;
                    }
                    if disc[v] == usize::MAX {
                        disc[v] = timer;
                        low[v] = timer;
                        timer += 1;
                        stack.push((v, e, 0));
                    } else {
                        low[u] = low[u].min(disc[v]);
                    }
                } else {
                    stack.pop();
                    if let Some(&(p, _, _)) = stack.last() {
                        low[p] = low[p].min(low[u]);
                        if low[u] > disc[p] {
                            bridge[via] = true;
                        }
                    }
                }
            }
        }
        bridge
    }

    fn hide_all_positive(&mut self) {
        for (h, &v) in self.hidden.iter_mut().zip(&self.values) {
            *h = v > 0;
        }
    }

    fn into_suppressed(self, t: &Table) -> Suppressed {
        let w = self.cols + 1;
        let at = |i: usize, j: usize| self.hidden[i * w + j];
        Suppressed {
            table: t.clone(),
            cells: (0..t.rows * t.cols)
                .map(|k| at(k / t.cols, k % t.cols))
                .collect(),
            row_totals: (0..t.rows).map(|r| at(r, t.cols)).collect(),
            col_totals: (0..t.cols).map(|c| at(t.rows, c)).collect(),
            grand_total: at(t.rows, t.cols),
        }
    }
}

/// Hides the cheapest cycle through hidden entry `e`; false if there is none.
fn protect(grid: &mut Grid, e: usize) -> bool {
    let (row, col) = grid.ends(e);
    let Some(path) = cheapest_path(grid, col, row, e) else {
        return false;
    };
    path.into_iter().for_each(|f| grid.hidden[f] = true);
    true
}

/// Cheapest path `from → to` over positive entries other than `skip`, as its entries.
/// Ties go to the lowest node number, so the result is deterministic.
fn cheapest_path(grid: &Grid, from: usize, to: usize, skip: usize) -> Option<Vec<usize>> {
    let n = grid.nodes();
    let mut best: Vec<Option<Cost>> = vec![None; n];
    let mut via: Vec<Option<(usize, usize)>> = vec![None; n];
    let mut done = vec![false; n];
    best[from] = Some((0, 0));
    while let Some((cost, u)) = (0..n)
        .filter(|&u| !done[u])
        .filter_map(|u| best[u].map(|c| (c, u)))
        .min()
    {
        if u == to {
            break;
        }
        done[u] = true;
        for (v, f) in grid.edges(u) {
            if f == skip || grid.values[f] == 0 || done[v] {
                continue;
            }
            let step = grid.step_cost(f);
            let c = (cost.0 + step.0, cost.1 + step.1);
            if best[v].is_none_or(|b| c < b) {
                best[v] = Some(c);
                via[v] = Some((u, f));
            }
        }
    }
    let mut path = Vec::new();
    let mut u = to;
    while u != from {
        let (prev, f) = via[u]?;
        path.push(f);
        u = prev;
    }
    Some(path)
}

mod check;
#[cfg(test)]
use check::attacker_ranges;
pub use check::{derivable, derivable_totals};

#[cfg(test)]
#[path = "suppress_tests.rs"]
mod tests;
