//! Binary image operations on `w`×`h` masks (row-major, `true` = set).

/// Sets every pixel within `r` (a square window) of a set pixel. Outside the image
/// counts as unset.
pub fn dilate(m: &[bool], w: usize, h: usize, r: usize) -> Vec<bool> {
    if r == 0 {
        return m.to_vec();
    }
    let mut tmp = vec![false; w * h];
    for y in 0..h {
        window_any(&m[y * w..(y + 1) * w], r, &mut tmp[y * w..(y + 1) * w]);
    }
    let mut out = vec![false; w * h];
    for x in 0..w {
        let col: Vec<bool> = (0..h).map(|y| tmp[y * w + x]).collect();
        let mut res = vec![false; h];
        window_any(&col, r, &mut res);
        for (y, v) in res.into_iter().enumerate() {
            out[y * w + x] = v;
        }
    }
    out
}

/// Keeps only pixels whose whole `r`-window is set. Outside the image counts as set, so
/// a region touching the border is not eaten from there.
pub fn erode(m: &[bool], w: usize, h: usize, r: usize) -> Vec<bool> {
    let inv: Vec<bool> = m.iter().map(|v| !v).collect();
    dilate(&inv, w, h, r).into_iter().map(|v| !v).collect()
}

/// Dilation then erosion: joins parts closer than about `2r`.
pub fn close(m: &[bool], w: usize, h: usize, r: usize) -> Vec<bool> {
    erode(&dilate(m, w, h, r), w, h, r)
}

fn window_any(src: &[bool], r: usize, dst: &mut [bool]) {
    let n = src.len();
    let mut prefix = vec![0u32; n + 1];
    for (i, &v) in src.iter().enumerate() {
        prefix[i + 1] = prefix[i] + v as u32;
    }
    for (i, d) in dst.iter_mut().enumerate() {
        let lo = i.saturating_sub(r);
        let hi = (i + r + 1).min(n);
        *d = prefix[hi] > prefix[lo];
    }
}

/// The largest 8-connected set region, or an empty mask if none.
pub fn largest_component(m: &[bool], w: usize, h: usize) -> Vec<bool> {
    large_components(m, w, h, 1.0)
}

/// The 8-connected set regions at least `share` of the largest one's size.
pub fn large_components(m: &[bool], w: usize, h: usize, share: f64) -> Vec<bool> {
    let mut label = vec![0u32; w * h];
    let mut sizes = vec![0usize];
    let mut next = 0u32;
    let mut stack = Vec::new();
    for start in 0..w * h {
        if !m[start] || label[start] != 0 {
            continue;
        }
        next += 1;
        label[start] = next;
        stack.push(start);
        let mut size = 0;
        while let Some(p) = stack.pop() {
            size += 1;
            let (x, y) = ((p % w) as isize, (p / w) as isize);
            for dy in -1..=1 {
                for dx in -1..=1 {
                    let (nx, ny) = (x + dx, y + dy);
                    if nx < 0 || ny < 0 || nx >= w as isize || ny >= h as isize {
                        continue;
                    }
                    let q = ny as usize * w + nx as usize;
                    if m[q] && label[q] == 0 {
                        label[q] = next;
                        stack.push(q);
                    }
                }
            }
        }
        sizes.push(size);
    }
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let min = ((largest as f64 * share).ceil() as usize).max(1);
    label
        .iter()
        .map(|&l| l != 0 && sizes[l as usize] >= min)
        .collect()
}

/// The filled convex hull of the set pixels (pixel squares, so a single pixel or a
/// line is kept whole).
pub fn convex_hull_fill(m: &[bool], w: usize, h: usize) -> Vec<bool> {
    // Corners of the extreme pixels of each row are enough to span the hull.
    let mut pts: Vec<(i64, i64)> = Vec::new();
    for y in 0..h {
        let row = &m[y * w..(y + 1) * w];
        if let (Some(a), Some(b)) = (row.iter().position(|&v| v), row.iter().rposition(|&v| v)) {
            let (y0, y1) = (y as i64, y as i64 + 1);
            pts.extend([
                (a as i64, y0),
                (a as i64, y1),
                (b as i64 + 1, y0),
                (b as i64 + 1, y1),
            ]);
        }
    }
    let hull = hull(pts);
    let mut out = vec![false; w * h];
    if hull.is_empty() {
        return out;
    }
    for y in 0..h {
        // A pixel is inside if its centre is inside the hull polygon.
        let cy = y as f64 + 0.5;
        let (mut lo, mut hi) = (f64::MAX, f64::MIN);
        for i in 0..hull.len() {
            let (p, q) = (hull[i], hull[(i + 1) % hull.len()]);
            let (py, qy) = (p.1 as f64, q.1 as f64);
            if (py <= cy && cy <= qy) || (qy <= cy && cy <= py) {
                let x = if py == qy {
                    lo = lo.min(p.0.min(q.0) as f64);
                    hi = hi.max(p.0.max(q.0) as f64);
                    continue;
                } else {
                    p.0 as f64 + (cy - py) * (q.0 - p.0) as f64 / (qy - py)
                };
                lo = lo.min(x);
                hi = hi.max(x);
            }
        }
        if lo > hi {
            continue;
        }
        let x0 = (lo - 0.5).ceil().max(0.0) as usize;
        let x1 = ((hi - 0.5).floor()).min(w as f64 - 1.0);
        if x1 < 0.0 {
            continue;
        }
        for x in x0..=x1 as usize {
            out[y * w + x] = true;
        }
    }
    out
}

/// Andrew's monotone chain; counter-clockwise, no repeated points.
fn hull(mut pts: Vec<(i64, i64)>) -> Vec<(i64, i64)> {
    pts.sort_unstable();
    pts.dedup();
    if pts.len() < 3 {
        return pts;
    }
    let cross = |o: (i64, i64), a: (i64, i64), b: (i64, i64)| {
        (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0)
    };
    let mut lower: Vec<(i64, i64)> = Vec::new();
    for &p in &pts {
        while lower.len() >= 2 && cross(lower[lower.len() - 2], lower[lower.len() - 1], p) <= 0 {
            lower.pop();
        }
        lower.push(p);
    }
    let mut upper: Vec<(i64, i64)> = Vec::new();
    for &p in pts.iter().rev() {
        while upper.len() >= 2 && cross(upper[upper.len() - 2], upper[upper.len() - 1], p) <= 0 {
            upper.pop();
        }
        upper.push(p);
    }
    lower.pop();
    upper.pop();
    lower.extend(upper);
    lower
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hull_of_a_v_fills_the_triangle() {
        let (w, h) = (9, 5);
        let mut m = vec![false; w * h];
        // a V: two diagonals meeting at the bottom
        for i in 0..5 {
            m[i * w + i * 2 / 2] = true;
            m[i * w + (8 - i)] = true;
        }
        let f = convex_hull_fill(&m, w, h);
        assert!(f[4]); // top row between the arms
        assert!(f[4 * w + 4]);
        assert!(!f[4 * w]); // bottom-left corner outside
    }

    #[test]
    fn dilate_and_largest_component() {
        let (w, h) = (10, 3);
        let mut m = vec![false; w * h];
        m[w + 1] = true;
        m[w + 5] = true;
        m[w + 6] = true;
        let big = largest_component(&m, w, h);
        assert!(big[w + 5] && big[w + 6] && !big[w + 1]);
        let d = dilate(&m, w, h, 1);
        assert!(d[0] && d[2 * w + 2] && !d[w + 3]);
        assert!(erode(&d, w, h, 1)[w + 1]);
    }
}
