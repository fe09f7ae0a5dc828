//! Provider versions the image does not carry, fetched once from a URL and pinned by sha256:
//! `providers.fetch` in the agent configuration names a base URL (a release's download
//! directory) and the sha256 of its `components.yaml` and `metadata.yaml`. Both files are
//! downloaded, checked against their pins, and only then written (temp directory, fsync,
//! rename) to `<stateDir>/providers/<name>/<version>/`, where [`crate::clusterctl::components`] reads them
//! like a baked directory. A file whose hash does not match is never written; a version already
//! downloaded with the right hashes is not fetched again.
//!
//! [`get`] is bounded: connecting, each wait for more bytes, the whole transfer and the size
//! ([`Limits`]). It follows up to [`MAX_REDIRECTS`] redirects, relative ones too, but none from
//! https to http and none to a link-local or cloud metadata-service address (by name, by address,
//! or by a name that resolves there), where a node's cloud credentials are served.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_platform_verifier::BuilderVerifierExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The largest file accepted (a big provider's components.yaml is a few MB).
pub const MAX_BYTES: usize = 64 << 20;

/// The files of a provider version.
pub const FILES: [&str; 2] = ["components.yaml", "metadata.yaml"];

/// A provider version fetched from a URL (`providers.fetch[]` in the agent configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fetch {
    /// Provider name as in the directory layout (`infrastructure-vsphere`).
    pub name: String,
    /// Version (`v1.16.1`).
    pub version: String,
    /// Base URL ending in `/` holding `components.yaml` and `metadata.yaml` (a release's
    /// download directory).
    pub url: String,
    /// sha256 (hex) per file: `components.yaml` always, `metadata.yaml` for CAPI providers.
    pub sha256: std::collections::BTreeMap<String, String>,
}

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
    /// The entry's name or version is not a plain directory name (the configuration is checked
    /// on load; this guards the directory the files are written to).
    #[error("providers.fetch entry {name:?}: {problem}")]
    Entry {
        /// The provider name.
        name: String,
        /// What is wrong, naming the field and the value.
        problem: String,
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
    state_dir.join(crate::state::layout::PROVIDERS)
}

/// Lower-case hex sha256 of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks a provider name that names a directory (`providers.fetch[].name`): `cert-manager`,
/// `cluster-api`, `bootstrap-*`, `control-plane-*` or `infrastructure-*`, and a DNS-1123 label.
pub fn check_provider_name(name: &str) -> Result<(), String> {
    if crate::clusterctl::components::kind_of(name).is_some()
        && fledge_generator::spec::check_dns_label(name, 63).is_ok()
    {
        Ok(())
    } else {
        Err(format!(
            "must be cert-manager, cluster-api, bootstrap-*, control-plane-* or infrastructure-*, \
             a DNS-1123 label (lower-case letters, digits and '-', at most 63) (got {name:?})"
        ))
    }
}

/// Checks a provider version that names a directory (`providers.fetch[].version`): `v` and a
/// semantic version (`v1.16.1`, `v1.17.0-rc.1`), which holds no `/` and no `..`.
pub fn check_provider_version(version: &str) -> Result<(), String> {
    let semver = version
        .strip_prefix('v')
        .is_some_and(|v| semver::Version::parse(v).is_ok());
    if semver && version.len() <= 128 {
        Ok(())
    } else {
        Err(format!(
            "must be v and a semantic version such as v1.16.1 or v1.17.0-rc.1, \
             at most 128 characters, no '/' or '..' (got {version:?})"
        ))
    }
}

/// Checks that `f`'s name and version are plain directory names (`<base>/<name>/<version>`
/// stays under `base`).
fn check_entry(f: &Fetch) -> Result<(), FetchError> {
    let problem = check_provider_name(&f.name)
        .map_err(|r| format!("name: {r}"))
        .and_then(|()| check_provider_version(&f.version).map_err(|r| format!("version: {r}")));
    problem.map_err(|problem| FetchError::Entry {
        name: f.name.clone(),
        problem,
    })
}

/// True when `f`'s files are in `base` with the pinned hashes.
pub fn present(base: &Path, f: &Fetch) -> bool {
    if check_entry(f).is_err() {
        return false;
    }
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

/// At most this many redirects are followed (release downloads redirect to a CDN once or twice).
pub const MAX_REDIRECTS: usize = 5;

/// Bounds of one download. The defaults suit a provider's release files; tests pass shorter ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Establishing a connection (TCP and TLS), per address tried.
    pub connect: Duration,
    /// The whole transfer, every redirect and the body included.
    pub total: Duration,
    /// The longest wait for the next bytes (the headers, or more of the body).
    pub stall: Duration,
    /// The largest body accepted.
    pub max_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connect: Duration::from_secs(30),
            total: Duration::from_secs(300),
            stall: Duration::from_secs(60),
            max_bytes: MAX_BYTES,
        }
    }
}

/// True for addresses a download must never reach (the generator's rule for spec URLs:
/// link-local and cloud metadata-service addresses).
pub fn refused_ip(ip: IpAddr) -> bool {
    fledge_generator::spec::is_metadata_ip(ip)
}

/// Why the redirect from `from` to `to` must not be followed, if it must not: a downgrade from
/// https to http, or a link-local or metadata-service host.
pub fn redirect_refusal(from: &reqwest::Url, to: &reqwest::Url) -> Option<String> {
    if from.scheme() == "https" && to.scheme() != "https" {
        return Some(format!(
            "redirect from https to {} ({to}) refused",
            to.scheme()
        ));
    }
    let host = to.host_str()?;
    refused_host(to).then(|| {
        format!(
            "redirect to {to} refused: {host} is a link-local or cloud metadata-service address"
        )
    })
}

/// True when `url`'s host is a link-local or metadata-service address or name.
pub fn refused_host(url: &reqwest::Url) -> bool {
    url.host_str()
        .is_some_and(fledge_generator::spec::is_metadata_host)
}

/// The addresses `host` resolved to that a download may reach; an error when it resolved only
/// to refused ones.
pub fn allowed_addrs(host: &str, found: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, String> {
    let (refused, kept): (Vec<_>, Vec<_>) = found.into_iter().partition(|a| refused_ip(a.ip()));
    match refused.first() {
        Some(first) if kept.is_empty() => Err(format!(
            "{host} resolves to {}, a link-local or cloud metadata-service address: refused",
            first.ip()
        )),
        _ => Ok(kept),
    }
}

/// The system resolver, less the addresses in [`refused_ip`] (a name may point there too).
struct Resolver;

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str();
            let found = tokio::net::lookup_host((host, 0)).await?.collect();
            let kept = allowed_addrs(host, found)?;
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The redirect policy: at most [`MAX_REDIRECTS`], none that [`redirect_refusal`] refuses.
/// Relative `Location`s arrive here resolved against the URL that sent them.
fn policy(attempt: reqwest::redirect::Attempt<'_>) -> reqwest::redirect::Action {
    let refusal = attempt
        .previous()
        .last()
        .and_then(|from| redirect_refusal(from, attempt.url()));
    if let Some(why) = refusal {
        attempt.error(why)
    } else if attempt.previous().len() > MAX_REDIRECTS {
        attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
    } else {
        attempt.follow()
    }
}

/// An HTTP client for one download: ring and the system's roots (as kube's client), HTTP/1.1,
/// TCP keepalive, no proxy, and the redirect policy and resolver above.
fn client(limits: &Limits) -> Result<reqwest::Client, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_platform_verifier())
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .http1_only()
        .no_proxy()
        .connect_timeout(limits.connect)
        .read_timeout(limits.stall)
        .tcp_keepalive(Duration::from_secs(30))
        .tcp_keepalive_interval(Duration::from_secs(10))
        .tcp_keepalive_retries(3)
        .redirect(reqwest::redirect::Policy::custom(policy))
        .dns_resolver(Arc::new(Resolver))
        .build()
        .map_err(|e| chain(&e))
}

/// `e` and its sources, one line (reqwest's own message is terse; the cause is below it).
fn chain(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut next = std::error::Error::source(e);
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
        next = cause.source();
    }
    out
}

/// GETs `url` (http or https) within the default [`Limits`].
pub async fn get(url: &str) -> Result<Vec<u8>, FetchError> {
    get_with(url, &Limits::default()).await
}

/// GETs `url` (http or https, up to [`MAX_REDIRECTS`] redirects followed, relative ones too,
/// none from https to http nor to a link-local or metadata-service address) within `limits`.
pub async fn get_with(url: &str, limits: &Limits) -> Result<Vec<u8>, FetchError> {
    let err = |message: String| FetchError::Get {
        url: url.to_string(),
        message,
    };
    // The first URL too, not only redirects: a spec or a ClusterProfile may name one.
    if let Ok(parsed) = reqwest::Url::parse(url)
        && refused_host(&parsed)
    {
        return Err(err(format!(
            "{} is a link-local or cloud metadata-service address: refused",
            parsed.host_str().unwrap_or_default()
        )));
    }
    let client = client(limits).map_err(err)?;
    let too_big = || {
        err(format!(
            "the body is larger than {} bytes",
            limits.max_bytes
        ))
    };
    let download = async {
        let mut resp = client
            .get(url)
            .send()
            .await
            .map_err(|e| err(chain(&e.without_url())))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(err(status.to_string()));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > limits.max_bytes as u64)
        {
            return Err(too_big());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| {
            err(if e.is_timeout() {
                format!("reading the body: nothing arrived for {:?}", limits.stall)
            } else {
                format!("reading the body: {}", chain(&e.without_url()))
            })
        })? {
            if body.len() + chunk.len() > limits.max_bytes {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    tokio::time::timeout(limits.total, download)
        .await
        .map_err(|_| err(format!("not finished after {:?}, gave up", limits.total)))?
}

/// Fetches `f` into `base` unless it is there already; returns whether it downloaded.
pub async fn ensure(base: &Path, f: &Fetch) -> Result<bool, FetchError> {
    check_entry(f)?;
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
        crate::state::fsutil::write_atomic(&tmp.path().join(name), bytes, 0o644)
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

    /// What the scripted server sends for one request.
    enum Reply {
        /// These bytes, then close.
        Whole(String),
        /// `head`, then one `b'x'` every `every`, `count` times.
        Trickle {
            head: String,
            every: Duration,
            count: usize,
        },
    }

    /// A plain HTTP server on loopback answering each request path with `reply(path)`; returns
    /// its base URL (`http://127.0.0.1:PORT`).
    async fn script(reply: fn(&str) -> Reply) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]);
                    let path = req.split_whitespace().nth(1).unwrap_or("").to_string();
                    match reply(&path) {
                        Reply::Whole(text) => {
                            let _ = s.write_all(text.as_bytes()).await;
                        }
                        Reply::Trickle { head, every, count } => {
                            let _ = s.write_all(head.as_bytes()).await;
                            for _ in 0..count {
                                tokio::time::sleep(every).await;
                                if s.write_all(b"x").await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        format!("http://{addr}")
    }

    fn redirect(to: &str) -> Reply {
        Reply::Whole(format!(
            "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ))
    }

    fn ok(body: &str) -> Reply {
        Reply::Whole(format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ))
    }

    /// Runs `get_with`, failing the test (instead of hanging) if it has not returned in 20 s.
    async fn bounded_get(url: &str, limits: &Limits) -> (Result<Vec<u8>, FetchError>, Duration) {
        let start = std::time::Instant::now();
        let got = tokio::time::timeout(Duration::from_secs(20), get_with(url, limits))
            .await
            .unwrap_or_else(|_| panic!("GET {url} was still running after 20s"));
        (got, start.elapsed())
    }

    #[tokio::test]
    async fn a_body_that_trickles_fails_at_the_total_deadline() {
        let base = script(|_| Reply::Trickle {
            head: "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".into(),
            every: Duration::from_secs(1),
            count: 1000,
        })
        .await;
        let limits = Limits {
            total: Duration::from_secs(2),
            ..Limits::default()
        };
        let (got, took) = bounded_get(&format!("{base}/slow"), &limits).await;
        let e = got.unwrap_err();
        assert!(took < Duration::from_secs(6), "took {took:?}");
        assert!(e.to_string().contains("2s"), "{e}");
    }

    #[tokio::test]
    async fn a_body_that_stops_fails_at_the_stall_bound() {
        let base = script(|_| Reply::Trickle {
            head: "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nabc".into(),
            every: Duration::from_secs(3600),
            count: 1,
        })
        .await;
        let limits = Limits {
            stall: Duration::from_secs(1),
            ..Limits::default()
        };
        let (got, took) = bounded_get(&format!("{base}/stuck"), &limits).await;
        let e = got.unwrap_err();
        assert!(took < Duration::from_secs(6), "took {took:?}");
        assert!(e.to_string().contains("GET"), "{e}");
    }

    #[tokio::test]
    async fn a_body_over_the_size_bound_is_refused_with_or_without_a_length() {
        let base = script(|path| match path {
            "/declared" => ok("0123456789abcdef"),
            _ => {
                Reply::Whole("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n0123456789abcdef".into())
            }
        })
        .await;
        let limits = Limits {
            max_bytes: 10,
            ..Limits::default()
        };
        for path in ["/declared", "/until-close"] {
            let (got, _) = bounded_get(&format!("{base}{path}"), &limits).await;
            let e = got.unwrap_err();
            assert!(e.to_string().contains("10 bytes"), "{path}: {e}");
        }
        let (got, _) = bounded_get(&format!("{base}/declared"), &Limits::default()).await;
        assert_eq!(got.unwrap(), b"0123456789abcdef");
    }

    #[tokio::test]
    async fn relative_redirects_are_followed() {
        let base = script(|path| match path {
            "/r/a" => redirect("b"),
            "/r/b" => redirect("/final/c?x=1"),
            "/final/c?x=1" => ok("arrived"),
            _ => Reply::Whole("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into()),
        })
        .await;
        let (got, _) = bounded_get(&format!("{base}/r/a"), &Limits::default()).await;
        assert_eq!(got.unwrap(), b"arrived");
    }

    #[tokio::test]
    async fn a_redirect_to_the_metadata_service_is_refused_before_connecting() {
        let base = script(|_| redirect("http://169.254.169.254/latest/meta-data/")).await;
        let (got, _) = bounded_get(&format!("{base}/r/a"), &Limits::default()).await;
        let e = got.unwrap_err().to_string();
        assert!(
            e.contains("169.254.169.254") && e.contains("refused"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_first_url_on_a_metadata_or_link_local_host_is_refused_before_connecting() {
        for url in [
            "https://169.254.169.254/latest/meta-data/iam/security-credentials/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "https://[fe80::1]/x.yaml",
        ] {
            let e = get(url).await.unwrap_err().to_string();
            assert!(e.contains("refused"), "{url}: {e}");
            assert!(
                !e.contains("timed out") && !e.contains("connect"),
                "{url}: {e}"
            );
        }
    }

    #[test]
    fn redirects_that_downgrade_or_reach_link_local_or_metadata_hosts_are_refused() {
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        let refused = |from: &str, to: &str| redirect_refusal(&url(from), &url(to));
        let cdn = "https://objects.example.com/release/components.yaml";
        assert_eq!(refused("https://example.com/r/", cdn), None);
        assert_eq!(refused("http://example.com/r/", cdn), None);
        assert_eq!(
            refused("http://example.com/r/", "http://mirror.example.com/x"),
            None
        );
        assert!(
            refused("https://example.com/r/", "http://example.com/r/x")
                .unwrap()
                .contains("https to http")
        );
        for to in [
            "http://169.254.169.254/latest/meta-data/",
            "https://169.254.170.2/v2/credentials",
            "http://[fe80::1]/",
            "http://[febf::1]/",
            "http://[fd00:ec2::254]/latest/meta-data/",
            "http://[::ffff:169.254.169.254]/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://METADATA.google.internal./computeMetadata/v1/",
            "http://metadata/computeMetadata/v1/",
            "http://100.100.100.200/latest/meta-data/",
            "http://[fd20:ce::254]/",
            // Other spellings of 169.254.169.254, which the URL parser normalises.
            "http://2852039166/",
            "http://0xA9FEA9FE/",
            "http://169.254.43518/",
        ] {
            assert!(refused("http://example.com/r/", to).is_some(), "{to}");
        }
        // Not link-local: fec0::/10 and 169.253.x are ordinary addresses.
        assert_eq!(refused("http://example.com/", "http://[fec0::1]/"), None);
        assert_eq!(refused("http://example.com/", "http://169.253.1.1/"), None);
    }

    #[test]
    fn names_resolving_to_link_local_or_metadata_addresses_are_refused() {
        for ip in [
            "169.254.169.254",
            "169.254.0.1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "100.100.100.200",
        ] {
            assert!(refused_ip(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "140.82.112.3",
            "::1",
            "2001:db8::1",
        ] {
            assert!(!refused_ip(ip.parse().unwrap()), "{ip}");
        }
        let at = |ip: &str| SocketAddr::new(ip.parse().unwrap(), 0);
        assert_eq!(
            allowed_addrs(
                "mixed.example",
                vec![at("169.254.169.254"), at("192.0.2.7")]
            ),
            Ok(vec![at("192.0.2.7")])
        );
        let e = allowed_addrs("imds.example", vec![at("169.254.169.254"), at("fe80::1")]);
        assert!(e.unwrap_err().contains("169.254.169.254"));
    }

    #[tokio::test]
    async fn an_entry_whose_name_or_version_leaves_the_providers_dir_is_refused_and_nothing_is_removed()
     {
        let base = script(|path| match path {
            "/r/components.yaml" => ok("kind: A\n"),
            _ => ok("m: 1\n"),
        })
        .await;
        let url = format!("{base}/r/");
        let root = tempfile::tempdir().unwrap();
        let providers = root.path().join("state/providers");
        let victim = root.path().join("victim");
        std::fs::create_dir_all(&victim).unwrap();
        std::fs::write(victim.join("keep"), "precious").unwrap();
        for (name, version) in [
            ("infrastructure-docker", "../../../victim"),
            ("infrastructure-docker", "v1.2.3/../../../../victim"),
            ("../../victim", "v1.2.3"),
            ("infrastructure-../../victim", "v1.2.3"),
        ] {
            let f = Fetch {
                name: name.into(),
                version: version.into(),
                ..entry(&url, "kind: A\n", "m: 1\n")
            };
            let e = ensure(&providers, &f).await.unwrap_err();
            assert!(e.to_string().contains("must be"), "{name} {version}: {e}");
            assert!(!present(&providers, &f));
            assert_eq!(
                std::fs::read_to_string(victim.join("keep")).unwrap(),
                "precious",
                "{name} {version}"
            );
        }
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
