//! Templates: structure comes from minijinja templates in `templates/`, values from the checked
//! spec. Every value a template prints is emitted as an escaped YAML scalar (see [`yaml`]), so no
//! user string can change a document's structure. Every rendered document is parsed back.
//! [`context`] holds what the templates read; [`pipeline`] renders a whole request into the
//! files `fledge render` writes.

pub mod context;
pub mod pipeline;
pub mod yaml;

use std::path::{Path, PathBuf};

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;
use serde_json::Value;

/// Errors from rendering a template.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The override directory could not be read.
    #[error("cannot read templates directory {path}")]
    ReadOverrides {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file in the override directory names no template (a typo would be silently ignored).
    #[error("{path}: names no template; templates are {known}")]
    UnknownOverride {
        /// The file.
        path: PathBuf,
        /// The template names, comma-separated.
        known: String,
    },
    /// An override file is not a valid template.
    #[error("cannot compile template {name}")]
    Compile {
        /// Template name.
        name: String,
        /// minijinja's error, with line.
        #[source]
        source: minijinja::Error,
    },
    /// The template failed to render.
    #[error("cannot render template {name}")]
    Render {
        /// Template name.
        name: String,
        /// minijinja's error, with line.
        #[source]
        source: minijinja::Error,
    },
    /// The rendered text is not valid YAML: a template bug, never a value.
    #[error("template {name} rendered invalid YAML\n--- rendered text ---\n{}", text.trim_end())]
    ParseBack {
        /// Template name.
        name: String,
        /// The rendered text.
        text: String,
        /// Where and why it is invalid.
        #[source]
        source: crate::yaml::YamlError,
    },
    /// The template rendered other than one document where one is expected.
    #[error("template {name}: rendered {count} documents; expected one")]
    DocumentCount {
        /// Template name.
        name: String,
        /// How many it rendered.
        count: usize,
    },
    /// The template rendered no object of a kind its caller needs.
    #[error("template {name}: renders no {kind}")]
    MissingKind {
        /// Template name.
        name: String,
        /// The kind.
        kind: String,
    },
}

/// The template set: the `.j2` files of `templates/`, embedded at build time (`build.rs`), each
/// replaceable from an override directory.
pub struct Templates {
    env: Environment<'static>,
}

impl Templates {
    /// The templates compiled into the binary.
    pub fn embedded() -> Self {
        let mut env = environment();
        minijinja_embed::load_templates!(&mut env);
        Templates { env }
    }

    /// The embedded templates, replaced from `overrides` when it is given.
    pub fn load(overrides: Option<&Path>) -> Result<Self, RenderError> {
        match overrides {
            Some(dir) => Self::with_overrides(dir),
            None => Ok(Self::embedded()),
        }
    }

    /// Embedded templates, with any file present under `dir` (same relative name) used instead.
    /// Every file under `dir` must name an embedded template.
    pub fn with_overrides(dir: &Path) -> Result<Self, RenderError> {
        if !dir.is_dir() {
            return Err(RenderError::ReadOverrides {
                path: dir.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
            });
        }
        let mut templates = Self::embedded();
        for (name, path) in files_under(dir)? {
            if !templates.names().contains(&name.as_str()) {
                return Err(RenderError::UnknownOverride {
                    path,
                    known: templates.names().join(", "),
                });
            }
            let text = std::fs::read_to_string(&path)
                .map_err(|source| RenderError::ReadOverrides { path, source })?;
            templates
                .env
                .add_template_owned(name.clone(), text)
                .map_err(|source| RenderError::Compile { name, source })?;
        }
        Ok(templates)
    }

    /// The template names, sorted.
    fn names(&self) -> Vec<&str> {
        self.env.templates().map(|(name, _)| name).collect()
    }

    /// Renders `name` with `ctx` and parses the result back into its YAML documents
    /// (empty documents dropped; a repeated key is an error, as in a request).
    pub fn render_docs<C: Serialize + ?Sized>(
        &self,
        name: &str,
        ctx: &C,
    ) -> Result<Vec<Value>, RenderError> {
        let text = self.render_text(name, ctx)?;
        crate::yaml::parse_documents(&text).map_err(|source| RenderError::ParseBack {
            name: name.to_string(),
            text,
            source,
        })
    }

    /// Renders `name` and expects exactly one document.
    pub fn render_one<C: Serialize + ?Sized>(
        &self,
        name: &str,
        ctx: &C,
    ) -> Result<Value, RenderError> {
        let mut docs = self.render_docs(name, ctx)?;
        if docs.len() != 1 {
            return Err(RenderError::DocumentCount {
                name: name.to_string(),
                count: docs.len(),
            });
        }
        Ok(docs.remove(0))
    }

    fn render_text<C: Serialize + ?Sized>(
        &self,
        name: &str,
        ctx: &C,
    ) -> Result<String, RenderError> {
        let err = |source| RenderError::Render {
            name: name.to_string(),
            source,
        };
        let tmpl = self.env.get_template(name).map_err(err)?;
        tmpl.render(minijinja::Value::from(minijinja::value::Serde(ctx)))
            .map_err(err)
    }
}

/// An environment without templates: strict about undefined values, every printed value an
/// escaped YAML scalar.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .keep_trailing_newline(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    env.set_formatter(|out, _state, value| {
        if value.is_undefined() {
            return Err(minijinja::Error::new(
                minijinja::ErrorKind::UndefinedError,
                "undefined value printed",
            ));
        }
        let json = serde_json::to_value(value).map_err(|e| {
            minijinja::Error::new(
                minijinja::ErrorKind::BadSerialization,
                "value cannot be written as YAML",
            )
            .with_source(e)
        })?;
        out.write_str(&yaml::inline(&json))
            .map_err(minijinja::Error::from)
    });
    env
}

/// Every file under `dir`, as (name relative to `dir`, path), sorted by name.
fn files_under(dir: &Path) -> Result<Vec<(String, PathBuf)>, RenderError> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let read_error = |source| RenderError::ReadOverrides {
            path: d.clone(),
            source,
        };
        for entry in std::fs::read_dir(&d).map_err(read_error)? {
            let path = entry.map_err(read_error)?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path.strip_prefix(dir).unwrap_or(&path).to_string_lossy();
            files.push((name.into_owned(), path));
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The error as `fledge` prints it, causes included.
    fn chain(err: RenderError) -> String {
        crate::diagnostics::error_chain(&anyhow::Error::new(err))
    }

    #[test]
    fn every_j2_file_under_templates_is_embedded_under_its_relative_name() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates");
        let expected: Vec<String> = files_under(&root)
            .unwrap()
            .into_iter()
            .map(|(name, _)| name)
            .filter(|name| name.ends_with(".j2"))
            .collect();
        assert!(expected.contains(&"management/cluster.yaml.j2".to_string()));
        assert_eq!(Templates::embedded().names(), expected);
    }

    #[test]
    fn an_override_file_that_names_no_template_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("management")).unwrap();
        // A typo: the template is cluster.yaml.j2.
        std::fs::write(dir.path().join("management/clusters.yaml.j2"), "kind: X\n").unwrap();
        let err = Templates::with_overrides(dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("management/clusters.yaml.j2: names no template; templates are ")
                && err.contains("management/cluster.yaml.j2"),
            "{err}"
        );
        std::fs::remove_file(dir.path().join("management/clusters.yaml.j2")).unwrap();
        std::fs::write(dir.path().join("management/cluster.yaml.j2"), "kind: X\n").unwrap();
        assert!(Templates::with_overrides(dir.path()).is_ok());
    }

    #[test]
    fn values_cannot_change_structure() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("management")).unwrap();
        std::fs::write(
            dir.path().join("management/namespace.yaml.j2"),
            "kind: T\nname: {{ v }}\nlist: [{{ v }}]\njoined: {{ v ~ \"-x\" }}\n",
        )
        .unwrap();
        let t = Templates::with_overrides(dir.path()).unwrap();
        for v in [
            "a\nkind: Evil",
            "yes",
            "{{ x }}",
            "\"q\": 1",
            "# c",
            "0755",
            "~",
        ] {
            let doc = t
                .render_one("management/namespace.yaml.j2", &json!({"v": v}))
                .unwrap();
            assert_eq!(
                doc,
                json!({"kind": "T", "name": v, "list": [v], "joined": format!("{v}-x")})
            );
        }
    }

    #[test]
    fn a_template_that_repeats_a_key_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("management")).unwrap();
        std::fs::write(
            dir.path().join("management/namespace.yaml.j2"),
            "kind: Namespace\nmetadata:\n  name: a\n  name: {{ v }}\n",
        )
        .unwrap();
        let t = Templates::with_overrides(dir.path()).unwrap();
        let err = chain(
            t.render_one("management/namespace.yaml.j2", &json!({"v": "b"}))
                .unwrap_err(),
        );
        assert!(
            err.contains("line 4, column 3: duplicate key \"name\" (first at line 3)"),
            "{err}"
        );
    }

    #[test]
    fn undefined_values_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("management")).unwrap();
        std::fs::write(
            dir.path().join("management/namespace.yaml.j2"),
            "name: {{ missing }}\n",
        )
        .unwrap();
        let t = Templates::with_overrides(dir.path()).unwrap();
        let err = chain(
            t.render_one("management/namespace.yaml.j2", &json!({}))
                .unwrap_err(),
        );
        assert!(err.contains("undefined"), "{err}");
    }
}
