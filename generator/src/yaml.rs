//! Reading YAML that comes from outside (requests, add-on manifests, fetched files) into
//! `serde_json::Value`s, with two rules serde_norway 0.9 (the maintained fork of the archived
//! serde_yaml, with the same parser and the same errors) does not enforce on its own:
//!
//! - **No duplicate keys.** serde_json's `Value` keeps the last of two equal keys and drops the
//!   first without a word; here a repeated key is an error naming both lines.
//! - **Bounded alias expansion.** An alias (`*name`) is a copy of what its anchor names.
//!   serde_norway bounds how many aliases it follows (100 per YAML event), not how much they
//!   copy: a 1 MB text whose aliases all name one large scalar expands to tens of gigabytes.
//!   Here the expanded documents of a text may be at most [`expansion_limit`] bytes, counting
//!   every value as [`NODE_COST`] bytes plus its text (keys included), so what a text can make
//!   the parser allocate is proportional to its size. A text without aliases stays well below
//!   the limit: every value takes text of its own, at least a character and a separator, so
//!   such a text costs at most about 17 bytes per byte (8 for the densest real forms, `[1,1]`).
//!
//! Everything else is exactly what `serde_json::Value::deserialize` over serde_norway gives.

use std::cell::{Cell, RefCell};
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// What every value (scalar, sequence, mapping or key) of an expanded document costs, in bytes,
/// on top of its text.
pub const NODE_COST: usize = 16;
/// The expanded documents may cost this many times the size of the text...
pub const EXPANSION_FACTOR: usize = 32;
/// ...or this many bytes, whichever is larger.
pub const MIN_EXPANSION_LIMIT: usize = 16 * 1024 * 1024;

/// How many bytes the expanded documents of a text of `text_len` bytes may cost.
pub fn expansion_limit(text_len: usize) -> usize {
    text_len
        .saturating_mul(EXPANSION_FACTOR)
        .max(MIN_EXPANSION_LIMIT)
}

/// A position in the text, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

/// Which rule a text broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YamlErrorKind {
    /// Not well-formed YAML, or a value `serde_json::Value` cannot hold.
    Syntax,
    /// A mapping repeats a key.
    DuplicateKey,
    /// Aliases expand the text beyond [`expansion_limit`], or are followed too often.
    AliasExpansion,
}

/// A text that [`parse_documents`] refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// The document, from 1, counting every document of the stream (empty ones too).
    pub document: usize,
    /// Where in the text, when known.
    pub location: Option<Location>,
    /// Which rule.
    pub kind: YamlErrorKind,
    /// What is wrong, without the document or the location.
    pub message: String,
}

impl YamlError {
    /// The error without its document number (`line L, column C: rule`), for callers that name
    /// the document themselves.
    pub fn within_document(&self) -> String {
        match self.location {
            Some(at) => format!("line {}, column {}: {}", at.line, at.column, self.message),
            None => self.message.clone(),
        }
    }
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        if let Some(at) = self.location {
            write!(f, ", line {}, column {}", at.line, at.column)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for YamlError {}

/// Parses a (multi-document) YAML text into its documents, in order. Empty documents (nothing,
/// or only `null`/`~`, as a stray `---` makes) are skipped; [`YamlError::document`] still
/// counts them, so it names the document as an editor would.
///
/// A repeated key in any mapping is an error, and so is a text whose aliases expand it beyond
/// [`expansion_limit`] of its size (see the module documentation).
pub fn parse_documents(text: &str) -> Result<Vec<Value>, YamlError> {
    Ok(parse_numbered(text)?.into_iter().map(|(_, v)| v).collect())
}

/// [`parse_documents`], each document with its 1-based number in the text (empty documents
/// counted), so that a later check can name the document as an editor would.
pub fn parse_numbered(text: &str) -> Result<Vec<(usize, Value)>, YamlError> {
    let state = State::new(expansion_limit(text.len()), None);
    let mut docs = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        match ValueSeed(&state).deserialize(doc) {
            Ok(Value::Null) => {}
            Ok(v) => docs.push((i + 1, v)),
            Err(e) => return Err(state.error(text, i + 1, &e)),
        }
    }
    Ok(docs)
}

/// Why the visitor stopped serde_norway (its own error says less).
enum Failure {
    /// The expansion limit was reached.
    TooLarge,
    /// `key` is repeated in the `mapping`-th mapping visited.
    Duplicate { key: String, mapping: usize },
    /// The probe found the key it was looking for.
    Found,
}

struct State {
    /// Bytes the expanded documents cost so far, and their limit.
    spent: Cell<usize>,
    limit: usize,
    /// Mappings started so far, in visiting order (the same on every pass over a text).
    mappings: Cell<usize>,
    /// Stop at the first occurrence of this key in this mapping (to find its line).
    probe: Option<(usize, String)>,
    failure: RefCell<Option<Failure>>,
}

impl State {
    fn new(limit: usize, probe: Option<(usize, String)>) -> Self {
        State {
            spent: Cell::new(0),
            limit,
            mappings: Cell::new(0),
            probe,
            failure: RefCell::new(None),
        }
    }

    fn fail<E: de::Error>(&self, failure: Failure) -> E {
        *self.failure.borrow_mut() = Some(failure);
        E::custom("stopped by fledge's YAML rules")
    }

    /// Accounts for one value of `text_len` bytes, before it is allocated.
    fn charge<E: de::Error>(&self, text_len: usize) -> Result<(), E> {
        let spent = self
            .spent
            .get()
            .saturating_add(NODE_COST)
            .saturating_add(text_len);
        self.spent.set(spent);
        if spent > self.limit {
            return Err(self.fail(Failure::TooLarge));
        }
        Ok(())
    }

    /// The error for serde_norway's `e` in document `document` of `text`.
    fn error(&self, text: &str, document: usize, e: &serde_norway::Error) -> YamlError {
        let location = e.location().map(|l| Location {
            line: l.line(),
            column: l.column(),
        });
        let (kind, location, message) = match self.failure.borrow_mut().take() {
            Some(Failure::TooLarge) => (
                YamlErrorKind::AliasExpansion,
                None,
                format!(
                    "YAML aliases expand it to more than {} bytes (the limit is {EXPANSION_FACTOR} times the size of the YAML text, and at least {MIN_EXPANSION_LIMIT} bytes; every value counts {NODE_COST} bytes plus its text)",
                    self.limit
                ),
            ),
            Some(Failure::Duplicate { key, mapping }) => {
                let first = match first_line(text, self.limit, mapping, &key) {
                    Some(line) => format!(" (first at line {line})"),
                    None => String::new(),
                };
                (
                    YamlErrorKind::DuplicateKey,
                    location,
                    format!("duplicate key {key:?}{first}"),
                )
            }
            Some(Failure::Found) | None => {
                let msg = e.to_string();
                // serde_norway's own bound on aliases (a count, not a size).
                if msg == "repetition limit exceeded" {
                    (
                        YamlErrorKind::AliasExpansion,
                        None,
                        "YAML aliases are expanded too often (a document may expand at most 100 aliases per YAML event it holds)".to_string(),
                    )
                } else {
                    let msg = match msg.split_once(" at line ") {
                        Some((head, _)) if location.is_some() => head.to_string(),
                        _ => msg,
                    };
                    (YamlErrorKind::Syntax, location, msg)
                }
            }
        };
        YamlError {
            document,
            location,
            kind,
            message,
        }
    }
}

/// The line of the first `key` of the `mapping`-th mapping of `text`: a second pass that stops
/// there (serde_norway gives positions only with errors). Only runs for a text already refused.
fn first_line(text: &str, limit: usize, mapping: usize, key: &str) -> Option<usize> {
    let state = State::new(limit, Some((mapping, key.to_string())));
    for doc in serde_norway::Deserializer::from_str(text) {
        if let Err(e) = ValueSeed(&state).deserialize(doc) {
            return match *state.failure.borrow() {
                Some(Failure::Found) => e.location().map(|l| l.line()),
                _ => None,
            };
        }
    }
    None
}

/// Deserializes one value as `serde_json::Value` does, under the rules of `State`.
#[derive(Clone, Copy)]
struct ValueSeed<'s>(&'s State);

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // serde_json's wording, so that errors read as before.
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.0.charge(0)?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.0.charge(0)?;
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.0.charge(0)?;
        Ok(Value::Number(v.into()))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        self.0.charge(0)?;
        serde::Deserialize::deserialize(de::value::I128Deserializer::<E>::new(v))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        self.0.charge(0)?;
        serde::Deserialize::deserialize(de::value::U128Deserializer::<E>::new(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.0.charge(0)?;
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.0.charge(v.len())?;
        Ok(Value::String(v.to_string()))
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.0.charge(0)?;
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.0.charge(0)?;
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.0.charge(0)?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.0.charge(0)?;
        let mapping = self.0.mappings.get();
        self.0.mappings.set(mapping + 1);
        let mut values = Map::new();
        while let Some(key) = map.next_key_seed(KeySeed {
            state: self.0,
            mapping,
            seen: &values,
        })? {
            let value = map.next_value_seed(self)?;
            values.insert(key, value);
        }
        Ok(Value::Object(values))
    }
}

/// A mapping's key, as serde_json reads it (a string), refused when `seen` has it already.
struct KeySeed<'s> {
    state: &'s State,
    mapping: usize,
    seen: &'s Map<String, Value>,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = String;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        // Errors raised while the key is read carry the key's position.
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<String, E> {
        self.state.charge(key.len())?;
        if let Some((mapping, probe)) = &self.state.probe
            && *mapping == self.mapping
            && probe == key
        {
            return Err(self.state.fail(Failure::Found));
        }
        if self.seen.contains_key(key) {
            return Err(self.state.fail(Failure::Duplicate {
                key: key.to_string(),
                mapping: self.mapping,
            }));
        }
        Ok(key.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    /// What serde_json's own `Value` reads from the same text (the behaviour to keep).
    fn plain(text: &str) -> Vec<Value> {
        serde_norway::Deserializer::from_str(text)
            .map(|d| Value::deserialize(d).unwrap())
            .filter(|v| !v.is_null())
            .collect()
    }

    #[test]
    fn ordinary_documents_read_as_serde_json_reads_them() {
        let text = "\
# a comment
a: 1
b: [true, ~, 1.5, -3, 18446744073709551615, .inf, \"0755\", 0755, yes]
c: {d: &x {e: \"f\"}, g: *x, 7: seven}
h: |
  block
  text
---
---
- just
- a list
--- null
";
        assert_eq!(parse_documents(text).unwrap(), plain(text));
        assert_eq!(parse_documents(text).unwrap().len(), 2);
        assert_eq!(parse_documents("").unwrap(), Vec::<Value>::new());
    }

    #[test]
    fn a_duplicate_key_names_both_lines_in_nested_mappings() {
        let text =
            "kind: A\n---\nspec:\n  outer:\n    replicas: 1\n    other: x\n    replicas: 2\n";
        let err = parse_documents(text).unwrap_err();
        assert_eq!(
            err,
            YamlError {
                document: 2,
                location: Some(Location { line: 7, column: 5 }),
                kind: YamlErrorKind::DuplicateKey,
                message: "duplicate key \"replicas\" (first at line 5)".into(),
            }
        );
        assert_eq!(
            err.to_string(),
            "document 2, line 7, column 5: duplicate key \"replicas\" (first at line 5)"
        );
        // In a flow mapping inside a list, and after an alias expanded the same mapping
        // shape elsewhere (the count of mappings must follow aliases too).
        let text = "a: &m {x: 1}\nb: *m\nc:\n  - {y: 1, z: 2,\n     y: 3}\n";
        let err = parse_documents(text).unwrap_err();
        assert_eq!(err.location, Some(Location { line: 5, column: 6 }));
        assert_eq!(err.message, "duplicate key \"y\" (first at line 4)");
        // Keys equal once read as strings (serde_json keys are strings) are duplicates too.
        let err = parse_documents("1: a\n\"1\": b\n").unwrap_err();
        assert_eq!(err.message, "duplicate key \"1\" (first at line 1)");
    }

    #[test]
    fn aliases_may_not_expand_a_megabyte_into_gigabytes() {
        // 512 KiB named once and copied by 100000 aliases: about 50 GiB once expanded.
        let text = format!(
            "big: &big \"{}\"\ncopies: [{}]\n",
            "x".repeat(512 * 1024),
            vec!["*big"; 100_000].join(",")
        );
        assert!(text.len() < 1024 * 1024);
        let err = parse_documents(&text).unwrap_err();
        assert_eq!(err.kind, YamlErrorKind::AliasExpansion);
        assert_eq!(err.document, 1);
        assert!(
            err.message.starts_with(&format!(
                "YAML aliases expand it to more than {} bytes",
                32 * text.len()
            )),
            "{err}"
        );
    }

    #[test]
    fn nested_aliases_are_refused_by_serde_norways_count_with_a_clear_message() {
        let mut text = "l0: &l0 \"lol\"\n".to_string();
        for i in 1..10 {
            text.push_str(&format!(
                "l{i}: &l{i} [{}]\n",
                vec![format!("*l{}", i - 1); 9].join(", ")
            ));
        }
        let err = parse_documents(&text).unwrap_err();
        assert_eq!(err.kind, YamlErrorKind::AliasExpansion);
        assert!(err.message.contains("expanded too often"), "{err}");
    }

    #[test]
    fn a_text_without_aliases_stays_below_the_limit() {
        // The densest texts YAML has: empty collections, one-digit items, keys without values.
        let dense = [
            format!("[{}]", vec!["{}"; 10_000].join(",")),
            format!("[{}]", vec!["[]"; 10_000].join(",")),
            format!("[{}]", vec!["1"; 10_000].join(",")),
            format!(
                "{{{}}}",
                (0..10_000)
                    .map(|i| format!("{i}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            (0..10_000).map(|i| format!("{i}:\n")).collect(),
            "-\n".repeat(10_000),
        ];
        for text in dense {
            let state = State::new(usize::MAX, None);
            for doc in serde_norway::Deserializer::from_str(&text) {
                ValueSeed(&state).deserialize(doc).unwrap();
            }
            let per_byte = state.spent.get() as f64 / text.len() as f64;
            assert!(
                per_byte < (EXPANSION_FACTOR / 2) as f64,
                "{per_byte} per byte for {}",
                &text[..20]
            );
        }
    }

    #[test]
    fn syntax_errors_keep_serde_norways_message_and_position() {
        let err = parse_documents("a: 1\n---\nb: [1, 2\n").unwrap_err();
        assert_eq!(err.kind, YamlErrorKind::Syntax);
        assert_eq!(err.document, 2);
        assert!(err.location.is_some(), "{err}");
        assert!(!err.message.contains(" at line "), "{err}");
    }
}
