//! Where two settings trees differ, leaf by leaf: what a stage that runs again because its
//! settings changed names, and what the evaluate, recommend and train stages name when a run
//! was trained with other settings than the pipeline's.

use serde_json::Value;

/// Appends `` `path` a (trained) vs b (now) `` for every leaf where `a` and `b` differ; `path`
/// is the dotted key of `a` and `b` (empty at the top). A key absent or null is shown as "the
/// default": settings at their default are left out of the trees or left unset.
pub fn differing_keys(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    differing_keys_as(path, a, b, "trained", out)
}

/// [`differing_keys`], with `a` labelled `was` (`ingested`, `clustered`) instead of `trained`.
pub fn differing_keys_as(path: &str, a: &Value, b: &Value, was: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let (u, v) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                let key = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                differing_keys_as(&key, u, v, was, out);
            }
        }
        _ if a != b => out.push(format!(
            "`{path}` {} ({was}) vs {} (now)",
            shown(a),
            shown(b)
        )),
        _ => {}
    }
}

/// How an input (a name and its SHA-256) differs between two records of a stage's inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputChange {
    /// Read both times, other content.
    Changed,
    /// Read now only.
    New,
    /// Read before only.
    Gone,
}

/// The inputs that differ between `was` and `now` (name → SHA-256), by name.
pub fn differing_inputs<'a>(
    was: &'a std::collections::BTreeMap<String, String>,
    now: &'a std::collections::BTreeMap<String, String>,
) -> Vec<(&'a str, InputChange)> {
    let names: std::collections::BTreeSet<&String> = was.keys().chain(now.keys()).collect();
    names
        .into_iter()
        .filter_map(|name| {
            let change = match (was.get(name), now.get(name)) {
                (Some(a), Some(b)) if a != b => InputChange::Changed,
                (None, Some(_)) => InputChange::New,
                (Some(_), None) => InputChange::Gone,
                _ => return None,
            };
            Some((name.as_str(), change))
        })
        .collect()
}

fn shown(v: &Value) -> String {
    match v {
        Value::Null => "the default".into(),
        v => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_differing_leaf_is_named_by_its_dotted_key() {
        let trained = json!({"train": {"lr": 0.0001, "seed": 1}, "model": {"dims": [300]}});
        let now = json!({"train": {"lr": 0.001, "seed": 1}, "model": {"dims": [600]}, "x": 2});
        let mut out = Vec::new();
        differing_keys("", &trained, &now, &mut out);
        assert_eq!(
            out,
            [
                "`model.dims` [300] (trained) vs [600] (now)",
                "`train.lr` 0.0001 (trained) vs 0.001 (now)",
                "`x` the default (trained) vs 2 (now)",
            ]
        );
        out.clear();
        differing_keys("model", &json!({"a": 1}), &json!({"a": 1}), &mut out);
        assert!(out.is_empty(), "{out:?}");
    }
}
