//! A deterministic YAML emitter for JSON values.
//!
//! Scalars are written so that every YAML parser reads back exactly the value given, under
//! YAML 1.1 (PyYAML, which cloud-init uses) as well as YAML 1.2 (Go's yaml, kubectl):
//! a string is written plain (unquoted, as a kubectl user writes it) only when no YAML 1.1 or
//! 1.2 resolver could read it as anything but that string (see [`plain_ok`]); otherwise it is
//! double-quoted with JSON escapes, plus escapes for the characters that YAML 1.1 treats as line
//! breaks or refuses (NEL, LS, PS, C1 controls, U+FEFF, U+FFFE/F). Multi-line strings use a
//! literal block (`|`) only when that is provably exact. Values printed by templates
//! ([`inline`]) stay quoted: they may land in flow context.

use serde_json::Value;
use std::fmt::Write;

/// Quotes `s` as a double-quoted YAML scalar.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn needs_escape(c: char) -> bool {
    let n = c as u32;
    n < 0x20
        || (0x7f..=0x9f).contains(&n)
        || matches!(n, 0x2028 | 0x2029 | 0xfeff | 0xfffe | 0xffff)
}

/// A scalar or flow collection written on one line (used by templates for every value).
pub fn inline(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => quote(s),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(inline).collect();
            format!("[{}]", parts.join(", "))
        }
        Value::Object(map) => {
            let parts: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", quote(k), inline(v)))
                .collect();
            format!("{{{}}}", parts.join(", "))
        }
    }
}

/// Writes one YAML document (without `---`) for `v`, ending in a newline.
pub fn to_string(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) if !m.is_empty() => write_map(&mut out, m, 0),
        Value::Array(a) if !a.is_empty() => write_seq(&mut out, a, 0),
        other => {
            out.push_str(&inline(other));
            out.push('\n');
        }
    }
    out
}

/// Writes several documents separated by `---`.
pub fn documents(docs: &[Value]) -> String {
    let mut out = String::new();
    for d in docs {
        out.push_str("---\n");
        out.push_str(&to_string(d));
    }
    out
}

fn key(k: &str) -> String {
    // Plain keys are kept when they are unambiguous in YAML 1.1 and 1.2; otherwise quoted.
    let plain = !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
        && k.as_bytes()[0].is_ascii_alphabetic()
        && !is_ambiguous_plain(k);
    if plain { k.to_string() } else { quote(k) }
}

fn is_ambiguous_plain(s: &str) -> bool {
    const WORDS: [&str; 22] = [
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false",
        "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF",
    ];
    WORDS.contains(&s) || matches!(s, "null" | "Null" | "NULL" | "~")
}

fn write_map(out: &mut String, m: &serde_json::Map<String, Value>, indent: usize) {
    for (k, v) in m {
        pad(out, indent);
        out.push_str(&key(k));
        out.push(':');
        write_child(out, v, indent);
    }
}

fn write_seq(out: &mut String, a: &[Value], indent: usize) {
    for v in a {
        pad(out, indent);
        out.push('-');
        match v {
            Value::Object(m) if !m.is_empty() => {
                // First entry on the dash line, the rest aligned under it.
                let mut first = true;
                for (k, child) in m {
                    if first {
                        out.push(' ');
                        first = false;
                    } else {
                        pad(out, indent + 2);
                    }
                    out.push_str(&key(k));
                    out.push(':');
                    write_child(out, child, indent + 2);
                }
            }
            Value::Array(inner) if !inner.is_empty() => {
                out.push('\n');
                write_seq(out, inner, indent + 2);
            }
            other => {
                out.push(' ');
                write_scalar(out, other, indent + 2);
            }
        }
    }
}

fn write_child(out: &mut String, v: &Value, indent: usize) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            write_map(out, m, indent + 2);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            write_seq(out, a, indent + 2);
        }
        other => {
            out.push(' ');
            write_scalar(out, other, indent + 2);
        }
    }
}

/// Whether `s` can be written as a plain scalar in block context and read back as exactly
/// this string by YAML 1.1 (PyYAML, cloud-init) and YAML 1.2 (Go, kubectl) parsers. Deliberately
/// conservative: it starts with a letter (no indicator, number, date, `.inf`, `<<` or `=`), is
/// not a boolean or null word of either version, holds only letters, digits, spaces and
/// `-_./:+=@~,()`, has no leading or trailing space, and no `: `, ` #` or final `:`.
pub fn plain_ok(s: &str) -> bool {
    s.len() <= 1024
        && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && !s.ends_with(' ')
        && !s.ends_with(':')
        && !s.contains(": ")
        && !s.contains(" #")
        && !s.contains("  ")
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || " -_./:+=@~,()".contains(c))
        && !is_ambiguous_plain(s)
}

fn write_scalar(out: &mut String, v: &Value, indent: usize) {
    if let Value::String(s) = v
        && plain_ok(s)
    {
        out.push_str(s);
        out.push('\n');
        return;
    }
    if let Value::String(s) = v
        && literal_block_ok(s)
    {
        let body = s.trim_end_matches('\n');
        let trailing = s.len() - body.len();
        out.push_str(match trailing {
            0 => "|-",
            1 => "|",
            _ => "|+",
        });
        out.push('\n');
        for line in s[..body.len()].split('\n') {
            if !line.is_empty() {
                pad(out, indent);
                out.push_str(line);
            }
            out.push('\n');
        }
        for _ in 1..trailing {
            out.push('\n');
        }
        return;
    }
    out.push_str(&inline(v));
    out.push('\n');
}

/// A literal block reproduces `s` exactly when it has several lines, its first line starts
/// with a non-space character (so indentation detection is unambiguous), and it holds only
/// characters that YAML 1.1 and 1.2 both keep verbatim in block scalars.
fn literal_block_ok(s: &str) -> bool {
    s.contains('\n')
        && s.len() <= 1 << 20
        && s.chars()
            .next()
            .is_some_and(|c| c != ' ' && c != '\t' && c != '\n')
        && s.chars()
            .all(|c| c == '\n' || (!needs_escape(c) && c != '\r' && c != '\t'))
        && s.lines().all(|l| l.trim_end() == l)
}

fn pad(out: &mut String, n: usize) {
    for _ in 0..n {
        out.push(' ');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn round_trip(v: &Value) -> Value {
        let text = to_string(v);
        serde_norway::from_str::<Value>(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn tricky_strings_round_trip() {
        let values = [
            "yes",
            "on",
            "no",
            "~",
            "null",
            "0755",
            "1e3",
            "a: b",
            "#x",
            "{{ x }}",
            "- x",
            "\"q\"",
            "tab\there",
            "multi\nline\n",
            "multi\n  indented\n\n\ntrailing\n\n",
            "\u{85}nel",
            "\u{2028}",
            "ünïcödé ✓",
            "",
            " lead",
            "trail ",
            "x\r\ny",
        ];
        for s in values {
            let v = json!({"k": s, "list": [s, {"inner": s}], s: 1});
            assert_eq!(round_trip(&v), v, "value {s:?}");
        }
    }

    #[test]
    fn strings_are_quoted_only_when_a_parser_could_read_them_otherwise() {
        for plain in [
            "v1.33.4",
            "docker-demo",
            "cluster.x-k8s.io/v1beta2",
            "https://mgmt.example.invalid:6443",
            "ssh-ed25519 AAAAC3Nza+/= alice@example.invalid",
            "Ready",
        ] {
            assert!(plain_ok(plain), "{plain}");
            assert_eq!(to_string(&json!({"k": plain})), format!("k: {plain}\n"));
            assert_eq!(round_trip(&json!({"k": plain})), json!({"k": plain}));
        }
        for quoted in [
            "yes",
            "No",
            "on",
            "OFF",
            "y",
            "n",
            "true",
            "Null",
            "~",
            "0755",
            "1e3",
            "12:30",
            "2001-12-14",
            ".inf",
            "-x",
            "<<",
            "=",
            "a: b",
            "a #b",
            "x:",
            "",
            " x",
            "x ",
            "{x}",
            "[x]",
            "*x",
            "&x",
            "!x",
            "%x",
            "@x",
            "'x'",
            "a\tb",
            "0x1F",
            "+1",
            "1_000",
        ] {
            assert!(!plain_ok(quoted), "{quoted:?}");
            assert_eq!(round_trip(&json!({"k": quoted})), json!({"k": quoted}));
        }
    }

    #[test]
    fn layout_is_block_style() {
        let v = json!({"a": {"b": [1, {"c": "d", "e": []}], "f": {}}});
        assert_eq!(
            to_string(&v),
            "a:\n  b:\n    - 1\n    - c: d\n      e: []\n  f: {}\n"
        );
    }
}
