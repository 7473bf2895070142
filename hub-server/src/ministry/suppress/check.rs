//! The checker: what an attacker can compute from a published table. Written apart
//! from the algorithm (`super::suppress`), assuming none of its invariants.

use super::{Cell, Published, Suppressed, Table, Total};

/// Suppressed cells whose value can be computed exactly from what `s` publishes.
/// `t` is the truth; if `s` is not a suppression of `t`, every suppressed cell is
/// reported (fail safe).
pub fn derivable(t: &Table, s: &Suppressed) -> Vec<(usize, usize)> {
    disclosed(t, s)
        .into_iter()
        .filter_map(|(pos, _, _)| match pos {
            Pos::Cell(r, c) => Some((r, c)),
            Pos::Total(_) => None,
        })
        .collect()
}

/// Suppressed totals whose value can be computed exactly; as [`derivable`].
pub fn derivable_totals(t: &Table, s: &Suppressed) -> Vec<Total> {
    disclosed(t, s)
        .into_iter()
        .filter_map(|(pos, _, _)| match pos {
            Pos::Total(total) => Some(total),
            Pos::Cell(..) => None,
        })
        .collect()
}

/// A suppressed quantity of a published table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pos {
    Cell(usize, usize),
    Total(Total),
}

/// The smallest value and the largest (None: unbounded) an attacker finds possible.
type Range = (u128, Option<u128>);

fn disclosed(t: &Table, s: &Suppressed) -> Vec<(Pos, u128, Option<u128>)> {
    let p = s.published();
    match attacker_ranges(&p, t) {
        Some(ranges) => ranges
            .into_iter()
            .filter(|&(_, lo, hi)| hi == Some(lo))
            .collect(),
        None => unknowns(&p, t)
            .into_iter()
            .map(|(pos, u)| (pos, u128::from(u.value), None))
            .collect(),
    }
}

/// Exact range of every suppressed quantity of `p` given everything `p` shows and that
/// counts are `≥ 0`; None if `p` does not agree with the truth `t`.
///
/// Method. The unknowns are the suppressed cells and totals; the equations are the
/// identities "row i: Σ cells = R_i", "column j: Σ cells = C_j", "Σ C_j = G", "Σ R_i = G".
/// Each unknown appears in exactly two identities, one of the first and last kind
/// ("left": row i, or Σ C_j = G) and one of the others ("right"), with the same sign
/// in both once the last two are written `G − Σ = 0`. So a change of the unknowns that
/// keeps every identity is a circulation on the left/right graph whose edges are the
/// unknowns, with flow `+change` on cells and G and `−change` on R_i and C_j; `≥ 0`
/// bounds the flow one way by the true value and leaves the other way unbounded.
/// Raising (lowering) unknown e by k is then possible iff k units can flow back from
/// e's far end to its near end through the other unknowns: a max-flow (Edmonds–Karp,
/// exact integer arithmetic). Network matrices are totally unimodular, so the integer
/// range is the real one. Derivable iff neither way can move: `lo == hi`.
pub(super) fn attacker_ranges(p: &Published, t: &Table) -> Option<Vec<(Pos, u128, Option<u128>)>> {
    if !agrees(p, t) {
        return None;
    }
    let unknowns = unknowns(p, t);
    let nodes = p.rows + p.cols + 2;
    let ranges = (0..unknowns.len()).map(|k| {
        let (lo, hi) = range(&unknowns, k, nodes);
        (unknowns[k].0, lo, hi)
    });
    Some(ranges.collect())
}

/// An unknown as an edge from left identity `left` to right identity `right`; `plus`:
/// its flow is `+change` (a cell or G), else `−change` (a row or column total).
struct Unknown {
    left: usize,
    right: usize,
    value: u64,
    plus: bool,
}

/// Left identities: row i → node i, "Σ C_j = G" → node `rows`. Right: column j → node
/// `rows + 1 + j`, "Σ R_i = G" → node `rows + 1 + cols`.
fn unknowns(p: &Published, t: &Table) -> Vec<(Pos, Unknown)> {
    let (rows, cols) = (p.rows, p.cols);
    let right = |j: usize| rows + 1 + j;
    let mut out = Vec::new();
    let mut push = |hidden: bool, pos, left, right, value, plus| {
        if hidden {
            out.push((
                pos,
                Unknown {
                    left,
                    right,
                    value,
                    plus,
                },
            ));
        }
    };
    for (k, cell) in p.cells.iter().enumerate() {
        let (r, c) = (k / cols, k % cols);
        let v = t.cells.get(k).copied().unwrap_or(0);
        push(
            *cell == Cell::Suppressed,
            Pos::Cell(r, c),
            r,
            right(c),
            v,
            true,
        );
    }
    for (r, total) in p.row_totals.iter().enumerate() {
        let v = t.row_total(r).unwrap_or(0);
        let pos = Pos::Total(Total::Row(r));
        push(*total == Cell::Suppressed, pos, r, right(cols), v, false);
    }
    for (c, total) in p.col_totals.iter().enumerate() {
        let v = t.col_total(c).unwrap_or(0);
        let pos = Pos::Total(Total::Col(c));
        push(*total == Cell::Suppressed, pos, rows, right(c), v, false);
    }
    let hidden = p.grand_total == Cell::Suppressed;
    let pos = Pos::Total(Total::Grand);
    push(hidden, pos, rows, right(cols), t.grand_total, true);
    out
}

/// Whether `p` has `t`'s shape and every shown number is the true one.
fn agrees(p: &Published, t: &Table) -> bool {
    let same = |shown: &[Cell], truth: &[u64]| {
        shown.len() == truth.len()
            && shown.iter().zip(truth).all(|(s, &v)| match s {
                Cell::Shown(x) => *x == v,
                Cell::Suppressed => true,
            })
    };
    p.rows == t.rows
        && p.cols == t.cols
        && same(&p.cells, &t.cells)
        && same(&p.row_totals, &t.row_totals)
        && same(&p.col_totals, &t.col_totals)
        && same(&[p.grand_total], &[t.grand_total])
}

/// Stands for "no bound"; above any sum of real capacities (< 2^71).
const INF: i128 = 1 << 100;

fn range(unknowns: &[(Pos, Unknown)], k: usize, nodes: usize) -> Range {
    let mut cap = vec![vec![0i128; nodes]; nodes];
    for (i, (_, u)) in unknowns.iter().enumerate() {
        if i == k {
            continue;
        }
        let v = i128::from(u.value);
        let (forward, back) = if u.plus { (INF, v) } else { (v, INF) };
        cap[u.left][u.right] += forward;
        cap[u.right][u.left] += back;
    }
    let u = &unknowns[k].1;
    let v = i128::from(u.value);
    // Raising a `plus` unknown sends its flow left → right, so it must come back
    // right → left; lowering it is the opposite, and `−change` unknowns swap both.
    let (near, far) = if u.plus {
        (u.left, u.right)
    } else {
        (u.right, u.left)
    };
    let up = max_flow(cap.clone(), far, near, INF);
    let down = max_flow(cap, near, far, v);
    let lo = u128::try_from(v - down).unwrap_or(0);
    let hi = (up < INF).then(|| u128::try_from(v + up).unwrap_or(u128::MAX));
    (lo, hi)
}

/// Max flow `s → t` on capacity matrix `cap`, stopping at `limit`; `INF` if unbounded.
fn max_flow(mut cap: Vec<Vec<i128>>, s: usize, t: usize, limit: i128) -> i128 {
    let n = cap.len();
    let mut flow = 0;
    while flow < limit {
        let mut prev = vec![usize::MAX; n];
        prev[s] = s;
        let mut queue = std::collections::VecDeque::from([s]);
        while let Some(u) = queue.pop_front() {
            for v in 0..n {
                if prev[v] == usize::MAX && cap[u][v] > 0 {
                    prev[v] = u;
                    queue.push_back(v);
                }
            }
        }
        if prev[t] == usize::MAX {
            break;
        }
        let mut push = limit - flow;
        let mut v = t;
        while v != s {
            push = push.min(cap[prev[v]][v]);
            v = prev[v];
        }
        if push >= INF {
            return INF;
        }
        let mut v = t;
        while v != s {
            cap[prev[v]][v] -= push;
            cap[v][prev[v]] += push;
            v = prev[v];
        }
        flow += push;
    }
    flow.min(limit)
}
