//! The render pipeline: a request file in, every artifact of `fledge render` out, in memory and
//! in output order (management objects, CP-A's seed content and image, workload objects).

use std::path::{Path, PathBuf};

use crate::diagnostics::print_warnings;
use crate::output::OutputFile;
use crate::render::{Templates, yaml};
use crate::seed::{self, SeedFormat};
use crate::{cloudinit, management, spec, workload};

/// Options of [`render_files`].
#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    /// Template override directory.
    pub templates: Option<PathBuf>,
    /// User-data limit; the provider's default when `None`.
    pub max_user_data: Option<usize>,
    /// Management credentials to embed in CP-A's user-data.
    pub credentials: cloudinit::Credentials,
    /// Seed image to build.
    pub seed: Option<SeedFormat>,
}

/// Renders every artifact of a request into memory, in output order.
pub fn render_files(request: &Path, opts: &RenderOptions) -> anyhow::Result<Vec<OutputFile>> {
    let checked = spec::load_request(request)?;
    print_warnings(request, &checked);
    let templates = Templates::load(opts.templates.as_deref())?;
    let objects = management::objects(&checked, &templates)?;
    let limit = opts
        .max_user_data
        .unwrap_or_else(|| cloudinit::default_limit(checked.provider()));
    let seed = cloudinit::render(&checked, &templates, &opts.credentials, limit)?;
    for path in &seed.compressed {
        tracing::info!(file = %path, "compressed with gzip+base64 to fit the user-data limit");
    }
    let mut files = vec![
        OutputFile::public("management.yaml", yaml::documents(&objects)),
        OutputFile {
            path: "cp-a/user-data".into(),
            contents: seed.user_data.into_bytes(),
            mode: 0o600,
        },
        OutputFile::public("cp-a/meta-data", seed.meta_data),
    ];
    if let Some(format) = opts.seed {
        let content = seed::SeedContent {
            user_data: files[1].contents.clone(),
            meta_data: files[2].contents.clone(),
            network_config: seed.network_config.as_ref().map(|n| n.clone().into_bytes()),
            vendor_data: None,
        };
        let image = seed::build(format, &content)?;
        files.push(OutputFile {
            path: PathBuf::from("cp-a").join(format.file_name()),
            contents: image,
            mode: 0o600,
        });
    }
    if let Some(net) = seed.network_config {
        files.push(OutputFile::public("cp-a/network-config", net));
    }
    let workload = workload::objects(&checked, &templates)?;
    files.push(OutputFile::public(
        "workload.yaml",
        yaml::documents(&workload),
    ));
    Ok(files)
}
