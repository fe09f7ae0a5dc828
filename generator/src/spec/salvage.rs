//! Running the semantic checks on a request that failed its schema.
//!
//! A structural problem (a missing required field, a wrong type, an unknown field) must not hide
//! the other problems of a request. [`salvage`] turns a value that failed the schema into one
//! that deserializes: every value at a violation is removed (optional fields, unknown fields) or
//! replaced by a placeholder built from its schema (required fields, list items), and every
//! missing required field gets a placeholder. The paths it changed are returned, so that
//! [`relevant`] can drop the semantic findings about placeholders: what remains are real problems
//! of the parts that did parse.

use serde_json::{Map, Value};

use crate::schema::Violation;

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// Splits `spec.workers[0].name` (relative to `base`, here `spec`) into steps.
fn steps(path: &str, base: &str) -> Option<Vec<Step>> {
    let rest = path.strip_prefix(base)?;
    let mut out = Vec::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '.' => {
                let mut key = String::new();
                while let Some(&n) = chars.peek() {
                    if n == '.' || n == '[' {
                        break;
                    }
                    key.push(n);
                    chars.next();
                }
                out.push(Step::Key(key));
            }
            '[' => {
                let mut digits = String::new();
                for n in chars.by_ref() {
                    if n == ']' {
                        break;
                    }
                    digits.push(n);
                }
                out.push(Step::Index(digits.parse().ok()?));
            }
            _ => return None,
        }
    }
    Some(out)
}

/// The subschema of a child: `properties`, else `additionalProperties`, else `items`.
fn child_schema<'a>(schema: &'a Value, step: &Step) -> Option<&'a Value> {
    match step {
        Step::Key(k) => schema
            .get("properties")
            .and_then(|p| p.get(k))
            .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object())),
        Step::Index(_) => schema.get("items"),
    }
}

fn required(schema: &Value) -> impl Iterator<Item = &str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

/// A value that satisfies `schema`'s types and required fields, with no meaning of its own.
fn placeholder(schema: &Value) -> Value {
    if let Some(first) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let mut map = Map::new();
            for field in required(schema) {
                let sub = schema
                    .get("properties")
                    .and_then(|p| p.get(field))
                    .unwrap_or(&Value::Null);
                map.insert(field.to_string(), placeholder(sub));
            }
            Value::Object(map)
        }
        Some("array") => Value::Array(vec![]),
        Some("string") => Value::String(String::new()),
        Some("integer") | Some("number") => schema
            .get("minimum")
            .and_then(Value::as_i64)
            .map_or(Value::from(0), Value::from),
        Some("boolean") => Value::Bool(false),
        _ => Value::Null,
    }
}

/// Replaces (or removes, for optional and unknown fields) the value at `steps`.
fn replace_at(schema: &Value, value: &mut Value, steps: &[Step]) -> Option<()> {
    let (last, parents) = steps.split_last()?;
    let mut schema = schema;
    let mut value = value;
    for step in parents {
        schema = child_schema(schema, step)?;
        value = match step {
            Step::Key(k) => value.as_object_mut()?.get_mut(k)?,
            Step::Index(i) => value.as_array_mut()?.get_mut(*i)?,
        };
    }
    match last {
        Step::Key(k) => {
            let map = value.as_object_mut()?;
            let known = schema.get("properties").and_then(|p| p.get(k));
            let is_required = required(schema).any(|r| r == k);
            match known {
                Some(sub) if is_required => {
                    map.insert(k.clone(), placeholder(sub));
                }
                _ => {
                    map.remove(k);
                }
            }
        }
        Step::Index(i) => {
            let item = placeholder(schema.get("items")?);
            *value.as_array_mut()?.get_mut(*i)? = item;
        }
    }
    Some(())
}

/// Adds a placeholder for every missing required field, recording its path.
fn fill_required(schema: &Value, value: &mut Value, path: &str, changed: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for field in required(schema) {
                if !map.contains_key(field) {
                    let sub = schema
                        .get("properties")
                        .and_then(|p| p.get(field))
                        .unwrap_or(&Value::Null);
                    map.insert(field.to_string(), placeholder(sub));
                    changed.push(crate::schema::join(path, field));
                }
            }
            for (key, child) in map.iter_mut() {
                if let Some(sub) = child_schema(schema, &Step::Key(key.clone())) {
                    fill_required(sub, child, &crate::schema::join(path, key), changed);
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    fill_required(sub, item, &format!("{path}[{i}]"), changed);
                }
            }
        }
        _ => {}
    }
}

/// Makes `value` (at `base`) satisfy `schema`'s structure despite `violations`; returns the
/// paths it changed, or `None` when a violation's path cannot be followed.
pub fn salvage(
    schema: &Value,
    value: &mut Value,
    base: &str,
    violations: &[Violation],
) -> Option<Vec<String>> {
    let mut changed = Vec::new();
    if !value.is_object() {
        *value = placeholder(schema);
        changed.push(base.to_string());
    }
    for v in violations {
        if !under(&v.path, base) || v.rule.starts_with("missing required field") {
            continue;
        }
        if v.path == base {
            *value = placeholder(schema);
        } else {
            replace_at(schema, value, &steps(&v.path, base)?)?;
        }
        changed.push(v.path.clone());
    }
    fill_required(schema, value, base, &mut changed);
    Some(changed)
}

/// Whether `path` is `base` or a field below it.
pub fn under(path: &str, base: &str) -> bool {
    path == base
        || path
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

/// Whether a semantic finding is about a real value, not about a placeholder that
/// [`salvage`] put in (or about something that depends on one).
pub fn relevant(finding: &Violation, changed: &[String]) -> bool {
    let provider_unknown = changed.iter().any(|c| c == "spec.infrastructure.provider");
    if provider_unknown {
        // Every provider-specific check depends on the provider.
        let p = finding.path.as_str();
        if under(p, "spec.infrastructure")
            || p.contains(".machine")
            || p == "spec.controlPlane.endpoint"
        {
            return false;
        }
    }
    !changed.iter().any(|c| under(&finding.path, c))
}

/// Orders field paths as a reader expects: by field, with list indices numerically.
pub fn path_key(path: &str) -> Vec<(String, usize)> {
    let mut key = Vec::new();
    for part in path.split('.') {
        let (name, rest) = part.split_once('[').unwrap_or((part, ""));
        key.push((name.to_string(), 0));
        for idx in rest.split('[') {
            if let Ok(i) = idx.trim_end_matches(']').parse::<usize>() {
                key.push((String::new(), i + 1));
            }
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v(path: &str, rule: &str) -> Violation {
        Violation {
            path: path.into(),
            rule: rule.into(),
        }
    }

    #[test]
    fn salvage_fills_required_and_replaces_bad_values() {
        let schema = json!({"type": "object", "required": ["a", "m"], "properties": {
            "a": {"type": "integer", "minimum": 1},
            "m": {"type": "object", "required": ["x"], "properties": {"x": {"type": "string"}}},
            "o": {"type": "string"},
            "l": {"type": "array", "items": {"type": "object", "required": ["n"],
                  "properties": {"n": {"type": "string"}}}}}});
        let mut value = json!({"a": "three", "o": 5, "zz": 1, "l": [{"n": "ok"}, 7]});
        let violations = [
            v("spec.a", "must be an integer (got a string)"),
            v("spec.o", "must be a string (got an integer)"),
            v("spec.zz", "unknown field"),
            v("spec.l[1]", "must be a mapping (got an integer)"),
            v("spec", "missing required field \"m\""),
        ];
        let changed = salvage(&schema, &mut value, "spec", &violations).unwrap();
        assert_eq!(
            value,
            json!({"a": 1, "l": [{"n": "ok"}, {"n": ""}], "m": {"x": ""}})
        );
        assert_eq!(
            changed,
            vec!["spec.a", "spec.o", "spec.zz", "spec.l[1]", "spec.m"]
        );
    }

    #[test]
    fn findings_about_placeholders_are_dropped() {
        let changed = vec!["spec.controlPlane.machine".to_string()];
        assert!(!relevant(
            &v("spec.controlPlane.machine.cpus", "r"),
            &changed
        ));
        assert!(relevant(&v("spec.controlPlane.replicas", "r"), &changed));
        assert!(relevant(&v("spec.controlPlane.machineX", "r"), &changed));
        let changed = vec!["spec.infrastructure.provider".to_string()];
        assert!(!relevant(&v("spec.infrastructure.vsphere", "r"), &changed));
        assert!(!relevant(&v("spec.workers[0].machine.cpus", "r"), &changed));
        assert!(relevant(&v("spec.network.pods[0]", "r"), &changed));
    }

    #[test]
    fn paths_sort_by_field_then_index_numerically() {
        let mut paths = vec![
            "spec.workers[10].name",
            "spec.workers[2].name",
            "kind",
            "spec.access",
        ];
        paths.sort_by_key(|p| path_key(p));
        assert_eq!(
            paths,
            vec![
                "kind",
                "spec.access",
                "spec.workers[2].name",
                "spec.workers[10].name"
            ]
        );
    }
}
