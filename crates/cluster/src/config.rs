//! The `cluster` section of a pipeline.

use serde::{Deserialize, Serialize};

/// A configuration value is invalid; `key` is the dotted pipeline key.
#[derive(Debug, thiserror::Error)]
#[error("invalid config `{key}`: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
}

/// `cluster`: item clustering for L-DiffRec/LT-DiffRec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `cluster.k`: number of item clusters. Default 2 (the paper's tuned value).
    #[serde(default = "default_k")]
    pub k: usize,
    /// `cluster.seed`: seed of k-means (and of LightGCN pre-training). Default 1.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// `cluster.n_runs`: k-means restarts; the lowest inertia wins. Default 10.
    #[serde(default = "default_n_runs")]
    pub n_runs: usize,
    /// `cluster.embeddings`: path to item embeddings (`.npy` f32 or f64 n_items×d, or `.parquet`); when
    /// set, LightGCN pre-training is skipped. Default: none (pre-train).
    #[serde(default)]
    pub embeddings: Option<String>,
    /// `cluster.lightgcn`: pre-training settings.
    #[serde(default)]
    pub lightgcn: LightGcnConfig,
}

/// `cluster.lightgcn`: LightGCN (He et al., SIGIR 2020); defaults follow that paper.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LightGcnConfig {
    /// `cluster.lightgcn.dim`: embedding size. Default 64.
    #[serde(default = "default_dim")]
    pub dim: usize,
    /// `cluster.lightgcn.layers`: propagation layers. Default 3.
    #[serde(default = "default_layers")]
    pub layers: usize,
    /// `cluster.lightgcn.lr`: Adam learning rate. Default 0.001.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// `cluster.lightgcn.reg`: L2 weight on the batch's ego embeddings. Default 1e-4.
    #[serde(default = "default_reg")]
    pub reg: f64,
    /// `cluster.lightgcn.batch_size`: BPR triples per step. Default 2048.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// `cluster.lightgcn.epochs`: maximum epochs. Default 1000.
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// `cluster.lightgcn.eval_every`: epochs between validation evaluations. Default 5.
    #[serde(default = "default_eval_every")]
    pub eval_every: usize,
    /// `cluster.lightgcn.patience`: evaluations without a better valid Recall@20 before
    /// stopping. Default 5.
    #[serde(default = "default_patience")]
    pub patience: usize,
}

impl Default for LightGcnConfig {
    fn default() -> Self {
        LightGcnConfig {
            dim: default_dim(),
            layers: default_layers(),
            lr: default_lr(),
            reg: default_reg(),
            batch_size: default_batch(),
            epochs: default_epochs(),
            eval_every: default_eval_every(),
            patience: default_patience(),
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            k: default_k(),
            seed: default_seed(),
            n_runs: default_n_runs(),
            embeddings: None,
            lightgcn: LightGcnConfig::default(),
        }
    }
}

fn default_k() -> usize {
    2
}
fn default_seed() -> u64 {
    1
}
fn default_n_runs() -> usize {
    10
}
fn default_dim() -> usize {
    64
}
fn default_layers() -> usize {
    3
}
fn default_lr() -> f64 {
    1e-3
}
fn default_reg() -> f64 {
    1e-4
}
fn default_batch() -> usize {
    2048
}
fn default_epochs() -> usize {
    1000
}
fn default_eval_every() -> usize {
    5
}
fn default_patience() -> usize {
    5
}

impl ClusterConfig {
    /// Checks every value once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.k == 0 {
            return Err(err("cluster.k", "must be ≥ 1"));
        }
        if self.n_runs == 0 {
            return Err(err("cluster.n_runs", "must be ≥ 1"));
        }
        if self
            .embeddings
            .as_deref()
            .is_some_and(|p| p.trim().is_empty())
        {
            return Err(err(
                "cluster.embeddings",
                "is empty: name a .npy or .parquet file, or leave the key out to pre-train \
                 LightGCN",
            ));
        }
        if let Some(p) = self.embeddings.as_deref()
            && !(p.ends_with(".npy") || p.ends_with(".parquet"))
        {
            return Err(err(
                "cluster.embeddings",
                format!("{p:?}: expected a .npy or .parquet file (by its name's ending)"),
            ));
        }
        let l = &self.lightgcn;
        for (key, v) in [
            ("cluster.lightgcn.dim", l.dim),
            ("cluster.lightgcn.batch_size", l.batch_size),
            ("cluster.lightgcn.epochs", l.epochs),
            ("cluster.lightgcn.eval_every", l.eval_every),
            ("cluster.lightgcn.patience", l.patience),
        ] {
            if v == 0 {
                return Err(err(key, "must be ≥ 1"));
            }
        }
        if !(l.lr.is_finite() && l.lr > 0.0) {
            return Err(err(
                "cluster.lightgcn.lr",
                format!("must be a finite number > 0, got {}", l.lr),
            ));
        }
        if !(l.reg.is_finite() && l.reg >= 0.0) {
            return Err(err(
                "cluster.lightgcn.reg",
                format!("must be a finite number ≥ 0, got {}", l.reg),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let c: ClusterConfig = serde_json::from_str("{}").unwrap();
        assert_eq!((c.k, c.lightgcn.dim, c.lightgcn.layers), (2, 64, 3));
        c.validate().unwrap();
        let bad: ClusterConfig = serde_json::from_str(r#"{"k": 0}"#).unwrap();
        assert_eq!(bad.validate().unwrap_err().key, "cluster.k");
        let empty: ClusterConfig = serde_json::from_str(r#"{"embeddings": " "}"#).unwrap();
        assert_eq!(empty.validate().unwrap_err().key, "cluster.embeddings");
        let csv: ClusterConfig = serde_json::from_str(r#"{"embeddings": "emb.csv"}"#).unwrap();
        let e = csv.validate().unwrap_err();
        assert_eq!(e.key, "cluster.embeddings");
        assert!(e.to_string().contains(".npy or .parquet"), "{e}");
        for ok in ["e.npy", "workspace:cluster/x.parquet", "s3://b/e.npy"] {
            let c: ClusterConfig =
                serde_json::from_str(&format!(r#"{{"embeddings": "{ok}"}}"#)).unwrap();
            c.validate().unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        assert!(serde_json::from_str::<ClusterConfig>(r#"{"kk": 2}"#).is_err());
    }
}
