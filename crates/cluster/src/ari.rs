//! The adjusted Rand index (Hubert & Arabie, 1985): agreement of two partitions, 1 for
//! identical partitions (up to label names), about 0 for independent ones.

use std::collections::HashMap;

fn pairs(n: u64) -> f64 {
    (n * n.saturating_sub(1)) as f64 / 2.0
}

/// ARI of two labelings of the same items.
pub fn adjusted_rand_index(a: &[u32], b: &[u32]) -> f64 {
    assert_eq!(a.len(), b.len(), "labelings of different lengths");
    let mut table: HashMap<(u32, u32), u64> = HashMap::new();
    let mut rows: HashMap<u32, u64> = HashMap::new();
    let mut cols: HashMap<u32, u64> = HashMap::new();
    for (&x, &y) in a.iter().zip(b) {
        *table.entry((x, y)).or_default() += 1;
        *rows.entry(x).or_default() += 1;
        *cols.entry(y).or_default() += 1;
    }
    let index: f64 = table.values().map(|&n| pairs(n)).sum();
    let sum_a: f64 = rows.values().map(|&n| pairs(n)).sum();
    let sum_b: f64 = cols.values().map(|&n| pairs(n)).sum();
    let expected = sum_a * sum_b / pairs(a.len() as u64).max(1.0);
    let max = (sum_a + sum_b) / 2.0;
    if (max - expected).abs() < 1e-12 {
        // Both partitions trivial (one cluster each, or all singletons): identical.
        return 1.0;
    }
    (index - expected) / (max - expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert_eq!(adjusted_rand_index(&[0, 0, 1, 1], &[5, 5, 3, 3]), 1.0);
        // sklearn: adjusted_rand_score([0,0,1,1],[0,0,1,2]) = 0.5714285714285715
        let v = adjusted_rand_index(&[0, 0, 1, 1], &[0, 0, 1, 2]);
        assert!((v - 0.571_428_571_428_571_5).abs() < 1e-12, "{v}");
        // By hand: contingency {(0,0):2, (0,1):1, (1,1):2, (1,0):1} → index = 1+0+1+0 = 2;
        // sum_a = 3+3 = 6, sum_b = 3+3 = 6, expected = 36/15 = 2.4, max = 6 → (2−2.4)/(6−2.4).
        let v = adjusted_rand_index(&[0, 0, 0, 1, 1, 1], &[0, 1, 0, 1, 0, 1]);
        assert!((v - (2.0 - 2.4) / (6.0 - 2.4)).abs() < 1e-12, "{v}");
    }
}
