//! The `data` section of a pipeline: where the raw interactions come from and how ingest cleans,
//! splits and weights them.
//!
//! Every struct rejects unknown keys, and [`DataConfig::validate`] checks the values once, before
//! any work starts (the pipeline loader calls it).

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// `data`: the ingest stage's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// `data.source`: the raw interaction log. Required.
    pub source: SourceConfig,
    /// `data.dedup`: drop duplicate (user, item) pairs, keeping the latest row (before
    /// `min_rating`: the latest rating decides). Default `true`.
    #[serde(default = "default_true")]
    pub dedup: bool,
    /// `data.min_rating`: keep only interactions with rating ≥ this (needs a rating column).
    /// Default: none (keep all).
    #[serde(default)]
    pub min_rating: Option<f64>,
    /// `data.k_core`: iteratively drop users and items with fewer than this many interactions
    /// until none is left. Default: none (no filtering).
    #[serde(default)]
    pub k_core: Option<u32>,
    /// `data.split`: how interactions are divided into train/valid/test.
    #[serde(default)]
    pub split: SplitConfig,
    /// `data.temporal`: T-DiffRec time weights. Absent: no reweighting (all weights 1.0).
    #[serde(default)]
    pub temporal: Option<TemporalConfig>,
    /// `data.noise`: optional noise injection for robustness studies. Absent: none.
    #[serde(default)]
    pub noise: Option<NoiseConfig>,
}

/// `data.source.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceFormat {
    /// A CSV file with a header row, mapped through `data.source.columns`.
    Csv,
    /// A Parquet file, mapped through `data.source.columns`.
    Parquet,
    /// MovieLens `ratings.dat` (`UserID::MovieID::Rating::Timestamp`) or `ratings.csv`.
    Movielens,
    /// The DiffRec paper's `{train,valid,test}_list.npy` directory (split taken as given).
    DiffrecNpy,
}

/// `data.source`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `data.source.format`: `csv`, `parquet`, `movielens` or `diffrec-npy`. Required.
    pub format: SourceFormat,
    /// `data.source.path`: a file (csv, parquet, movielens) or a directory (diffrec-npy). A
    /// relative path is resolved against the pipeline file's directory; `workspace:KEY` reads
    /// `KEY` from the workspace itself; URLs (`file://`, `s3://`) are read through object_store.
    /// Required.
    pub path: String,
    /// `data.source.columns`: column names in csv/parquet sources.
    #[serde(default)]
    pub columns: ColumnMap,
    /// `data.source.delimiter`: CSV field separator (one byte). Default `,`.
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
}

/// `data.source.columns`: which source column holds what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnMap {
    /// `data.source.columns.user`: user id column (any type; kept as string). Default `user_id`.
    #[serde(default = "default_user_col")]
    pub user: String,
    /// `data.source.columns.item`: item id column (any type; kept as string). Default `item_id`.
    #[serde(default = "default_item_col")]
    pub item: String,
    /// `data.source.columns.timestamp`: integer seconds since the epoch or ISO-8601 datetimes.
    /// Default `timestamp`; `null` means the source has no time and row order stands for time.
    #[serde(default = "default_ts_col")]
    pub timestamp: Option<String>,
    /// `data.source.columns.rating`: numeric rating column. Default: none.
    #[serde(default)]
    pub rating: Option<String>,
}

impl Default for ColumnMap {
    fn default() -> Self {
        ColumnMap {
            user: default_user_col(),
            item: default_item_col(),
            timestamp: default_ts_col(),
            rating: None,
        }
    }
}

/// `data.split.method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitMethod {
    /// Each user's interactions in time order: the first share to train, the next to valid,
    /// the rest to test.
    PerUserRatio,
    /// One global time cut: the oldest share of all interactions to train, and so on.
    GlobalTime,
    /// The split is part of the source (diffrec-npy).
    Predefined,
}

/// `data.split`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    /// `data.split.method`: `per_user_ratio`, `global_time` or `predefined`. Default:
    /// `predefined` for `diffrec-npy` sources, `per_user_ratio` otherwise.
    #[serde(default)]
    pub method: Option<SplitMethod>,
    /// `data.split.ratios`: train/valid/test shares, summing to 1, train > 0. Default `[0.7, 0.2, 0.1]`.
    #[serde(default = "default_ratios")]
    pub ratios: [f64; 3],
}

impl Default for SplitConfig {
    fn default() -> Self {
        SplitConfig {
            method: None,
            ratios: default_ratios(),
        }
    }
}

/// `data.temporal`: linear time weights per user (T-DiffRec).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemporalConfig {
    /// `data.temporal.w_min`: weight of a user's oldest train interaction. Default 0.1.
    #[serde(default = "default_w_min")]
    pub w_min: f64,
    /// `data.temporal.w_max`: weight of a user's newest train interaction. Default 1.0.
    #[serde(default = "default_w_max")]
    pub w_max: f64,
}

impl TemporalConfig {
    /// The weights of `n` interactions in time order, oldest first, as ingest gives a user's
    /// `n` train rows: `w_min + (w_max − w_min)·m/(n − 1)` for the m-th, in f64 and stored as
    /// f32 (`w_min` alone when n = 1). For histories given outside the workspace (`diffrec
    /// recommend --history`).
    pub fn weights(&self, n: usize) -> Vec<f32> {
        if n == 1 {
            return vec![self.w_min as f32];
        }
        let span = (n - 1) as f64;
        (0..n)
            .map(|m| (self.w_min + (self.w_max - self.w_min) * m as f64 / span) as f32)
            .collect()
    }
}

/// `data.noise.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoiseKind {
    /// Add `ratio` × |train_u| random unobserved items to each user's train set.
    Random,
    /// Keep a `ratio` share of the interactions below `min_rating` as false positives in
    /// train/valid (never in test), as the paper's noisy setting does.
    Natural,
}

/// `data.noise`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoiseConfig {
    /// `data.noise.kind`: `random` or `natural`. Required.
    pub kind: NoiseKind,
    /// `data.noise.ratio`: see [`NoiseKind`]. Default 0.1 for `random`, 1.0 for `natural`.
    #[serde(default)]
    pub ratio: Option<f64>,
    /// `data.noise.seed`: seed of the noise sampler. Default 2023.
    #[serde(default = "default_noise_seed")]
    pub seed: u64,
}

impl NoiseConfig {
    /// The ratio with the kind's default applied.
    pub fn effective_ratio(&self) -> f64 {
        self.ratio.unwrap_or(match self.kind {
            NoiseKind::Random => 0.1,
            NoiseKind::Natural => 1.0,
        })
    }
}

fn default_true() -> bool {
    true
}
fn default_delimiter() -> char {
    ','
}
fn default_user_col() -> String {
    "user_id".into()
}
fn default_item_col() -> String {
    "item_id".into()
}
fn default_ts_col() -> Option<String> {
    Some("timestamp".into())
}
fn default_ratios() -> [f64; 3] {
    [0.7, 0.2, 0.1]
}
fn default_w_min() -> f64 {
    0.1
}
fn default_w_max() -> f64 {
    1.0
}
fn default_noise_seed() -> u64 {
    2023
}

impl DataConfig {
    /// This section with the defaults that depend on another key written out
    /// (`split.method` by the source format, `noise.ratio` by the noise kind): the form in
    /// which a pipeline is shown, compared and recorded, so that leaving a default out and
    /// writing it are the same settings.
    pub fn resolved(mut self) -> Self {
        self.split.method = Some(self.split_method());
        if let Some(n) = &mut self.noise {
            n.ratio = Some(n.effective_ratio());
        }
        self
    }

    /// A `data` section as a manifest recorded it, resolved as [`Self::resolved`]: one recorded
    /// with such a default left unset equals the same settings written out. A tree that does
    /// not read as a `data` section is returned as it is.
    pub fn resolved_value(recorded: &serde_json::Value) -> serde_json::Value {
        serde_json::from_value::<DataConfig>(recorded.clone())
            .ok()
            .and_then(|c| serde_json::to_value(c.resolved()).ok())
            .unwrap_or_else(|| recorded.clone())
    }

    /// The split method with the format's default applied.
    pub fn split_method(&self) -> SplitMethod {
        self.split.method.unwrap_or(match self.source.format {
            SourceFormat::DiffrecNpy => SplitMethod::Predefined,
            _ => SplitMethod::PerUserRatio,
        })
    }

    /// Checks every value once; the error names the dotted key.
    pub fn validate(&self) -> Result<()> {
        let fmt = self.source.format;
        if self.source.path.trim().is_empty() {
            return Err(DataError::config("data.source.path", "must not be empty"));
        }
        if !self.source.delimiter.is_ascii() {
            return Err(DataError::config(
                "data.source.delimiter",
                "must be a single ASCII character",
            ));
        }
        // The quote, line ends and other control characters (but the tab) already mean
        // something else in a CSV file.
        let d = self.source.delimiter;
        if d == '"' || (d.is_ascii_control() && d != '\t') {
            return Err(DataError::config(
                "data.source.delimiter",
                format!(
                    "{d:?} cannot separate fields (it quotes fields or ends lines); use , ; | or a tab"
                ),
            ));
        }
        let c = &self.source.columns;
        if let Some(role) = [("user", &c.user), ("item", &c.item)]
            .into_iter()
            .chain(c.timestamp.iter().map(|t| ("timestamp", t)))
            .chain(c.rating.iter().map(|r| ("rating", r)))
            .find(|(_, name)| name.trim().is_empty())
            .map(|(role, _)| role)
        {
            return Err(DataError::config(
                format!("data.source.columns.{role}"),
                "must name a column (leave out `timestamp` or set it to null for a source \
                 without times; leave out `rating` for none)",
            ));
        }
        let mapped: Vec<(&str, &str)> = [
            ("user", Some(&c.user)),
            ("item", Some(&c.item)),
            ("timestamp", c.timestamp.as_ref()),
            ("rating", c.rating.as_ref()),
        ]
        .into_iter()
        .filter_map(|(role, name)| name.map(|n| (role, n.as_str())))
        .collect();
        for (i, (role, name)) in mapped.iter().enumerate() {
            if let Some((other, _)) = mapped[..i].iter().find(|(_, n)| n == name) {
                return Err(DataError::config(
                    "data.source.columns",
                    format!("{other} and {role} both name column {name:?}: map each to its own"),
                ));
            }
        }
        let r = self.split.ratios;
        if r.iter().any(|x| !x.is_finite() || *x < 0.0) {
            return Err(DataError::config(
                "data.split.ratios",
                format!("every ratio must be a finite number ≥ 0, got {r:?}"),
            ));
        }
        if r[0] == 0.0 {
            return Err(DataError::config(
                "data.split.ratios",
                format!("the train share must be > 0 (training needs rows), got {r:?}"),
            ));
        }
        let sum: f64 = r.iter().sum();
        if (sum - 1.0).abs() > 1e-6 {
            return Err(DataError::config(
                "data.split.ratios",
                format!(
                    "ratios must sum to 1, got {r:?} (sum {})",
                    (sum * 1e9).round() / 1e9
                ),
            ));
        }
        match (self.split_method(), fmt) {
            (SplitMethod::Predefined, f) if f != SourceFormat::DiffrecNpy => {
                return Err(DataError::config(
                    "data.split.method",
                    "`predefined` needs a source that carries its split (format `diffrec-npy`)",
                ));
            }
            (m, SourceFormat::DiffrecNpy) if m != SplitMethod::Predefined => {
                return Err(DataError::config(
                    "data.split.method",
                    "a `diffrec-npy` source is already split: use `predefined` (or leave it out)",
                ));
            }
            (SplitMethod::GlobalTime, _) if !self.has_timestamps() => {
                return Err(DataError::config(
                    "data.split.method",
                    "`global_time` needs timestamps (data.source.columns.timestamp)",
                ));
            }
            _ => {}
        }
        if let Some(t) = &self.temporal {
            for (key, w) in [
                ("data.temporal.w_min", t.w_min),
                ("data.temporal.w_max", t.w_max),
            ] {
                if !w.is_finite() || w < 0.0 {
                    return Err(DataError::config(
                        key,
                        format!("must be finite and ≥ 0, got {w}"),
                    ));
                }
            }
            if t.w_min > t.w_max {
                return Err(DataError::config(
                    "data.temporal.w_min",
                    format!("w_min ({}) must not exceed w_max ({})", t.w_min, t.w_max),
                ));
            }
            if t.w_max == 0.0 {
                return Err(DataError::config(
                    "data.temporal.w_max",
                    "must be > 0: with w_max 0 every train interaction weighs 0, and the model \
                     input is all zeros",
                ));
            }
            if t.w_min == 0.0 {
                tracing::warn!(
                    "data.temporal.w_min = 0 gives each user's oldest train item weight 0; \
                     the authors' code then neither feeds nor masks it"
                );
            }
        }
        if let Some(k) = self.k_core
            && k == 0
        {
            return Err(DataError::config(
                "data.k_core",
                "must be ≥ 1 (or left out)",
            ));
        }
        if let Some(m) = self.min_rating {
            if !m.is_finite() {
                return Err(DataError::config(
                    "data.min_rating",
                    "must be a finite number",
                ));
            }
            if fmt == SourceFormat::DiffrecNpy {
                return Err(DataError::config(
                    "data.min_rating",
                    "not for a diffrec-npy source: its rows carry no rating (the split was \
                     filtered when it was made)",
                ));
            }
            if !self.has_ratings() {
                return Err(DataError::config(
                    "data.min_rating",
                    "needs a rating column (data.source.columns.rating, or a movielens source)",
                ));
            }
        }
        if let Some(n) = &self.noise {
            let ratio = n.effective_ratio();
            if !ratio.is_finite() || ratio < 0.0 {
                return Err(DataError::config(
                    "data.noise.ratio",
                    format!("must be a finite number ≥ 0, got {ratio}"),
                ));
            }
            if fmt == SourceFormat::DiffrecNpy && n.kind == NoiseKind::Natural {
                return Err(DataError::config(
                    "data.noise.kind",
                    "`natural` noise needs ratings; diffrec-npy sources have none",
                ));
            }
            if n.kind == NoiseKind::Natural {
                if self.min_rating.is_none() {
                    return Err(DataError::config(
                        "data.noise.kind",
                        "`natural` noise keeps interactions below data.min_rating: set min_rating",
                    ));
                }
                if ratio > 1.0 {
                    return Err(DataError::config(
                        "data.noise.ratio",
                        format!("for `natural` noise the ratio is a share in [0, 1], got {ratio}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether the configured source has timestamps.
    pub fn has_timestamps(&self) -> bool {
        match self.source.format {
            SourceFormat::Movielens => true,
            SourceFormat::DiffrecNpy => false,
            SourceFormat::Csv | SourceFormat::Parquet => self.source.columns.timestamp.is_some(),
        }
    }

    /// Whether the configured source has ratings.
    pub fn has_ratings(&self) -> bool {
        match self.source.format {
            SourceFormat::Movielens => true,
            SourceFormat::DiffrecNpy => false,
            SourceFormat::Csv | SourceFormat::Parquet => self.source.columns.rating.is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> DataConfig {
        serde_json::from_value(serde_json::json!({
            "source": {"format": "csv", "path": "x.csv"}
        }))
        .unwrap()
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = base();
        assert!(c.dedup);
        assert_eq!(c.split.ratios, [0.7, 0.2, 0.1]);
        assert_eq!(c.split_method(), SplitMethod::PerUserRatio);
        assert_eq!(c.source.columns.user, "user_id");
        assert_eq!(c.source.columns.timestamp.as_deref(), Some("timestamp"));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn ratios_must_sum_to_one() {
        let mut c = base();
        c.split.ratios = [0.7, 0.2, 0.2];
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("data.split.ratios") && e.contains("sum"), "{e}");
    }

    #[test]
    fn one_column_for_two_roles_is_refused() {
        let mut c = base();
        c.source.columns.item = c.source.columns.user.clone();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("data.source.columns") && e.contains("user and item both name column"),
            "{e}"
        );
    }

    #[test]
    fn delimiters_that_mean_something_else_and_blank_columns_are_refused() {
        for d in ['"', '\n', '\r', '\0'] {
            let mut c = base();
            c.source.delimiter = d;
            let e = c.validate().unwrap_err().to_string();
            assert!(
                e.contains("data.source.delimiter") && e.contains("cannot separate"),
                "{e}"
            );
        }
        let mut c = base();
        c.source.delimiter = '\t';
        assert!(c.validate().is_ok());
        c.source.columns.user = " ".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("data.source.columns.user") && e.contains("must name a column"),
            "{e}"
        );
    }

    #[test]
    fn w_min_above_w_max_is_refused() {
        let mut c = base();
        c.temporal = Some(TemporalConfig {
            w_min: 0.9,
            w_max: 0.5,
        });
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("data.temporal.w_min"), "{e}");
        c.temporal = Some(TemporalConfig {
            w_min: 0.0,
            w_max: 0.0,
        });
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("data.temporal.w_max"), "{e}");
        // Each out-of-range weight is named by its own key.
        for (w_min, w_max, key) in [
            (-0.1, 1.0, "`data.temporal.w_min`"),
            (0.1, f64::INFINITY, "`data.temporal.w_max`"),
        ] {
            c.temporal = Some(TemporalConfig { w_min, w_max });
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("finite and ≥ 0"), "{e}");
        }
    }

    #[test]
    fn predefined_split_needs_npy() {
        let mut c = base();
        c.split.method = Some(SplitMethod::Predefined);
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("data.split.method")
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let r: std::result::Result<DataConfig, _> = serde_json::from_value(serde_json::json!({
            "source": {"format": "csv", "path": "x.csv", "colums": {}}
        }));
        assert!(r.unwrap_err().to_string().contains("colums"));
    }

    #[test]
    fn min_rating_needs_a_rating_column() {
        let mut c = base();
        c.min_rating = Some(4.0);
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("data.min_rating")
        );
        c.source.columns.rating = Some("rating".into());
        assert!(c.validate().is_ok());
        // A diffrec-npy source has no ratings whatever the columns say: the message says so
        // instead of asking for the rating column already given.
        c.source.format = SourceFormat::DiffrecNpy;
        c.split.method = Some(SplitMethod::Predefined);
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("data.min_rating") && e.contains("not for a diffrec-npy"),
            "{e}"
        );
        c.min_rating = None;
        c.noise = Some(NoiseConfig {
            kind: NoiseKind::Natural,
            ratio: None,
            seed: 1,
        });
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("diffrec-npy sources have none"), "{e}");
    }
}
