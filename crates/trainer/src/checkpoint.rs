//! Checkpoints: one object per checkpoint (`runs/<run>/checkpoints/{latest,best}.ckpt`), written
//! atomically, holding the training state as JSON plus the model and optimizer records. Being one
//! object, a checkpoint can never be half-written: a run killed during the write resumes from
//! the previous complete one.
//!
//! Layout: `DRCK` magic, then three or four length-prefixed (u64 LE) sections: state JSON, model
//! record, optimizer record (empty for `best`) and, when `train.ema_decay` is set, the parameter
//! average's record (`latest` only; `best` holds the average as its model). Checkpoints written
//! before the fourth section existed have three and still load. The state records the SHA-256
//! of the sections after it (`sections_sha256`), which [`decode`] checks: a byte changed in the
//! tensors is refused, not trained on or served (checkpoints written before it was recorded
//! load unchecked).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use diffrec_model::StepSampler;

use crate::error::TrainError;

const MAGIC: &[u8; 4] = b"DRCK";

/// One evaluation's results (shared with LightGCN, so it lives in `diffrec-data`).
pub use diffrec_data::metrics::Evaluation;

/// Everything but the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Epochs completed.
    pub epoch: usize,
    pub best_epoch: usize,
    /// Best valid Recall@20 (rounded to 4 decimals), −100 before any evaluation.
    pub best_recall: f64,
    pub evaluations: Vec<Evaluation>,
    /// Training loss (sum of batch losses) per completed epoch.
    pub losses: Vec<f64>,
    pub epoch_seconds: Vec<f64>,
    pub sampler: StepSampler,
    /// Seconds spent training so far (across resumes).
    pub train_seconds: f64,
    /// Fingerprint of the configuration and data the run was started with; a resume with
    /// another one is refused.
    #[serde(default)]
    pub fingerprint: String,
    /// L-DiffRec/LT-DiffRec: each item's cluster, so that inference rebuilds the model the
    /// checkpoint was trained with. Empty for the other variants.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub item_clusters: Vec<u32>,
    /// L-DiffRec/LT-DiffRec: each cluster's weight in dividing the latent
    /// (`model.autoencoder.latent_share`). Empty in checkpoints written before the key existed:
    /// those divided it by item count.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_weights: Vec<u64>,
    /// The diffrec that wrote the checkpoint ([`this_diffrec`], e.g. "diffrec 0.1.0"). Empty in
    /// checkpoints written before the field existed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub written_by: String,
    /// What `fingerprint` hashes, readable ([`crate::RunSpec::fingerprinted`]): a refused
    /// resume names what changed from it. Null in checkpoints written before the field existed.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub fingerprinted: serde_json::Value,
    /// SHA-256 (hex) of the checkpoint's sections after the state, as framed ([`frame`]):
    /// set by [`encode`], checked by [`decode`]. Empty in checkpoints written before 2026-12-02's
    /// thirtieth session, which load unchecked.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sections_sha256: String,
}

/// This binary's name and version, as checkpoints record their writer.
pub fn this_diffrec() -> String {
    format!("diffrec {}", env!("CARGO_PKG_VERSION"))
}

impl TrainState {
    /// Where the checkpoint was written by another diffrec version than this one: a sentence
    /// saying so, for errors about records that do not load. `None` when it was this version,
    /// or the checkpoint does not say.
    pub fn other_writer(&self) -> Option<String> {
        let this = this_diffrec();
        (!self.written_by.is_empty() && self.written_by != this)
            .then(|| format!("It was written by {}; this is {this}.", self.written_by))
    }
}

/// Length-prefixed (u64 LE) concatenation of `parts`.
pub fn frame(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 8).sum());
    for part in parts {
        out.extend_from_slice(&(part.len() as u64).to_le_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// The `n` parts of a [`frame`]d buffer.
pub fn unframe(bytes: &[u8], n: usize) -> Result<Vec<Vec<u8>>, TrainError> {
    let mut pos = 0;
    (0..n)
        .map(|_| next_part(bytes, &mut pos).map(<[u8]>::to_vec))
        .collect()
}

/// Every part of a [`frame`]d buffer, up to its end, in place.
fn unframe_all(bytes: &[u8]) -> Result<Vec<&[u8]>, TrainError> {
    let mut pos = 0;
    let mut parts = Vec::new();
    while pos < bytes.len() {
        parts.push(next_part(bytes, &mut pos)?);
    }
    Ok(parts)
}

/// The part starting at `pos` (its length prefix, then its bytes); advances `pos` past it.
fn next_part<'a>(bytes: &'a [u8], pos: &mut usize) -> Result<&'a [u8], TrainError> {
    let bad = || {
        TrainError::Checkpoint(
            "truncated checkpoint (the file is damaged: retrain the run with `--force`)".to_owned(),
        )
    };
    let len_bytes: [u8; 8] = bytes
        .get(*pos..*pos + 8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(bad)?;
    let len = usize::try_from(u64::from_le_bytes(len_bytes)).map_err(|_| bad())?;
    *pos += 8;
    let end = pos.checked_add(len).ok_or_else(bad)?;
    let part = bytes.get(*pos..end).ok_or_else(bad)?;
    *pos = end;
    Ok(part)
}

/// A checkpoint's parts.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub state: TrainState,
    pub model: Vec<u8>,
    /// Empty in `best`.
    pub optim: Vec<u8>,
    /// The parameter average (`train.ema_decay`); `None` without one.
    pub ema: Option<Vec<u8>>,
}

/// Serialises a checkpoint, its state recording the sections' hash: [`encode_parts`], joined.
pub fn encode(
    state: &TrainState,
    model: &[u8],
    optim: &[u8],
    ema: Option<&[u8]>,
) -> Result<Vec<u8>, TrainError> {
    let parts = encode_parts(
        state,
        Bytes::copy_from_slice(model),
        Bytes::copy_from_slice(optim),
        ema.map(Bytes::copy_from_slice),
    )?;
    Ok(parts.concat())
}

/// A checkpoint as the pieces of its layout, the sections as given (not copied): written as
/// one object from them, it takes no second copy of the model and optimizer records in memory
/// (at 12 bytes a parameter with AdamW, the largest allocation of a large model's training).
pub fn encode_parts(
    state: &TrainState,
    model: Bytes,
    optim: Bytes,
    ema: Option<Bytes>,
) -> Result<Vec<Bytes>, TrainError> {
    let sections: Vec<Bytes> = [model, optim].into_iter().chain(ema).collect();
    let views: Vec<&[u8]> = sections.iter().map(|b| &b[..]).collect();
    let state = TrainState {
        sections_sha256: sections_digest(&views),
        ..state.clone()
    };
    let json = serde_json::to_vec(&state).map_err(|e| TrainError::Checkpoint(e.to_string()))?;
    let mut head = MAGIC.to_vec();
    head.extend(frame(&[&json]));
    let mut parts = vec![Bytes::from(head)];
    for section in sections {
        parts.push(Bytes::copy_from_slice(
            &(section.len() as u64).to_le_bytes(),
        ));
        parts.push(section);
    }
    Ok(parts)
}

/// SHA-256 (hex) of `parts` as [`frame`] lays them out, without building the frame.
fn sections_digest(parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    diffrec_data::workspace::hex(&hasher.finalize())
}

/// Splits a checkpoint, read whole, into its parts; one that does not decode, or whose
/// sections do not match the hash its state records, is [`TrainError::Damaged`].
pub fn decode(bytes: &[u8]) -> Result<Checkpoint, TrainError> {
    let (state, sections) = checked(bytes)?;
    let mut sections = sections.into_iter().map(<[u8]>::to_vec);
    let (Some(model), Some(optim)) = (sections.next(), sections.next()) else {
        unreachable!("`checked` counts the sections");
    };
    Ok(Checkpoint {
        state,
        model,
        optim,
        ema: sections.next(),
    })
}

/// The training state of a checkpoint read whole, its sections checked against the hash it
/// records as [`decode`] checks them, without copying them.
pub fn checked_state(bytes: &[u8]) -> Result<TrainState, TrainError> {
    checked(bytes).map(|(state, _)| state)
}

/// The state and the sections (three or four) of a checkpoint read whole, checked.
fn checked(bytes: &[u8]) -> Result<(TrainState, Vec<&[u8]>), TrainError> {
    let damaged = |e: TrainError| match e {
        TrainError::Checkpoint(what) => TrainError::Damaged(what),
        other => other,
    };
    let parts = unframe_all(after_magic(bytes).map_err(damaged)?).map_err(damaged)?;
    let Some((json, sections)) = parts
        .split_first()
        .filter(|(_, s)| (2..=3).contains(&s.len()))
    else {
        return Err(TrainError::Damaged(
            "a checkpoint has three or four sections".to_owned(),
        ));
    };
    let state = parse_state(json).map_err(damaged)?;
    if !state.sections_sha256.is_empty() {
        let got = sections_digest(sections);
        if got != state.sections_sha256 {
            return Err(TrainError::Damaged(format!(
                "its model and optimizer sections do not match the SHA-256 its state records \
                 ({got} vs {}): the file was changed or damaged since it was written",
                state.sections_sha256
            )));
        }
    }
    Ok((state, sections.to_vec()))
}

/// The bytes after the magic, or the error for a file that is not a checkpoint.
fn after_magic(bytes: &[u8]) -> Result<&[u8], TrainError> {
    bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or_else(|| TrainError::Checkpoint("not a diffrec checkpoint".to_owned()))
}

fn parse_state(json: &[u8]) -> Result<TrainState, TrainError> {
    serde_json::from_slice(json).map_err(|e| TrainError::Checkpoint(e.to_string()))
}

/// Where the training state lies in a checkpoint that starts with `head` (at least its first
/// [`STATE_AT`] bytes): the range to read for [`decode_state`].
pub fn state_range(head: &[u8]) -> Result<std::ops::Range<usize>, TrainError> {
    if head.len() < STATE_AT {
        return Err(TrainError::Checkpoint(
            "not a diffrec checkpoint".to_owned(),
        ));
    }
    let len_bytes: [u8; 8] = after_magic(head)?[..8].try_into().expect("8 bytes");
    let len = u64::from_le_bytes(len_bytes) as usize;
    Ok(STATE_AT..STATE_AT.saturating_add(len))
}

/// Bytes before the training state: the magic and the state's length.
pub const STATE_AT: usize = MAGIC.len() + 8;

/// The training state alone, from a checkpoint's first bytes (`head`, at least up to the end
/// of [`state_range`]): the first [`frame`]d part after the magic.
pub fn decode_state(head: &[u8]) -> Result<TrainState, TrainError> {
    let json = unframe(after_magic(head)?, 1)?;
    parse_state(&json[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_another_writer_only() {
        let json = |by: &str| {
            let v = serde_json::to_value(TrainState {
                epoch: 1,
                best_epoch: 1,
                best_recall: 0.5,
                evaluations: vec![],
                losses: vec![1.0],
                epoch_seconds: vec![1.0],
                sampler: StepSampler::new(2),
                train_seconds: 1.0,
                fingerprint: "f".into(),
                item_clusters: vec![],
                cluster_weights: vec![],
                written_by: by.into(),
                fingerprinted: serde_json::Value::Null,
                sections_sha256: String::new(),
            })
            .unwrap();
            // Written before the field existed: no key at all.
            assert_eq!(v.get("written_by").is_none(), by.is_empty());
            serde_json::from_value::<TrainState>(v).unwrap()
        };
        assert_eq!(
            json("").other_writer(),
            None,
            "an older checkpoint says nothing"
        );
        assert_eq!(json(&this_diffrec()).other_writer(), None);
        let note = json("diffrec 0.0.1").other_writer().unwrap();
        assert_eq!(
            note,
            format!(
                "It was written by diffrec 0.0.1; this is diffrec {}.",
                env!("CARGO_PKG_VERSION")
            )
        );
    }

    use diffrec_data::workspace::sha256_hex;

    #[test]
    fn round_trips_and_refuses_truncation() {
        let state = TrainState {
            epoch: 3,
            best_epoch: 0,
            best_recall: -100.0,
            evaluations: vec![],
            losses: vec![1.0, 0.5, 0.25],
            epoch_seconds: vec![1.0; 3],
            sampler: StepSampler::new(4),
            train_seconds: 3.0,
            fingerprint: "abc".into(),
            item_clusters: vec![0, 1, 1],
            cluster_weights: vec![1, 2],
            written_by: this_diffrec(),
            fingerprinted: serde_json::json!({"config": {"model": {"variant": "diffrec"}}}),
            sections_sha256: String::new(),
        };
        let b = encode(&state, b"model", b"opt", None).unwrap();
        let c = decode(&b).unwrap();
        // The state as given, and the hash of the sections as laid out after it.
        let tail = &b[b.len() - frame(&[b"model", b"opt"]).len()..];
        assert_eq!(c.state.sections_sha256, sha256_hex(tail));
        assert_eq!(
            (c.state, c.model.as_slice(), c.optim.as_slice(), c.ema),
            (
                TrainState {
                    sections_sha256: sha256_hex(tail),
                    ..state.clone()
                },
                &b"model"[..],
                &b"opt"[..],
                None
            )
        );
        assert!(decode(&b[..b.len() - 1]).is_err());
        assert!(matches!(decode(b"nope"), Err(TrainError::Damaged(_))));
        // The pieces are the layout, the sections themselves among them.
        let model = Bytes::from_static(b"model");
        let parts = encode_parts(&state, model.clone(), Bytes::new(), None).unwrap();
        assert_eq!(
            parts[2].as_ptr(),
            model.as_ptr(),
            "the model's buffer, not a copy"
        );
        let joined = parts.concat();
        assert_eq!(&joined[..4], b"DRCK");
        assert_eq!(decode(&joined).unwrap().model, b"model");
        assert_eq!(checked_state(&joined).unwrap().epoch, 3);
        let mut cut = joined.clone();
        cut[11] = 0x7f; // the state's length (u64 LE at 4..12): far past the end
        assert!(matches!(checked_state(&cut), Err(TrainError::Damaged(_))));
        // A byte changed in a section (same size) is refused; in one written before the hash
        // was recorded it is not seen.
        let mut flipped = b.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let e = decode(&flipped).unwrap_err();
        assert!(
            matches!(&e, TrainError::Damaged(m) if m.contains("do not match the SHA-256")),
            "{e}"
        );
        let old = |sections: &[&[u8]]| {
            let json = serde_json::to_vec(&state).unwrap();
            [&MAGIC[..], &frame(&[&json]), &frame(sections)].concat()
        };
        assert_eq!(decode(&old(&[b"modeL", b"opt"])).unwrap().model, b"modeL");
        let b = encode(&state, b"model", b"", Some(b"avg")).unwrap();
        let c = decode(&b).unwrap();
        assert_eq!(
            (c.model.as_slice(), c.optim.as_slice(), c.ema.as_deref()),
            (&b"model"[..], &b""[..], Some(&b"avg"[..]))
        );
        assert!(decode(&b[..b.len() - 1]).is_err());
    }
}
