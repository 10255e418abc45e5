//! Errors of the cluster stage.

use diffrec_data::DataError;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Data(#[from] DataError),
    /// User-provided embeddings that cannot be used; `file` names the file.
    #[error("{file}: {message}")]
    BadEmbeddings { file: String, message: String },
    #[error(
        "cluster.k = {k} is too large for {n_items} items: every cluster needs at least {min} items, so choose k ≤ {max} (k = 1 disables clustering)",
        min = crate::kmeans::MIN_CLUSTER,
        max = n_items / crate::kmeans::MIN_CLUSTER
    )]
    TooManyClusters { k: usize, n_items: usize },
    #[error("{0}")]
    Diverged(String),
    #[error("k-means failed: {0}")]
    KMeans(String),
    /// A stage artifact that cannot be read back as written.
    #[error("{key}: {message}")]
    Corrupt { key: String, message: String },
    #[error("writing {key}: {message}")]
    Write { key: String, message: String },
}

pub type Result<T> = std::result::Result<T, ClusterError>;
