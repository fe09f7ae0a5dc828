//! Provider versions the image does not carry, fetched once from a URL and pinned by sha256:
//! `providers.fetch` in the agent configuration names a base URL (a release's download
//! directory) and the sha256 of its `components.yaml` and `metadata.yaml`. Both files are
//! downloaded, checked against their pins, and only then written (temp directory, fsync,
//! rename) to `<stateDir>/providers/<name>/<version>/`, where [`crate::components`] reads them
//! like a baked directory. A file whose hash does not match is never written; a version already
//! downloaded with the right hashes is not fetched again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use sha2::{Digest, Sha256};

use crate::config::Fetch;

/// The largest file accepted (a big provider's components.yaml is a few MB).
pub const MAX_BYTES: usize = 64 << 20;

/// The files of a provider version.
pub const FILES: [&str; 2] = ["components.yaml", "metadata.yaml"];

/// Why a provider could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is not http(s).
    #[error("{url}: must be an http:// or https:// URL ending in /")]
    Url {
        /// The URL.
        url: String,
    },
    /// The request failed.
    #[error("GET {url}: {message}")]
    Get {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// The content does not match its pin.
    #[error("GET {url}: sha256 {got} does not match the pinned {want}; nothing was written")]
    Mismatch {
        /// The URL.
        url: String,
        /// What the configuration pins.
        want: String,
        /// What arrived.
        got: String,
    },
    /// Writing the files failed.
    #[error("{path}: cannot write")]
    Write {
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The directory downloaded providers live in.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("providers")
}

/// Lower-case hex sha256 of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// True when `f`'s files are in `base` with the pinned hashes.
pub fn present(base: &Path, f: &Fetch) -> bool {
    let at = base.join(&f.name).join(&f.version);
    FILES.iter().all(|name| {
        let want = f.sha256.get(*name);
        match (std::fs::read(at.join(name)), want) {
            (Ok(bytes), Some(want)) => hex(&bytes) == want.to_ascii_lowercase(),
            (Err(_), None) => true, // cert-manager has no metadata.yaml
            _ => false,
        }
    })
}

/// GETs `url` (http or https, a few redirects followed, the body bounded).
pub async fn get(url: &str) -> Result<Vec<u8>, FetchError> {
    let err = |message: String| FetchError::Get {
        url: url.to_string(),
        message,
    };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| err(format!("no TLS roots: {e}")))?
        .https_or_http()
        .enable_http1()
        .build();
    let client: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https);
    let uri: hyper::Uri = url.parse().map_err(|e| err(format!("{e}")))?;
    let mut uri = uri;
    // Follow a few redirects (release downloads redirect to a CDN).
    for _ in 0..5 {
        let resp = tokio::time::timeout(Duration::from_secs(60), client.get(uri.clone()))
            .await
            .map_err(|_| err("timed out after 60s".into()))?
            .map_err(|e| err(e.to_string()))?;
        let status = resp.status();
        if status.is_redirection() {
            let next = resp
                .headers()
                .get(hyper::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| err(format!("{status} without a Location")))?;
            uri = next
                .parse()
                .map_err(|e| err(format!("redirect to {next}: {e}")))?;
            continue;
        }
        if !status.is_success() {
            return Err(err(status.to_string()));
        }
        let body = Limited::new(resp.into_body(), MAX_BYTES)
            .collect()
            .await
            .map_err(|e| err(format!("reading the body: {e}")))?;
        return Ok(body.to_bytes().to_vec());
    }
    Err(err("more than 5 redirects".into()))
}

/// Fetches `f` into `base` unless it is there already; returns whether it downloaded.
pub async fn ensure(base: &Path, f: &Fetch) -> Result<bool, FetchError> {
    if present(base, f) {
        return Ok(false);
    }
    if !(f.url.starts_with("https://") || f.url.starts_with("http://")) || !f.url.ends_with('/') {
        return Err(FetchError::Url { url: f.url.clone() });
    }
    let mut files = Vec::new();
    for name in FILES {
        let Some(want) = f.sha256.get(name) else {
            continue;
        };
        let url = format!("{}{name}", f.url);
        let bytes = get(&url).await?;
        let got = hex(&bytes);
        if got != want.to_ascii_lowercase() {
            return Err(FetchError::Mismatch {
                url,
                want: want.clone(),
                got,
            });
        }
        files.push((name, bytes));
    }
    let parent = base.join(&f.name);
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FetchError::Write { path, source }
    };
    std::fs::create_dir_all(&parent).map_err(werr(&parent))?;
    let tmp = tempfile::Builder::new()
        .prefix(".fetch.")
        .tempdir_in(&parent)
        .map_err(werr(&parent))?;
    for (name, bytes) in &files {
        crate::fsutil::write_atomic(&tmp.path().join(name), bytes, 0o644)
            .map_err(werr(&tmp.path().join(name)))?;
    }
    let at = parent.join(&f.version);
    let _ = std::fs::remove_dir_all(&at);
    let kept = tmp.keep();
    std::fs::rename(&kept, &at).map_err(werr(&at))?;
    std::fs::File::open(&parent)
        .and_then(|d| d.sync_all())
        .map_err(werr(&parent))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A plain HTTP server on loopback serving `files` (path -> body); 404 otherwise.
    async fn serve(files: Vec<(&'static str, &'static str)>) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let files = files.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]);
                    let path = req.split_whitespace().nth(1).unwrap_or("").to_string();
                    let resp = match files.iter().find(|(p, _)| *p == path) {
                        Some((_, body)) => format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()),
                        None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
                    };
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        format!("http://{addr}/r/")
    }

    fn entry(url: &str, components: &str, metadata: &str) -> Fetch {
        Fetch {
            name: "infrastructure-docker".into(),
            version: "v1.13.5".into(),
            url: url.into(),
            sha256: [
                ("components.yaml".to_string(), hex(components.as_bytes())),
                ("metadata.yaml".to_string(), hex(metadata.as_bytes())),
            ]
            .into(),
        }
    }

    #[tokio::test]
    async fn a_pinned_version_is_fetched_once_and_a_mismatch_writes_nothing() {
        let url = serve(vec![
            ("/r/components.yaml", "kind: A\n"),
            ("/r/metadata.yaml", "m: 1\n"),
        ])
        .await;
        let dir = tempfile::tempdir().unwrap();
        let good = entry(&url, "kind: A\n", "m: 1\n");
        assert!(ensure(dir.path(), &good).await.unwrap());
        let at = dir.path().join("infrastructure-docker/v1.13.5");
        assert_eq!(
            std::fs::read_to_string(at.join("components.yaml")).unwrap(),
            "kind: A\n"
        );
        assert!(present(dir.path(), &good));
        // Already there with the right hashes: not fetched again.
        assert!(!ensure(dir.path(), &good).await.unwrap());

        let other = tempfile::tempdir().unwrap();
        let bad = entry(&url, "kind: B\n", "m: 1\n");
        let e = ensure(other.path(), &bad).await.unwrap_err();
        assert!(e.to_string().contains("does not match the pinned"), "{e}");
        assert!(!other.path().join("infrastructure-docker/v1.13.5").exists());
        assert_eq!(
            std::fs::read_dir(other.path().join("infrastructure-docker"))
                .map(|d| d.count())
                .unwrap_or(0),
            0
        );

        let missing = Fetch {
            url: url.replace("/r/", "/gone/"),
            ..good.clone()
        };
        let e = ensure(other.path(), &missing).await.unwrap_err();
        assert!(e.to_string().contains("404"), "{e}");
    }
}
