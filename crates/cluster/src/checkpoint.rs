//! LightGCN's checkpoint (`cluster/lightgcn.ckpt`): what a killed cluster stage resumes from.
//!
//! Layout: the magic line, a little-endian u64 header length, the JSON header (the run's
//! fingerprint, the array length, Adam's step count, whether best embeddings are present, the
//! [`Counters`]), then little-endian f32 arrays of that length: the ego embeddings, Adam's first
//! and second moments and, when present, the best evaluation's final embeddings.
//!
//! The fingerprint is a hash of everything that shapes pre-training (the `cluster.lightgcn`
//! settings, the seed, the evaluation cut-offs, the ingest outputs' hashes and this diffrec's
//! version); a checkpoint of another fingerprint is not resumed from.

use std::collections::BTreeMap;

use crate::config::LightGcnConfig;
use crate::error::{ClusterError, Result};
use crate::lightgcn::{Counters, Snapshot};

/// The workspace key. Written after every LightGCN evaluation and when pre-training ends,
/// deleted when the stage completes.
pub const KEY: &str = "cluster/lightgcn.ckpt";

const MAGIC: &[u8] = b"diffrec lightgcn checkpoint v1\n";

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    fingerprint: String,
    len: usize,
    adam_step: i32,
    has_best: bool,
    counters: Counters,
}

/// The fingerprint of a pre-training run: a SHA-256 over its settings and inputs.
pub fn fingerprint(
    cfg: &LightGcnConfig,
    seed: u64,
    ks: &[usize],
    inputs: &BTreeMap<String, String>,
) -> String {
    let what = serde_json::json!({
        "lightgcn": cfg, "seed": seed, "ks": ks, "inputs": inputs,
        "version": env!("CARGO_PKG_VERSION"),
    });
    diffrec_data::workspace::sha256_hex(what.to_string().as_bytes())
}

/// The checkpoint file of `snap`.
pub fn encode<V: AsRef<[f32]>>(fingerprint: &str, snap: &Snapshot<V>) -> Vec<u8> {
    let len = snap.ego.as_ref().len();
    let header = Header {
        fingerprint: fingerprint.to_owned(),
        len,
        adam_step: snap.adam_step,
        has_best: snap.best.is_some(),
        counters: snap.counters.clone(),
    };
    let header = serde_json::to_vec(&header).expect("the header serialises");
    let arrays = [&snap.ego, &snap.adam_m, &snap.adam_v]
        .into_iter()
        .chain(snap.best.as_ref());
    let count = 3 + usize::from(snap.best.is_some());
    let mut out = Vec::with_capacity(MAGIC.len() + 8 + header.len() + 4 * len * count);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    for a in arrays {
        out.extend(a.as_ref().iter().flat_map(|v| v.to_le_bytes()));
    }
    out
}

/// The fingerprint and snapshot of a checkpoint file; [`ClusterError::Corrupt`] says what is
/// wrong with one that cannot be read.
pub fn decode(bytes: &[u8]) -> Result<(String, Snapshot)> {
    decode_parts(bytes).map_err(|message| ClusterError::Corrupt {
        key: KEY.to_owned(),
        message,
    })
}

fn decode_parts(bytes: &[u8]) -> std::result::Result<(String, Snapshot), String> {
    let rest = bytes
        .strip_prefix(MAGIC)
        .ok_or("not a LightGCN checkpoint (no magic line)")?;
    let (len, rest) = rest
        .split_first_chunk::<8>()
        .ok_or("truncated before the header length")?;
    let header_len = usize::try_from(u64::from_le_bytes(*len)).map_err(|e| e.to_string())?;
    if header_len > rest.len() {
        return Err(format!(
            "a header of {header_len} bytes, but only {} follow",
            rest.len()
        ));
    }
    let (header, payload) = rest.split_at(header_len);
    let h: Header =
        serde_json::from_slice(header).map_err(|e| format!("unreadable header: {e}"))?;
    let count = 3 + usize::from(h.has_best);
    let want = h
        .len
        .checked_mul(4 * count)
        .ok_or("array length overflows")?;
    if payload.len() != want {
        return Err(format!(
            "{count} arrays of {} values need {want} bytes, the file has {}",
            h.len,
            payload.len()
        ));
    }
    let mut arrays = payload.chunks_exact(4 * h.len.max(1)).map(|chunk| {
        chunk
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect::<Vec<f32>>()
    });
    let mut next = || arrays.next().unwrap_or_default();
    let (ego, adam_m, adam_v) = (next(), next(), next());
    let best = h.has_best.then(next);
    Ok((
        h.fingerprint,
        Snapshot {
            counters: h.counters,
            adam_step: h.adam_step,
            ego,
            adam_m,
            adam_v,
            best,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use diffrec_data::metrics::Evaluation;

    fn snapshot(best: bool) -> Snapshot {
        Snapshot {
            counters: Counters {
                epochs_run: 10,
                best_recall: Some(0.1139),
                best_epoch: 5,
                since_best: 1,
                done: false,
                seconds_before: 12.5,
                evaluations: vec![Evaluation {
                    epoch: 5,
                    loss: 0.1 + 0.2,
                    epoch_seconds: 2.03,
                    eval_seconds: 0.43,
                    valid: [("recall@20".to_string(), 0.11394999999999999)].into(),
                    test: [("ndcg@20".to_string(), 1.0 / 3.0)].into(),
                }],
            },
            adam_step: 500,
            ego: vec![1.0, -2.5, f32::MIN_POSITIVE],
            adam_m: vec![0.1, 0.2, 0.3],
            adam_v: vec![1e-8, 2e-8, 3e-8],
            best: best.then(|| vec![7.0, 8.0, 9.0]),
        }
    }

    #[test]
    fn round_trips_exactly() {
        for best in [true, false] {
            let snap = snapshot(best);
            let bytes = encode("abc", &snap);
            // magic + length + header + 3 or 4 arrays of 3 f32.
            assert!(bytes.ends_with(&if best { 9.0f32 } else { 3e-8f32 }.to_le_bytes()));
            let (fp, back) = decode(&bytes).unwrap();
            assert_eq!(fp, "abc");
            assert_eq!(back, snap, "every counter, float and array as written");
        }
    }

    #[test]
    fn damaged_files_are_named_not_read() {
        let bytes = encode("abc", &snapshot(true));
        let err = |b: &[u8]| decode(b).unwrap_err().to_string();
        assert!(err(b"PAR1").contains("no magic"));
        assert!(err(&bytes[..MAGIC.len() + 3]).contains("header length"));
        assert!(err(&bytes[..bytes.len() - 1]).contains("need 48 bytes, the file has 47"));
        let mut flipped = bytes.clone();
        flipped[MAGIC.len() + 8] = b'[';
        assert!(err(&flipped).contains("unreadable header"));
    }

    #[test]
    fn the_fingerprint_follows_settings_seed_and_inputs() {
        let cfg = LightGcnConfig::default();
        let inputs: BTreeMap<String, String> =
            [("ingest/train.parquet".into(), "h1".into())].into();
        let base = fingerprint(&cfg, 1, &[20], &inputs);
        assert_eq!(base, fingerprint(&cfg, 1, &[20], &inputs));
        let other_lr = LightGcnConfig {
            lr: cfg.lr * 2.0,
            ..cfg.clone()
        };
        let other_data: BTreeMap<String, String> =
            [("ingest/train.parquet".into(), "h2".into())].into();
        for changed in [
            fingerprint(&other_lr, 1, &[20], &inputs),
            fingerprint(&cfg, 2, &[20], &inputs),
            fingerprint(&cfg, 1, &[10, 20], &inputs),
            fingerprint(&cfg, 1, &[20], &other_data),
        ] {
            assert_ne!(changed, base);
        }
    }
}
