//! Editing untrusted JSON values (manifests from the spec, a download or a provider release)
//! without panicking.
//!
//! `serde_json`'s `value[key] = ...` panics when `value` is neither an object nor null: a
//! manifest with `metadata: x` or `labels: [a]` would otherwise take down the task that reads
//! it. [`object_mut`] walks a path, creating missing (or null) objects, and names the first
//! field that is something else.

use serde_json::{Map, Value};

/// The object at `path` under `v`, created where missing or null. `Err` names the dotted path
/// of the first field on the way that holds something other than an object, and what it holds.
pub fn object_mut<'a>(
    v: &'a mut Value,
    path: &[&str],
) -> Result<&'a mut Map<String, Value>, String> {
    let mut at = v;
    let mut walked = Vec::with_capacity(path.len());
    for key in path {
        if at.is_null() {
            *at = Value::Object(Map::new());
        }
        let Value::Object(map) = at else {
            return Err(not_an_object(&walked, at));
        };
        walked.push(*key);
        at = map.entry(key.to_string()).or_insert(Value::Null);
    }
    if at.is_null() {
        *at = Value::Object(Map::new());
    }
    match at {
        Value::Object(map) => Ok(map),
        other => Err(not_an_object(&walked, other)),
    }
}

fn not_an_object(path: &[&str], found: &Value) -> String {
    let what = match found {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    };
    let field = if path.is_empty() {
        "the document".to_string()
    } else {
        path.join(".")
    };
    format!("{field} must be a mapping (got {what})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn missing_and_null_objects_are_created() {
        let mut v = json!({"metadata": {"name": "a", "labels": null}});
        object_mut(&mut v, &["metadata", "labels"])
            .unwrap()
            .insert("k".into(), json!("v"));
        assert_eq!(v["metadata"]["labels"]["k"], "v");
        let mut v = json!({});
        object_mut(&mut v, &["spec", "template", "spec"]).unwrap();
        assert_eq!(v, json!({"spec": {"template": {"spec": {}}}}));
    }

    #[test]
    fn a_field_of_another_type_is_an_error_naming_it_not_a_panic() {
        let mut v = json!({"metadata": {"labels": "x"}});
        assert_eq!(
            object_mut(&mut v, &["metadata", "labels"]).unwrap_err(),
            "metadata.labels must be a mapping (got a string)"
        );
        let mut v = json!({"metadata": ["a"]});
        assert_eq!(
            object_mut(&mut v, &["metadata", "labels"]).unwrap_err(),
            "metadata must be a mapping (got a list)"
        );
        let mut v = json!("text");
        assert_eq!(
            object_mut(&mut v, &["metadata"]).unwrap_err(),
            "the document must be a mapping (got a string)"
        );
    }
}
