//! The trainer's error type.

/// Errors of training, evaluation and recommendation.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] diffrec_data::DataError),
    #[error("invalid model configuration: {0}")]
    Model(String),
    #[error("checkpoint error: {0}")]
    Checkpoint(String),
    /// A checkpoint read whole that is not what training wrote: cut short, of another layout,
    /// or its tensors not matching the SHA-256 its state records. Every checkpoint write is
    /// atomic, so a hand or a disk did it, and a retry reads the same bytes.
    #[error("checkpoint damaged: {0}")]
    Damaged(String),
    /// A checkpoint does not fit the configured model (its parameters' shapes, its variant or
    /// its items differ).
    #[error("{checkpoint} does not fit the configured model: {why}. {hint}")]
    ModelMismatch {
        /// Which checkpoint (its key, or which part of it).
        checkpoint: String,
        why: String,
        /// What to do about it.
        hint: String,
    },
    #[error("backend `{0}` is not compiled into this binary; rebuild with `--features {0}`")]
    BackendMissing(&'static str),
    #[error("{0}")]
    Input(String),
    /// Another process is training the same run.
    #[error("{0}")]
    Concurrent(String),
    /// A GPU device of `train.devices` cannot be opened here (no driver, no such adapter).
    #[error("{0}")]
    Device(String),
    /// The training loss is no longer a finite number.
    #[error("{0}")]
    Diverged(String),
    /// burn-collective failed (a replica, the orchestrator or another node).
    #[error("multi-device training: {0}")]
    Collective(String),
}

impl TrainError {
    /// The same error with the checkpoint file it concerns named, where it is a
    /// [`TrainError::ModelMismatch`] about a record (e.g. "the model record in
    /// runs/r/checkpoints/latest.ckpt") or a [`TrainError::Checkpoint`] (a file that does not
    /// decode).
    pub fn within(mut self, key: &str) -> Self {
        match &mut self {
            TrainError::ModelMismatch { checkpoint, .. } => {
                *checkpoint = format!("{checkpoint} in {key}");
            }
            TrainError::Checkpoint(what) | TrainError::Damaged(what) => {
                *what = format!("{key}: {what}")
            }
            _ => {}
        }
        self
    }

    /// The same error with `note` (a sentence) added, where it is about a record that does
    /// not load: a [`TrainError::ModelMismatch`] (to its hint) or a [`TrainError::Checkpoint`]
    /// (a record burn cannot decode). Other errors, and no note, leave it as it is.
    pub fn noting(mut self, note: Option<String>) -> Self {
        let Some(note) = note else { return self };
        let text = match &mut self {
            TrainError::ModelMismatch { hint, .. } => hint,
            TrainError::Checkpoint(what) => what,
            _ => return self,
        };
        text.push_str(if text.ends_with('.') { " " } else { ". " });
        text.push_str(&note);
        self
    }

    /// True when the user can fix it (CLI exit code 2).
    pub fn is_input(&self) -> bool {
        match self {
            TrainError::Data(d) => d.is_input(),
            TrainError::Model(_)
            | TrainError::ModelMismatch { .. }
            | TrainError::BackendMissing(_)
            | TrainError::Damaged(_)
            | TrainError::Input(_) => true,
            // Also a checkpoint read while another process replaces it, and failures to
            // encode one: not only damage, so a retry stays allowed.
            TrainError::Checkpoint(_)
            | TrainError::Collective(_)
            | TrainError::Concurrent(_)
            | TrainError::Diverged(_)
            | TrainError::Device(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_go_on_record_errors_only() {
        let note = || Some("It was written by diffrec 0.0.1; this is diffrec 0.1.0.".to_owned());
        let mismatch = |hint: &str| TrainError::ModelMismatch {
            checkpoint: "the model record".into(),
            why: "`w` is [2] in the checkpoint but [3]".into(),
            hint: hint.into(),
        };
        assert_eq!(
            mismatch("Start over with `--force`")
                .noting(note())
                .to_string(),
            "the model record does not fit the configured model: `w` is [2] in the checkpoint \
             but [3]. Start over with `--force`. It was written by diffrec 0.0.1; this is \
             diffrec 0.1.0."
        );
        // A hint that ends its sentence gets no second full stop.
        assert!(
            mismatch("Start over.")
                .noting(note())
                .to_string()
                .ends_with("Start over. It was written by diffrec 0.0.1; this is diffrec 0.1.0.")
        );
        assert_eq!(
            TrainError::Checkpoint("bad record".into())
                .noting(note())
                .to_string(),
            "checkpoint error: bad record. It was written by diffrec 0.0.1; this is diffrec 0.1.0."
        );
        // No note, or an error that is not about a record: unchanged.
        assert_eq!(
            mismatch("Hint").noting(None).to_string(),
            mismatch("Hint").to_string()
        );
        assert_eq!(
            TrainError::Input("x".into()).noting(note()).to_string(),
            "x"
        );
    }
}
