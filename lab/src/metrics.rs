//! Evaluation metrics, mirroring `training/pleura_train/metrics.py`.

/// Mann-Whitney AUC, ties counted half. `None` without both classes.
pub fn auc(y: &[bool], s: &[f32]) -> Option<f64> {
    let pos: Vec<f32> = y
        .iter()
        .zip(s)
        .filter(|(y, _)| **y)
        .map(|(_, s)| *s)
        .collect();
    let neg: Vec<f32> = y
        .iter()
        .zip(s)
        .filter(|(y, _)| !**y)
        .map(|(_, s)| *s)
        .collect();
    if pos.is_empty() || neg.is_empty() {
        return None;
    }
    let mut gt = 0.0;
    for p in &pos {
        for n in &neg {
            gt += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    Some(gt / (pos.len() * neg.len()) as f64)
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Binary {
    pub sensitivity: f64,
    pub specificity: f64,
    pub balanced_accuracy: f64,
}

pub fn binary_at(y: &[bool], s: &[f32], threshold: f32) -> Binary {
    let (mut tp, mut tn, mut p, mut n) = (0, 0, 0, 0);
    for (&y, &s) in y.iter().zip(s) {
        let pred = s >= threshold;
        if y {
            p += 1;
            tp += pred as usize;
        } else {
            n += 1;
            tn += (!pred) as usize;
        }
    }
    let sensitivity = tp as f64 / p.max(1) as f64;
    let specificity = tn as f64 / n.max(1) as f64;
    Binary {
        sensitivity,
        specificity,
        balanced_accuracy: (sensitivity + specificity) / 2.0,
    }
}

pub fn confusion(y: &[usize], p: &[usize], k: usize) -> Vec<Vec<u64>> {
    let mut m = vec![vec![0u64; k]; k];
    for (&a, &b) in y.iter().zip(p) {
        m[a][b] += 1;
    }
    m
}

/// Quadratic-weighted Cohen's kappa over `k` ordered classes.
pub fn qwk(y: &[usize], p: &[usize], k: usize) -> Option<f64> {
    let o = confusion(y, p, k);
    let n = y.len() as f64;
    if n == 0.0 {
        return None;
    }
    let rows: Vec<f64> = (0..k).map(|i| o[i].iter().sum::<u64>() as f64).collect();
    let cols: Vec<f64> = (0..k)
        .map(|j| (0..k).map(|i| o[i][j]).sum::<u64>() as f64)
        .collect();
    let (mut num, mut den) = (0.0, 0.0);
    for i in 0..k {
        for j in 0..k {
            let w = ((i as f64 - j as f64).powi(2)) / ((k - 1) as f64).powi(2);
            num += w * o[i][j] as f64;
            den += w * rows[i] * cols[j] / n;
        }
    }
    (den > 0.0).then(|| 1.0 - num / den)
}

/// Mean F1 over the classes present in `y`.
pub fn macro_f1(y: &[usize], p: &[usize], k: usize) -> f64 {
    let mut f1s = Vec::new();
    for c in 0..k {
        let support = y.iter().filter(|&&v| v == c).count();
        if support == 0 {
            continue;
        }
        let tp = y
            .iter()
            .zip(p)
            .filter(|(a, b)| **a == c && **b == c)
            .count();
        let predicted = p.iter().filter(|&&v| v == c).count();
        if tp == 0 {
            f1s.push(0.0);
            continue;
        }
        let prec = tp as f64 / predicted as f64;
        let rec = tp as f64 / support as f64;
        f1s.push(2.0 * prec * rec / (prec + rec));
    }
    f1s.iter().sum::<f64>() / f1s.len().max(1) as f64
}

/// Mean per-class recall over the classes present in `y`.
pub fn balanced_accuracy(y: &[usize], p: &[usize], k: usize) -> f64 {
    let recalls: Vec<f64> = (0..k)
        .filter_map(|c| {
            let support = y.iter().filter(|&&v| v == c).count();
            (support > 0).then(|| {
                y.iter()
                    .zip(p)
                    .filter(|(a, b)| **a == c && **b == c)
                    .count() as f64
                    / support as f64
            })
        })
        .collect();
    recalls.iter().sum::<f64>() / recalls.len().max(1) as f64
}

pub fn accuracy(y: &[usize], p: &[usize]) -> f64 {
    y.iter().zip(p).filter(|(a, b)| a == b).count() as f64 / y.len().max(1) as f64
}

/// Expected calibration error of a binary probability, 10 equal-width bins.
/// Spearman's rank correlation (average ranks for ties).
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    fn ranks(v: &[f64]) -> Vec<f64> {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut r = vec![0.0; v.len()];
        let mut i = 0;
        while i < idx.len() {
            let mut j = i;
            while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
                j += 1;
            }
            for &k in &idx[i..=j] {
                r[k] = (i + j) as f64 / 2.0;
            }
            i = j + 1;
        }
        r
    }
    if a.len() != b.len() || a.len() < 2 {
        return None;
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (ma, mb) = (mean(&ra), mean(&rb));
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
}

pub fn ece(y: &[bool], s: &[f32]) -> f64 {
    let bins = 10;
    let mut total = 0.0;
    for b in 0..bins {
        let (lo, hi) = (b as f32 / bins as f32, (b + 1) as f32 / bins as f32);
        let idx: Vec<usize> = (0..s.len())
            .filter(|&i| s[i] >= lo && if b < bins - 1 { s[i] < hi } else { s[i] <= hi })
            .collect();
        if idx.is_empty() {
            continue;
        }
        let conf = idx.iter().map(|&i| s[i] as f64).sum::<f64>() / idx.len() as f64;
        let acc = idx.iter().filter(|&&i| y[i]).count() as f64 / idx.len() as f64;
        total += idx.len() as f64 / s.len() as f64 * (conf - acc).abs();
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_perfect_random_and_ties() {
        assert_eq!(auc(&[true, false], &[0.9, 0.1]), Some(1.0));
        assert_eq!(auc(&[true, false], &[0.1, 0.9]), Some(0.0));
        assert_eq!(auc(&[true, false], &[0.5, 0.5]), Some(0.5));
        assert_eq!(auc(&[true, true], &[0.5, 0.5]), None);
    }

    #[test]
    fn kappa_known_values() {
        assert_eq!(qwk(&[0, 1, 2, 3], &[0, 1, 2, 3], 4), Some(1.0));
        // sklearn.metrics.cohen_kappa_score([0,1,2,3,3],[0,2,2,3,1],weights="quadratic") = 0.5901639344
        let k = qwk(&[0, 1, 2, 3, 3], &[0, 2, 2, 3, 1], 4).unwrap();
        assert!((k - 0.590_163_934_4).abs() < 1e-9, "{k}");
    }

    #[test]
    fn f1_and_balanced_accuracy() {
        let y = [0, 0, 1, 1, 2];
        let p = [0, 1, 1, 1, 0];
        // class 0: p=1/2 r=1/2 f1=.5 ; class 1: p=2/3 r=1 f1=.8 ; class 2: 0
        assert!((macro_f1(&y, &p, 3) - (0.5 + 0.8) / 3.0).abs() < 1e-12);
        assert!((balanced_accuracy(&y, &p, 3) - 0.5).abs() < 1e-12);
        let b = binary_at(&[true, true, false, false], &[0.9, 0.4, 0.6, 0.1], 0.5);
        assert_eq!((b.sensitivity, b.specificity), (0.5, 0.5));
    }

    #[test]
    fn ece_of_calibrated_and_overconfident() {
        assert!(ece(&[true, false], &[1.0, 0.0]) < 1e-12);
        assert!((ece(&[false, false], &[0.95, 0.95]) - 0.95).abs() < 1e-6);
    }
}
