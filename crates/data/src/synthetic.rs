//! A seeded generator of synthetic interaction logs: the embedded demo dataset, test data, and
//! scale-benchmark data of any size.
//!
//! Model: items belong to `clusters` groups and have Zipf-like popularity; each user has two
//! favourite groups and drifts from the first to the second over their history (so recency
//! matters, which T-DiffRec exploits); a `false_positive_rate` share of clicks are popular items
//! from anywhere, rated low (the "natural noise" of the paper). Output is CSV with columns
//! `user_id,item_id,timestamp,rating`.

use std::io::Write;

use rand::{RngExt, SeedableRng, rngs::StdRng};

/// Size and shape of a synthetic log.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticSpec {
    pub users: usize,
    pub items: usize,
    pub clusters: usize,
    /// Mean rows per user (at least 5 each). Items are drawn with replacement: a repeated
    /// (user, item) pair is a re-click, which ingest's dedup removes, so a user may end with
    /// fewer than 5 distinct items (and fewer still after the noise's low ratings are filtered).
    pub mean_interactions: f64,
    /// Share of interactions that are low-rated random popular clicks.
    pub false_positive_rate: f64,
    pub seed: u64,
}

impl Default for SyntheticSpec {
    /// The demo dataset: 2,000 users × 1,000 items in 16 groups, ~80k interactions.
    fn default() -> Self {
        SyntheticSpec {
            users: 2_000,
            items: 1_000,
            clusters: 16,
            mean_interactions: 40.0,
            false_positive_rate: 0.05,
            seed: 7,
        }
    }
}

impl SyntheticSpec {
    /// The first field that cannot make a log, with why: `(field, message)`.
    pub fn check(&self) -> Option<(&'static str, String)> {
        for (field, n) in [
            ("users", self.users),
            ("items", self.items),
            ("clusters", self.clusters),
        ] {
            if n == 0 {
                return Some((field, "must be ≥ 1".into()));
            }
        }
        if self.clusters > self.items {
            return Some((
                "clusters",
                format!(
                    "must be at most --items (each group holds at least one item), got {} > {}",
                    self.clusters, self.items
                ),
            ));
        }
        let m = self.mean_interactions;
        if !(m.is_finite() && m >= 0.0) {
            return Some((
                "mean_interactions",
                format!("must be a finite number ≥ 0, got {m}"),
            ));
        }
        let f = self.false_positive_rate;
        if !(0.0..=1.0).contains(&f) {
            return Some(("false_positive_rate", format!("must be in [0, 1], got {f}")));
        }
        None
    }
}

/// Samples items of one group by popularity.
struct Group {
    items: Vec<u32>,
    cum: Vec<f64>,
}

impl Group {
    fn sample(&self, rng: &mut StdRng) -> u32 {
        let x = rng.random::<f64>() * self.cum.last().copied().unwrap_or(0.0);
        let k = self
            .cum
            .partition_point(|&c| c < x)
            .min(self.items.len() - 1);
        self.items[k]
    }
}

fn group(items: Vec<u32>, popularity: &[f64]) -> Group {
    let mut acc = 0.0;
    let cum = items
        .iter()
        .map(|&i| {
            acc += popularity[i as usize];
            acc
        })
        .collect();
    Group { items, cum }
}

/// The planted structure: item popularity and the members of each group. Consumes the seeded
/// RNG first, so the log that follows depends on it.
fn plan(spec: &SyntheticSpec, rng: &mut StdRng) -> (Vec<f64>, Vec<Vec<u32>>) {
    assert!(
        spec.users > 0 && spec.items > 0 && spec.clusters > 0,
        "empty synthetic spec"
    );
    let clusters = spec.clusters.min(spec.items);
    // Popularity: Zipf-like over a random ranking of items.
    let mut rank: Vec<u32> = (0..spec.items as u32).collect();
    for i in (1..rank.len()).rev() {
        rank.swap(i, rng.random_range(0..=i));
    }
    let mut popularity = vec![0.0; spec.items];
    for (r, &item) in rank.iter().enumerate() {
        popularity[item as usize] = 1.0 / (r as f64 + 10.0).powf(0.6);
    }
    let mut members: Vec<Vec<u32>> = vec![Vec::new(); clusters];
    for item in 0..spec.items as u32 {
        members[rng.random_range(0..clusters)].push(item);
    }
    // Make sure no group is empty.
    for c in 0..clusters {
        if members[c].is_empty() {
            let donor = (0..clusters).max_by_key(|&d| members[d].len()).unwrap_or(0);
            let it = members[donor].pop().expect("the largest group has an item");
            members[c].push(it);
        }
    }
    (popularity, members)
}

/// The planted group of each item (by the item id's number), the ground truth clustering
/// tests compare against.
pub fn item_groups(spec: &SyntheticSpec) -> Vec<u32> {
    let (_, members) = plan(spec, &mut StdRng::seed_from_u64(spec.seed));
    let mut groups = vec![0u32; spec.items];
    for (g, m) in members.iter().enumerate() {
        for &i in m {
            groups[i as usize] = g as u32;
        }
    }
    groups
}

/// Writes the log as CSV into `out`; returns the number of rows.
pub fn write_csv(spec: &SyntheticSpec, out: &mut impl Write) -> std::io::Result<u64> {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let (popularity, members) = plan(spec, &mut rng);
    let clusters = members.len();
    let groups: Vec<Group> = members.into_iter().map(|m| group(m, &popularity)).collect();
    let everyone = group((0..spec.items as u32).collect(), &popularity);

    out.write_all(b"user_id,item_id,timestamp,rating\n")?;
    let mut rows = 0u64;
    let mut line = Vec::with_capacity(64);
    for u in 0..spec.users {
        let n = 5
            + ((spec.mean_interactions - 5.0).max(0.0) * -(rng.random::<f64>().max(1e-12)).ln())
                .round() as usize;
        let first = rng.random_range(0..clusters);
        let second = if clusters > 1 {
            (first + 1 + rng.random_range(0..clusters - 1)) % clusters
        } else {
            first
        };
        let mut t: i64 = 1_000_000_000 + rng.random_range(0..30_000_000);
        for k in 0..n {
            let progress = k as f64 / n as f64;
            let x = rng.random::<f64>();
            let (item, rating) = if x < spec.false_positive_rate {
                (everyone.sample(&mut rng), rng.random_range(1..=2))
            } else {
                let y = rng.random::<f64>();
                let g = if y < 0.9 * (1.0 - progress) {
                    first
                } else if y < 0.9 {
                    second
                } else {
                    rng.random_range(0..clusters)
                };
                (groups[g].sample(&mut rng), rng.random_range(3..=5))
            };
            t += 60 + rng.random_range(0..86_400);
            line.clear();
            writeln!(line, "u{u},{item},{t},{rating}")?;
            out.write_all(&line)?;
            rows += 1;
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_that_cannot_make_a_log_name_their_field() {
        assert_eq!(SyntheticSpec::default().check(), None);
        let with = |change: fn(&mut SyntheticSpec)| {
            let mut spec = SyntheticSpec::default();
            change(&mut spec);
            spec
        };
        for (spec, field) in [
            (with(|s| s.users = 0), "users"),
            (with(|s| s.clusters = 0), "clusters"),
            (with(|s| s.clusters = s.items + 1), "clusters"),
            (
                with(|s| s.mean_interactions = f64::INFINITY),
                "mean_interactions",
            ),
            (with(|s| s.false_positive_rate = 3.0), "false_positive_rate"),
            (
                with(|s| s.false_positive_rate = -0.1),
                "false_positive_rate",
            ),
        ] {
            assert_eq!(spec.check().map(|(f, _)| f), Some(field), "{spec:?}");
        }
    }

    #[test]
    fn is_seeded_and_shaped() {
        let spec = SyntheticSpec {
            users: 50,
            items: 40,
            ..SyntheticSpec::default()
        };
        let mut a = Vec::new();
        let rows = write_csv(&spec, &mut a).unwrap();
        let mut b = Vec::new();
        write_csv(&spec, &mut b).unwrap();
        assert_eq!(a, b, "same seed, same bytes");
        let text = String::from_utf8(a).unwrap();
        assert_eq!(text.lines().count() as u64, rows + 1);
        assert!(rows >= 50 * 5);
        let line = text.lines().nth(1).unwrap();
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f.len(), 4);
        assert!(f[0].starts_with('u'));
        assert!(f[1].parse::<u32>().unwrap() < 40);
    }
}
