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
//! - a `${` that does not start a well-formed reference is an error, as in clusterctl;
//! - `${NAME/pattern/string}`, `${NAME//pattern/string}`, `${NAME/#pattern/string}` and
//!   `${NAME/%pattern/string}` replace the first, every, a leading or a trailing occurrence of the
//!   literal `pattern` in the value (CAPA's
//!   `${AWS_CONTROLLER_IAM_ROLE/#arn/eks.amazonaws.com/role-arn: arn}`); `pattern` runs to the
//!   next `/`, `string` to the next `}`, and `\/`, `\\` and `$$` stand for `/`, `\` and `$` in
//!   both; without `string`, `/` and `//` remove the pattern and `/#` and `/%` do nothing
//!   (envsubst's `funcs.go`). Such a reference never makes its variable required: clusterctl
//!   takes the pattern and string for a default.
//!
//! envsubst's other string functions (`${#X}`, `${X:1:2}`, `${X#p}`, `${X%s}`, `${X^^}`,
//! `${X,,}`), and references nested in a replacement's pattern or string, are refused with an
//! error naming them: no provider uses them, and fledge does not implement them. Names are
//! letters, digits and `_` (envsubst's Unicode letters and decimal digits; Rust's alphabetic
//! and numeric classes, identical for ASCII).
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
    /// The default's parts (empty for `${NAME}`, for `${NAME:=}` and for a replacement).
    pub default: Vec<Node>,
    /// `${NAME/pattern/string}` and its variants (none for a plain reference or a default).
    pub replace: Option<Replace>,
}

/// Which occurrence of the pattern a replacement replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Occurrence {
    /// `${NAME/pattern/string}`: the first.
    First,
    /// `${NAME//pattern/string}`: every one.
    All,
    /// `${NAME/#pattern/string}`: one at the start.
    Prefix,
    /// `${NAME/%pattern/string}`: one at the end.
    Suffix,
}

/// A replacement's parts, escapes resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replace {
    /// Which occurrence.
    pub occurrence: Occurrence,
    /// The literal text to find (never empty).
    pub pattern: String,
    /// What replaces it (none when the reference ends after the pattern's `/`).
    pub with: Option<String>,
}

impl Replace {
    /// `value` as envsubst's replacement rewrites it, in order: the value's pieces that stay
    /// (`Ok`) and, between them, the components' replacement text (`Err`).
    fn apply<'a>(&'a self, value: &'a str) -> Vec<Result<&'a str, &'a str>> {
        let p = self.pattern.as_str();
        let w = self.with.as_deref();
        match (self.occurrence, w) {
            (Occurrence::Prefix, Some(w)) if value.starts_with(p) => {
                vec![Err(w), Ok(&value[p.len()..])]
            }
            (Occurrence::Suffix, Some(w)) if value.ends_with(p) => {
                vec![Ok(&value[..value.len() - p.len()]), Err(w)]
            }
            (Occurrence::First, w) => match value.split_once(p) {
                Some((before, after)) => vec![Ok(before), Err(w.unwrap_or("")), Ok(after)],
                None => vec![Ok(value)],
            },
            (Occurrence::All, w) => {
                let mut out = Vec::new();
                for (i, part) in value.split(p).enumerate() {
                    if i > 0 {
                        out.push(Err(w.unwrap_or("")));
                    }
                    out.push(Ok(part));
                }
                out
            }
            _ => vec![Ok(value)],
        }
    }
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
                    replace: None,
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
            (Some('/'), _) => {
                self.pos += 1;
                self.replacement(start, name, &unsupported)
            }
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
                return Ok(Var {
                    name,
                    default,
                    replace: None,
                });
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

    /// After `${NAME/` (at `start`): the rest of a replacement, up to and including the `}`,
    /// read as envsubst's `parseReplaceFunc` reads it.
    fn replacement(
        &mut self,
        start: usize,
        name: String,
        unsupported: &dyn Fn(&Self, &str) -> SyntaxError,
    ) -> Result<Var, SyntaxError> {
        let occurrence = match self.peek() {
            Some('/') => Occurrence::All,
            Some('#') => Occurrence::Prefix,
            Some('%') => Occurrence::Suffix,
            _ => Occurrence::First,
        };
        if occurrence != Occurrence::First {
            self.pos += 1;
        }
        let pattern = self.replacement_part('/', unsupported)?;
        if pattern.is_empty() {
            return Err(self.error(start, "unable to parse substitution within function"));
        }
        if self.peek() != Some('/') {
            return Err(self.error(start, "bad substitution"));
        }
        // envsubst takes a run of slashes for the separator.
        while self.peek() == Some('/') {
            self.pos += 1;
        }
        let with = if self.peek() == Some('}') {
            None
        } else {
            Some(self.replacement_part('}', unsupported)?)
        };
        if self.peek() != Some('}') {
            return Err(self.error(start, "bad substitution"));
        }
        self.pos += 1;
        Ok(Var {
            name,
            default: vec![],
            replace: Some(Replace {
                occurrence,
                pattern,
                with,
            }),
        })
    }

    /// A replacement's pattern or string: up to `end` (not consumed), `\/`, `\\` and `$$`
    /// resolved.
    fn replacement_part(
        &mut self,
        end: char,
        unsupported: &dyn Fn(&Self, &str) -> SyntaxError,
    ) -> Result<String, SyntaxError> {
        let mut out = String::new();
        loop {
            let rest = self.rest();
            if rest.starts_with("${") {
                return Err(unsupported(
                    self,
                    "reference inside a replacement's pattern or string",
                ));
            }
            let two =
                if rest.starts_with("\\/") || rest.starts_with("\\\\") || rest.starts_with("$$") {
                    rest[1..].chars().next()
                } else {
                    None
                };
            match (two, rest.chars().next()) {
                (Some(c), _) => {
                    out.push(c);
                    self.pos += 2;
                }
                (None, Some(c)) if c != end => {
                    out.push(c);
                    self.pos += c.len_utf8();
                }
                _ => return Ok(out),
            }
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
                if let Some(r) = &v.replace {
                    // clusterctl joins the function's arguments.
                    return format!("{}{}", r.pattern, r.with.as_deref().unwrap_or(""));
                }
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
/// (nothing when it has none). A replacement's string is text, and the pieces of the value
/// around it go through `value` (empty ones not at all).
pub fn evaluate(
    nodes: &[Node],
    vars: &BTreeMap<String, String>,
    out: &mut String,
    value: &mut dyn FnMut(&str, &mut String),
) {
    for n in nodes {
        match n {
            Node::Text(t) => out.push_str(t),
            Node::Var(Var {
                name,
                replace: Some(r),
                ..
            }) => {
                for piece in r.apply(vars.get(name).map_or("", String::as_str)) {
                    match piece {
                        Ok("") => {}
                        Ok(p) => value(p, out),
                        Err(t) => out.push_str(t),
                    }
                }
            }
            Node::Var(v) => match vars.get(&v.name).filter(|x| !x.is_empty()) {
                Some(x) => value(x, out),
                None => evaluate(&v.default, vars, out, value),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` with values and defaults put in as text, as clusterctl's substitution does on
    /// its own: the parser and evaluator the components' substitution uses, seen as text.
    fn expand(text: &str, vars: &BTreeMap<String, String>) -> Result<String, SyntaxError> {
        let nodes = parse(&convert_legacy(text))?;
        let mut out = String::with_capacity(text.len());
        evaluate(&nodes, vars, &mut out, &mut |v, out| out.push_str(v));
        Ok(out)
    }

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
            "${#X}",
            "${X:1:2}",
            "${X#p}",
            "${X%s}",
            "${X^^}",
            "${X,,}",
            "${X/${Y}/b}",
            "${X/a/${Y}}",
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
    #[test]
    fn replacements_replace_literal_text_in_the_value_as_envsubst_does() {
        // CAPA v2.11.1's config/rbac/serviceaccount.yaml.
        let capa = "${AWS_CONTROLLER_IAM_ROLE/#arn/eks.amazonaws.com/role-arn: arn}";
        let role = "arn:aws:iam::123456789012:role/capa";
        assert_eq!(
            expand(capa, &vars(&[("AWS_CONTROLLER_IAM_ROLE", role)])).unwrap(),
            "eks.amazonaws.com/role-arn: arn:aws:iam::123456789012:role/capa"
        );
        assert_eq!(expand(capa, &vars(&[])).unwrap(), "");
        assert_eq!(
            expand(capa, &vars(&[("AWS_CONTROLLER_IAM_ROLE", "not-an-arn")])).unwrap(),
            "not-an-arn"
        );
        let v = vars(&[("X", "a.b.a")]);
        for (text, want) in [
            ("${X/a/c}", "c.b.a"),
            ("${X//a/c}", "c.b.c"),
            ("${X/#a/c}", "c.b.a"),
            ("${X/%a/c}", "a.b.c"),
            ("${X/#b/c}", "a.b.a"),
            ("${X/%b/c}", "a.b.a"),
            // Without a string: `/` and `//` remove, `/#` and `/%` leave the value alone.
            ("${X/a/}", ".b.a"),
            ("${X//a/}", ".b."),
            ("${X/#a/}", "a.b.a"),
            ("${X/%a/}", "a.b.a"),
            // Escapes: `\/`, `\\` and `$$`; a run of slashes separates; `}` in a pattern.
            ("${X/./\\/}", "a/b.a"),
            ("${X/./\\\\}", "a\\b.a"),
            ("${X/./$$}", "a$b.a"),
            ("${X/.//c}", "acb.a"),
        ] {
            assert_eq!(expand(text, &v).unwrap(), want, "{text}");
        }
        assert_eq!(expand("${X/a}/c}", &vars(&[("X", "a}")])).unwrap(), "c");
    }

    #[test]
    fn a_replacement_never_makes_its_variable_required() {
        let nodes = parse("${A/#x/y} ${A} ${B/x/} ${B}").unwrap();
        assert_eq!(required(&nodes, &vars(&[])), Vec::<String>::new());
        assert_eq!(inventory(&nodes)["A"], "xy");
    }

    #[test]
    fn malformed_replacements_are_errors_as_in_clusterctl() {
        for (text, want) in [
            // `//` is the operator, then `}` starts the pattern.
            ("${X//}", "line 1: bad substitution"),
            (
                "${X/",
                "line 1: unable to parse substitution within function",
            ),
            ("${X/a", "line 1: bad substitution"),
            ("${X/a/b", "line 1: bad substitution"),
        ] {
            assert_eq!(
                expand(text, &BTreeMap::new()).unwrap_err().to_string(),
                want,
                "{text}"
            );
        }
    }
}
