//! clusterctl's variable syntax, read as clusterctl v1.13 reads a provider's components
//! (`cmd/clusterctl/client/yamlprocessor/simple_processor.go`, which hands the whole text to
//! github.com/drone/envsubst), so that the same text is accepted or refused, the same variables
//! are required and the same defaults apply:
//! - `${NAME}` is the value; `${NAME:=word}`, `${NAME:-word}`, `${NAME=word}`, `${NAME:?word}`
//!   and `${NAME:+word}` all mean "the value, or `word` when the value is empty or unset"
//!   (envsubst gives the five one meaning); `word` runs to the next `}` and may hold further
//!   `${...}`;
//! - `$$` in text is one `$` (so `$${X}` is the text `${X}`); in a default it stays `$$`;
//! - `${ NAME }`, `${ NAME}` and `${NAME }` are `${NAME}` (clusterctl rewrites them first);
//! - a variable is required when its first reference has no default, or an empty one;
//! - a `${` that does not start a well-formed reference is an error, as in clusterctl.
//!
//! envsubst's string functions (`${#X}`, `${X:1:2}`, `${X/a/b}`, `${X#p}`, `${X%s}`, `${X^^}`,
//! `${X,,}`) are refused with an error naming them: no provider uses them, and fledge does not
//! implement them. Names are letters, digits and `_` (envsubst's Unicode letters and decimal
//! digits; Rust's alphabetic and numeric classes, identical for ASCII).
//!
//! This module only reads the syntax and evaluates it into text; how values enter YAML without
//! changing its structure is [`super`]'s business.

use std::collections::BTreeMap;

/// A piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// Literal text (`$$` already turned into `$`).
    Text(String),
    /// A `${...}` reference.
    Var(Var),
}

/// One `${NAME}` or `${NAME:=default}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Var {
    /// The variable.
    pub name: String,
    /// The default's parts (empty for `${NAME}` and for `${NAME:=}`).
    pub default: Vec<Node>,
}

/// Why a text is not valid variable syntax.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct SyntaxError {
    /// 1-based line of the offending `${`.
    pub line: usize,
    /// What is wrong (envsubst's wording where envsubst has one).
    pub problem: String,
}

/// Rewrites `${ NAME }`, `${ NAME}` and `${NAME }` to `${NAME}`, as clusterctl does before it
/// parses (`NAME` being ASCII letters, digits, `_` and `$`; the blanks are space, tab, CR, LF
/// and form feed).
pub fn convert_legacy(text: &str) -> String {
    let blank = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c');
    let name_byte = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'$';
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while let Some(at) = text[i..].find("${").map(|k| k + i) {
        let mut j = at + 2;
        let lead = j;
        while j < bytes.len() && blank(bytes[j]) {
            j += 1;
        }
        let (name_start, blanks_before) = (j, j - lead);
        while j < bytes.len() && name_byte(bytes[j]) {
            j += 1;
        }
        let name_end = j;
        while j < bytes.len() && blank(bytes[j]) {
            j += 1;
        }
        let blanks_after = j - name_end;
        if name_end > name_start && blanks_before + blanks_after > 0 && bytes.get(j) == Some(&b'}')
        {
            out.push_str(&text[copied..at]);
            out.push_str("${");
            out.push_str(&text[name_start..name_end]);
            out.push('}');
            copied = j + 1;
            i = j + 1;
        } else {
            i = at + 1;
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// Parses `text` (after [`convert_legacy`]).
pub fn parse(text: &str) -> Result<Vec<Node>, SyntaxError> {
    let mut p = Parser { text, pos: 0 };
    let mut nodes = Vec::new();
    let mut run = String::new();
    while let Some(c) = p.peek() {
        if p.rest().starts_with("$$") {
            run.push('$');
            p.pos += 2;
        } else if p.rest().starts_with("${") {
            if !run.is_empty() {
                nodes.push(Node::Text(std::mem::take(&mut run)));
            }
            let start = p.pos;
            p.pos += 2;
            nodes.push(Node::Var(p.reference(start)?));
        } else {
            run.push(c);
            p.pos += c.len_utf8();
        }
    }
    if !run.is_empty() {
        nodes.push(Node::Text(run));
    }
    Ok(nodes)
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn error(&self, start: usize, problem: impl Into<String>) -> SyntaxError {
        SyntaxError {
            line: self.text[..start].matches('\n').count() + 1,
            problem: problem.into(),
        }
    }

    /// After `${` (at `start`): the name and what follows it, up to and including the `}`.
    fn reference(&mut self, start: usize) -> Result<Var, SyntaxError> {
        let unsupported = |p: &Self, what: &str| {
            let end = p.rest().find('}').map_or(p.text.len(), |k| p.pos + k + 1);
            let snippet: String = p.text[start..end].chars().take(60).collect();
            p.error(
                start,
                format!("{snippet}: envsubst's {what} is not supported (only ${{NAME}} and ${{NAME:=default}} and its variants)"),
            )
        };
        if self.peek() == Some('#') {
            return Err(unsupported(self, "length ${#NAME}"));
        }
        let name_start = self.pos;
        while let Some(c) = self
            .peek()
            .filter(|c| c.is_alphabetic() || c.is_numeric() || *c == '_')
        {
            self.pos += c.len_utf8();
        }
        let name = self.text[name_start..self.pos].to_string();
        if name.is_empty() {
            return Err(self.error(start, "unable to parse variable name"));
        }
        let mut after = self.rest().chars();
        match (after.next(), after.next()) {
            (Some('}'), _) => {
                self.pos += 1;
                Ok(Var {
                    name,
                    default: vec![],
                })
            }
            (Some(':'), Some('=' | '-' | '?' | '+')) => {
                self.pos += 2;
                self.default(start, name)
            }
            (Some('='), _) => {
                self.pos += 1;
                self.default(start, name)
            }
            (Some(':'), _) => Err(unsupported(self, "substring ${NAME:offset:length}")),
            (Some(',' | '^'), _) => Err(unsupported(self, "case conversion")),
            (Some('/'), _) => Err(unsupported(self, "replacement ${NAME/pattern/string}")),
            (Some('#' | '%'), _) => Err(unsupported(self, "prefix or suffix removal")),
            _ => Err(self.error(start, "missing closing brace")),
        }
    }

    /// The default's parts, up to and including the closing `}`.
    fn default(&mut self, start: usize, name: String) -> Result<Var, SyntaxError> {
        let mut default = Vec::new();
        loop {
            let rest = self.rest();
            if rest.is_empty() {
                return Err(self.error(start, "unable to parse substitution within function"));
            }
            if rest.starts_with('}') {
                self.pos += 1;
                return Ok(Var { name, default });
            }
            if rest.starts_with("${") {
                let nested = self.pos;
                self.pos += 2;
                default.push(Node::Var(self.reference(nested)?));
                continue;
            }
            let end = rest
                .char_indices()
                .find(|&(k, c)| c == '}' || rest[k..].starts_with("${"))
                .map_or(rest.len(), |(k, _)| k);
            default.push(Node::Text(rest[..end].to_string()));
            self.pos += end;
        }
    }
}

/// Every variable with the default its first reference gives it (`${Y}` standing for a nested
/// reference; empty when there is none): clusterctl's inventory of a template. Only top-level
/// references count, as in clusterctl.
pub fn inventory(nodes: &[Node]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for n in nodes {
        if let Node::Var(v) = n {
            out.entry(v.name.clone()).or_insert_with(|| {
                v.default
                    .iter()
                    .map(|d| match d {
                        Node::Text(t) => t.clone(),
                        Node::Var(inner) => format!("${{{}}}", inner.name),
                    })
                    .collect()
            });
        }
    }
    out
}

/// The variables clusterctl would report as not set: no value, and no (or an empty) default
/// at their first reference. Sorted.
pub fn required(nodes: &[Node], vars: &BTreeMap<String, String>) -> Vec<String> {
    inventory(nodes)
        .into_iter()
        .filter(|(name, default)| default.is_empty() && !vars.contains_key(name))
        .map(|(name, _)| name)
        .collect()
}

/// Evaluates `nodes` into `out`: text as it is; a variable with a non-empty value through
/// `value` (which writes what stands for it); otherwise its default, evaluated the same way
/// (nothing when it has none).
pub fn evaluate(
    nodes: &[Node],
    vars: &BTreeMap<String, String>,
    out: &mut String,
    value: &mut dyn FnMut(&str, &mut String),
) {
    for n in nodes {
        match n {
            Node::Text(t) => out.push_str(t),
            Node::Var(v) => match vars.get(&v.name).filter(|x| !x.is_empty()) {
                Some(x) => value(x, out),
                None => evaluate(&v.default, vars, out, value),
            },
        }
    }
}

/// `text` with values and defaults put in as text, as clusterctl's substitution does on its
/// own.
pub fn expand(text: &str, vars: &BTreeMap<String, String>) -> Result<String, SyntaxError> {
    let nodes = parse(&convert_legacy(text))?;
    let mut out = String::with_capacity(text.len());
    evaluate(&nodes, vars, &mut out, &mut |v, out| out.push_str(v));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_five_default_forms_use_the_default_when_the_value_is_empty_or_unset() {
        for form in [":=", ":-", "=", ":?", ":+"] {
            let t = format!("a=${{X{form}d}}");
            assert_eq!(expand(&t, &vars(&[])).unwrap(), "a=d", "{t}");
            assert_eq!(expand(&t, &vars(&[("X", "")])).unwrap(), "a=d", "{t}");
            assert_eq!(expand(&t, &vars(&[("X", "v")])).unwrap(), "a=v", "{t}");
        }
        assert_eq!(expand("${X}", &vars(&[])).unwrap(), "");
        assert_eq!(expand("${X:=}", &vars(&[])).unwrap(), "");
        // A default runs to the first `}`, keeps `$$` and quotes, and may nest references.
        let v = vars(&[("Y", "y")]);
        assert_eq!(
            expand(r#"${X:=""} ${X:=a$$b} ${X:=p${Y}q}r} ${X:={a}"#, &v).unwrap(),
            r#""" a$$b pyqr} {a"#
        );
    }

    #[test]
    fn dollar_dollar_is_one_dollar_in_text_and_escapes_a_reference() {
        let v = vars(&[("X", "v")]);
        assert_eq!(
            expand("$$ $${X} $$${X} $$$$ $1 $", &v).unwrap(),
            "$ ${X} $v $$ $1 $"
        );
    }

    #[test]
    fn blanks_inside_the_braces_are_removed_first() {
        let v = vars(&[("X", "v")]);
        assert_eq!(expand("${ X } ${ X} ${X } ${X\t}", &v).unwrap(), "v v v v");
        assert_eq!(convert_legacy("${ A B }"), "${ A B }");
    }

    #[test]
    fn malformed_references_are_errors_as_in_clusterctl() {
        let cases = [
            ("a\n${", "line 2: unable to parse variable name"),
            ("${-x}", "line 1: unable to parse variable name"),
            ("${not-a-name}", "line 1: missing closing brace"),
            ("${X", "line 1: missing closing brace"),
            (
                "${X:=abc",
                "line 1: unable to parse substitution within function",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(
                expand(text, &BTreeMap::new()).unwrap_err().to_string(),
                want,
                "{text}"
            );
        }
        for text in [
            "${#X}", "${X:1:2}", "${X/a/b}", "${X#p}", "${X%s}", "${X^^}", "${X,,}",
        ] {
            let e = expand(text, &BTreeMap::new()).unwrap_err().to_string();
            assert!(e.contains("is not supported"), "{text}: {e}");
        }
    }

    #[test]
    fn a_variable_is_required_when_its_first_reference_has_no_default() {
        let nodes = parse(r#"${A} ${A:=1} ${B:=2} ${B} ${C:=} ${D:=""} ${E:=${F}}"#).unwrap();
        assert_eq!(required(&nodes, &vars(&[])), ["A", "C"]);
        assert_eq!(
            required(&nodes, &vars(&[("A", ""), ("C", "x")])),
            Vec::<String>::new()
        );
        assert_eq!(inventory(&nodes)["E"], "${F}");
        assert_eq!(inventory(&nodes)["D"], r#""""#);
    }
}
