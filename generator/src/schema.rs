//! Validation of a JSON value against a Kubernetes structural OpenAPI v3 schema
//! (`CustomResourceDefinition.spec.versions[].schema.openAPIV3Schema`).
//!
//! It follows the apiserver's rules (types, `required`, `enum`, `pattern`, length, item and
//! numeric bounds, `nullable`, `x-kubernetes-int-or-string`, `x-kubernetes-preserve-unknown-fields`,
//! `allOf`/`anyOf`/`oneOf`/`not`) and, like `kubectl --validate=strict`, reports unknown fields
//! instead of pruning them. CEL rules (`x-kubernetes-validations`) are not evaluated.
//! Every error is reported, each with its field path.

use std::collections::HashMap;
use std::fmt;

use regex::Regex;
use serde_json::Value;

/// One schema violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Field path, for example `spec.controlPlane.replicas` or `spec.workers[0].name`.
    pub path: String,
    /// The rule that failed, for example `must be at least 1 (got 0)`.
    pub rule: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.rule)
        } else {
            write!(f, "{}: {}", self.path, self.rule)
        }
    }
}

/// A validator that caches compiled patterns across calls.
#[derive(Default)]
pub struct Validator {
    patterns: HashMap<String, Option<Regex>>,
}

impl Validator {
    /// A new validator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Validates `value` against `schema`; `path` is the path of `value` itself.
    pub fn validate(&mut self, schema: &Value, value: &Value, path: &str) -> Vec<Violation> {
        let mut out = Vec::new();
        self.walk(schema, value, path, true, &mut out);
        out
    }

    fn walk(
        &mut self,
        schema: &Value,
        value: &Value,
        path: &str,
        strict: bool,
        out: &mut Vec<Violation>,
    ) {
        let Some(s) = schema.as_object() else { return };
        let mut push = |rule: String| {
            out.push(Violation {
                path: path.to_string(),
                rule,
            })
        };
        if value.is_null() {
            let nullable = s.get("nullable").and_then(Value::as_bool).unwrap_or(false);
            if !nullable && s.contains_key("type") {
                push(format!("must be {} (got null)", type_phrase(s.get("type"))));
            }
            return;
        }
        let int_or_string = flag(s, "x-kubernetes-int-or-string");
        if int_or_string {
            if !(value.is_string() || is_integer(value)) {
                push(format!(
                    "must be an integer or a string (got {})",
                    kind_of(value)
                ));
                return;
            }
        } else if let Some(t) = s.get("type").and_then(Value::as_str) {
            let ok = match t {
                "object" => value.is_object(),
                "array" => value.is_array(),
                "string" => value.is_string(),
                "integer" => is_integer(value),
                "number" => value.is_number(),
                "boolean" => value.is_boolean(),
                _ => true,
            };
            if !ok {
                push(format!(
                    "must be {} (got {})",
                    type_phrase(s.get("type")),
                    kind_of(value)
                ));
                return;
            }
        }

        if let Some(choices) = s.get("enum").and_then(Value::as_array)
            && !choices.contains(value)
        {
            let list: Vec<String> = choices.iter().map(short).collect();
            push(format!(
                "must be one of {} (got {})",
                list.join(", "),
                short(value)
            ));
        }

        match value {
            Value::String(text) => {
                let chars = text.chars().count() as u64;
                if let Some(min) = s.get("minLength").and_then(Value::as_u64)
                    && chars < min
                {
                    push(format!(
                        "must be at least {min} characters long (got {chars})"
                    ));
                }
                if let Some(max) = s.get("maxLength").and_then(Value::as_u64)
                    && chars > max
                {
                    push(format!(
                        "must be at most {max} characters long (got {chars})"
                    ));
                }
                if let Some(pattern) = s.get("pattern").and_then(Value::as_str)
                    && let Some(re) = self.pattern(pattern)
                    && !re.is_match(text)
                {
                    push(format!(
                        "must match the pattern {pattern} (got {})",
                        short(value)
                    ));
                }
            }
            Value::Number(n) => {
                let x = n.as_f64().unwrap_or(0.0);
                let excl_min = flag(s, "exclusiveMinimum");
                let excl_max = flag(s, "exclusiveMaximum");
                if let Some(min) = s.get("minimum").and_then(Value::as_f64)
                    && (x < min || (excl_min && x == min))
                {
                    let word = if excl_min { "greater than" } else { "at least" };
                    push(format!("must be {word} {} (got {n})", num(min)));
                }
                if let Some(max) = s.get("maximum").and_then(Value::as_f64)
                    && (x > max || (excl_max && x == max))
                {
                    let word = if excl_max { "less than" } else { "at most" };
                    push(format!("must be {word} {} (got {n})", num(max)));
                }
            }
            Value::Array(items) => {
                let len = items.len() as u64;
                if let Some(min) = s.get("minItems").and_then(Value::as_u64)
                    && len < min
                {
                    push(format!("must have at least {min} item(s) (got {len})"));
                }
                if let Some(max) = s.get("maxItems").and_then(Value::as_u64)
                    && len > max
                {
                    push(format!("must have at most {max} item(s) (got {len})"));
                }
                if flag(s, "uniqueItems") {
                    for (i, a) in items.iter().enumerate() {
                        if items[..i].contains(a) {
                            push(format!("must not repeat items (item {i} is a duplicate)"));
                        }
                    }
                }
            }
            Value::Object(map) => {
                let len = map.len() as u64;
                if let Some(min) = s.get("minProperties").and_then(Value::as_u64)
                    && len < min
                {
                    push(format!("must have at least {min} field(s) (got {len})"));
                }
                if let Some(max) = s.get("maxProperties").and_then(Value::as_u64)
                    && len > max
                {
                    push(format!("must have at most {max} field(s) (got {len})"));
                }
                if let Some(required) = s.get("required").and_then(Value::as_array) {
                    for field in required.iter().filter_map(Value::as_str) {
                        if !map.contains_key(field) {
                            push(format!("missing required field \"{field}\""));
                        }
                    }
                }
            }
            _ => {}
        }

        // Children.
        match value {
            Value::Array(items) => {
                if let Some(item_schema) = s.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.walk(item_schema, item, &format!("{path}[{i}]"), strict, out);
                    }
                }
            }
            Value::Object(map) => {
                let props = s.get("properties").and_then(Value::as_object);
                let additional = s.get("additionalProperties");
                let preserve = flag(s, "x-kubernetes-preserve-unknown-fields");
                for (key, child) in map {
                    let child_path = join(path, key);
                    if let Some(child_schema) = props.and_then(|p| p.get(key)) {
                        self.walk(child_schema, child, &child_path, strict, out);
                    } else if let Some(extra) = additional.filter(|a| a.is_object()) {
                        self.walk(extra, child, &child_path, strict, out);
                    } else if strict
                        && !preserve
                        && additional != Some(&Value::Bool(true))
                        && (props.is_some()
                            || s.get("type").and_then(Value::as_str) == Some("object"))
                    {
                        out.push(Violation {
                            path: child_path,
                            rule: "unknown field".to_string(),
                        });
                    }
                }
            }
            _ => {}
        }

        // Combinators: value-validation only (structural schemas forbid new fields in them).
        if let Some(all) = s.get("allOf").and_then(Value::as_array) {
            for sub in all {
                self.walk(sub, value, path, false, out);
            }
        }
        if let Some(any) = s.get("anyOf").and_then(Value::as_array) {
            let passing = any
                .iter()
                .filter(|sub| self.check(sub, value, path))
                .count();
            if passing == 0 && !any.is_empty() {
                out.push(Violation {
                    path: path.to_string(),
                    rule: "must match at least one of the allowed forms (anyOf)".to_string(),
                });
            }
        }
        if let Some(one) = s.get("oneOf").and_then(Value::as_array) {
            let passing = one
                .iter()
                .filter(|sub| self.check(sub, value, path))
                .count();
            if passing != 1 && !one.is_empty() {
                out.push(Violation {
                    path: path.to_string(),
                    rule: format!(
                        "must match exactly one of the allowed forms (oneOf; matched {passing})"
                    ),
                });
            }
        }
        if let Some(not) = s.get("not")
            && self.check(not, value, path)
        {
            out.push(Violation {
                path: path.to_string(),
                rule: "must not match the excluded form (not)".to_string(),
            });
        }
    }

    fn check(&mut self, schema: &Value, value: &Value, path: &str) -> bool {
        let mut tmp = Vec::new();
        self.walk(schema, value, path, false, &mut tmp);
        tmp.is_empty()
    }

    fn pattern(&mut self, pattern: &str) -> Option<&Regex> {
        self.patterns
            .entry(pattern.to_string())
            .or_insert_with(|| Regex::new(pattern).ok())
            .as_ref()
    }
}

fn flag(s: &serde_json::Map<String, Value>, key: &str) -> bool {
    s.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn is_integer(v: &Value) -> bool {
    match v {
        Value::Number(n) => {
            n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => false,
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn type_phrase(t: Option<&Value>) -> String {
    match t.and_then(Value::as_str) {
        Some("object") => "a mapping".into(),
        Some("array") => "a list".into(),
        Some("string") => "a string".into(),
        Some("integer") => "an integer".into(),
        Some("number") => "a number".into(),
        Some("boolean") => "a boolean".into(),
        Some(other) => other.into(),
        None => "a value".into(),
    }
}

fn num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

/// A short, single-line rendering of a value for messages.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        let cut: String = s.chars().take(57).collect();
        format!("{cut}...")
    } else {
        s
    }
}

/// Joins a field path: `a` + `b` = `a.b`.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errs(schema: Value, value: Value) -> Vec<String> {
        Validator::new()
            .validate(&schema, &value, "spec")
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn reports_every_violation_with_its_path() {
        let schema = json!({"type": "object", "required": ["a"], "properties": {
            "n": {"type": "integer", "minimum": 1},
            "s": {"type": "string", "pattern": "^[a-z]+$"}}});
        let got = errs(schema, json!({"n": 0, "s": "X", "zz": 1}));
        assert_eq!(
            got,
            vec![
                "spec: missing required field \"a\"",
                "spec.n: must be at least 1 (got 0)",
                "spec.s: must match the pattern ^[a-z]+$ (got \"X\")",
                "spec.zz: unknown field",
            ]
        );
    }

    #[test]
    fn int_or_string_and_nullable_and_preserve_unknown_fields() {
        let schema = json!({"type": "object", "properties": {
            "p": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]},
            "q": {"type": "string", "nullable": true},
            "r": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}});
        assert!(
            errs(
                schema.clone(),
                json!({"p": "50%", "q": null, "r": {"any": [1]}})
            )
            .is_empty()
        );
        assert_eq!(
            errs(schema, json!({"p": true})),
            vec!["spec.p: must be an integer or a string (got a boolean)"]
        );
    }

    #[test]
    fn wrong_type_stops_descent() {
        let schema = json!({"type": "object", "properties": {"l": {"type": "array", "items": {"type": "string"}}}});
        assert_eq!(
            errs(schema, json!({"l": "x"})),
            vec!["spec.l: must be a list (got a string)"]
        );
    }
}
