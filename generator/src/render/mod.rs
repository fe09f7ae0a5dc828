//! Templates: structure comes from minijinja templates in `templates/`, values from the checked
//! spec. Every value a template prints is emitted as an escaped YAML scalar (see [`yaml`]), so no
//! user string can change a document's structure. Every rendered document is parsed back.

pub mod yaml;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;

/// Templates compiled into the binary: (name, source).
const EMBEDDED: &[(&str, &str)] = &[
    (
        "management/namespace.yaml.j2",
        include_str!("../../../templates/management/namespace.yaml.j2"),
    ),
    (
        "management/cluster.yaml.j2",
        include_str!("../../../templates/management/cluster.yaml.j2"),
    ),
    (
        "management/kubeadmcontrolplane.yaml.j2",
        include_str!("../../../templates/management/kubeadmcontrolplane.yaml.j2"),
    ),
    (
        "management/agent-access.yaml.j2",
        include_str!("../../../templates/management/agent-access.yaml.j2"),
    ),
    (
        "workload/machinedeployment.yaml.j2",
        include_str!("../../../templates/workload/machinedeployment.yaml.j2"),
    ),
    (
        "workload/kubeadmconfigtemplate.yaml.j2",
        include_str!("../../../templates/workload/kubeadmconfigtemplate.yaml.j2"),
    ),
    (
        "workload/machinehealthcheck.yaml.j2",
        include_str!("../../../templates/workload/machinehealthcheck.yaml.j2"),
    ),
    (
        "node/kube-vip.yaml.j2",
        include_str!("../../../templates/node/kube-vip.yaml.j2"),
    ),
    (
        "agent/config.yaml.j2",
        include_str!("../../../templates/agent/config.yaml.j2"),
    ),
    (
        "cloudinit/user-data.yaml.j2",
        include_str!("../../../templates/cloudinit/user-data.yaml.j2"),
    ),
    (
        "cloudinit/kubeadm.yaml.j2",
        include_str!("../../../templates/cloudinit/kubeadm.yaml.j2"),
    ),
    (
        "infra/vsphere.yaml.j2",
        include_str!("../../../templates/infra/vsphere.yaml.j2"),
    ),
    (
        "infra/aws.yaml.j2",
        include_str!("../../../templates/infra/aws.yaml.j2"),
    ),
    (
        "infra/azure.yaml.j2",
        include_str!("../../../templates/infra/azure.yaml.j2"),
    ),
    (
        "infra/gcp.yaml.j2",
        include_str!("../../../templates/infra/gcp.yaml.j2"),
    ),
    (
        "infra/maas.yaml.j2",
        include_str!("../../../templates/infra/maas.yaml.j2"),
    ),
    (
        "infra/docker.yaml.j2",
        include_str!("../../../templates/infra/docker.yaml.j2"),
    ),
];

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
    /// The template failed to render.
    #[error("template {name}: {message}")]
    Template {
        /// Template name.
        name: String,
        /// minijinja's message, with line.
        message: String,
    },
    /// The rendered text is not valid YAML: a template bug, never a value.
    #[error("template {name} rendered invalid YAML: {message}\n--- rendered text ---\n{text}")]
    ParseBack {
        /// Template name.
        name: String,
        /// Parser message.
        message: String,
        /// The rendered text.
        text: String,
    },
}

/// The template set: embedded templates, each replaceable from an override directory.
pub struct Templates {
    env: Environment<'static>,
}

impl Templates {
    /// The templates compiled into the binary.
    pub fn embedded() -> Self {
        Self::build(BTreeMap::new())
    }

    /// Embedded templates, with any file present under `dir` (same relative name) used instead.
    pub fn with_overrides(dir: &Path) -> Result<Self, RenderError> {
        let mut overrides = BTreeMap::new();
        for (name, _) in EMBEDDED {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    overrides.insert(name.to_string(), text);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(RenderError::ReadOverrides { path, source }),
            }
        }
        if !dir.is_dir() {
            return Err(RenderError::ReadOverrides {
                path: dir.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
            });
        }
        // Every file under the directory must be one of the templates.
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let entries = std::fs::read_dir(&d).map_err(|source| RenderError::ReadOverrides {
                path: d.clone(),
                source,
            })?;
            for entry in entries {
                let path = entry
                    .map_err(|source| RenderError::ReadOverrides {
                        path: d.clone(),
                        source,
                    })?
                    .path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let rel = path.strip_prefix(dir).unwrap_or(&path).to_string_lossy();
                if !EMBEDDED.iter().any(|(name, _)| *name == rel) {
                    let known: Vec<&str> = EMBEDDED.iter().map(|(n, _)| *n).collect();
                    return Err(RenderError::UnknownOverride {
                        path,
                        known: known.join(", "),
                    });
                }
            }
        }
        Ok(Self::build(overrides))
    }

    fn build(overrides: BTreeMap<String, String>) -> Self {
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
        env.set_loader(move |name| {
            if let Some(text) = overrides.get(name) {
                return Ok(Some(text.clone()));
            }
            Ok(EMBEDDED
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, src)| src.to_string()))
        });
        Templates { env }
    }

    /// Renders `name` with `ctx` and parses the result back into its YAML documents
    /// (empty documents dropped; a repeated key is an error, as in a request).
    pub fn render_docs(&self, name: &str, ctx: &Value) -> Result<Vec<Value>, RenderError> {
        let text = self.render_text(name, ctx)?;
        crate::yaml::parse_documents(&text).map_err(|e| RenderError::ParseBack {
            name: name.to_string(),
            message: e.to_string(),
            text: text.clone(),
        })
    }

    /// Renders `name` and expects exactly one document.
    pub fn render_one(&self, name: &str, ctx: &Value) -> Result<Value, RenderError> {
        let mut docs = self.render_docs(name, ctx)?;
        if docs.len() != 1 {
            return Err(RenderError::Template {
                name: name.to_string(),
                message: format!("rendered {} documents; expected one", docs.len()),
            });
        }
        Ok(docs.remove(0))
    }

    fn render_text(&self, name: &str, ctx: &Value) -> Result<String, RenderError> {
        let err = |e: minijinja::Error| RenderError::Template {
            name: name.to_string(),
            message: format!("{e:#}"),
        };
        let tmpl = self.env.get_template(name).map_err(err)?;
        tmpl.render(minijinja::Value::from(minijinja::value::Serde(ctx)))
            .map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        let err = t
            .render_one("management/namespace.yaml.j2", &json!({"v": "b"}))
            .unwrap_err()
            .to_string();
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
        let err = t
            .render_one("management/namespace.yaml.j2", &json!({}))
            .unwrap_err();
        assert!(err.to_string().contains("undefined"), "{err}");
    }
}
