//! Real Kubernetes API servers for tests: etcd + kube-apiserver (and optionally
//! kube-controller-manager) on free loopback ports, with a throw-away CA and token, and an audit
//! log of every request at Metadata level (`TestCluster::audit_log`).
//!
//! The binaries come from `scripts/go-peers.sh` (kube-apiserver v1.34, etcd 3.6, built from
//! their Go modules; `$FLEDGE_ASSETS_BIN`, else `~/.cache/fledge/peers/current`). Several
//! clusters can run at once; each owns its processes and its temporary directory, and dropping
//! it stops the processes by PID (controller-manager, then apiserver, then etcd) and removes the
//! directory.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// The script that builds the assets, named in every "missing asset" message.
pub const ASSETS_SCRIPT: &str = "scripts/go-peers.sh";

/// Errors starting or talking to a test cluster.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A binary is missing.
    #[error("test asset {0} is missing: run {ASSETS_SCRIPT} (or set FLEDGE_ASSETS_BIN)")]
    MissingAsset(PathBuf),
    /// A helper command (openssl) failed.
    #[error("{what} failed: {detail}")]
    Command {
        /// What was run.
        what: String,
        /// Its output.
        detail: String,
    },
    /// A server exited or did not become ready.
    #[error("{component} {problem}; last lines of {log}:\n{tail}")]
    Server {
        /// etcd, kube-apiserver or kube-controller-manager.
        component: &'static str,
        /// What went wrong.
        problem: String,
        /// The log file.
        log: PathBuf,
        /// The log's tail.
        tail: String,
    },
    /// Filesystem trouble.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The kube client could not be built.
    #[error("kube client: {0}")]
    Kube(String),
}

/// Where the binaries are.
pub fn assets_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FLEDGE_ASSETS_BIN") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/fledge/peers/current")
}

/// What to start.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Also start kube-controller-manager (garbage collector, namespace and service-account
    /// token controllers).
    pub controller_manager: bool,
    /// Extra kube-apiserver flags (tests use this to induce failures).
    pub extra_apiserver_args: Vec<String>,
    /// Also serve on this address (kube-apiserver then binds all interfaces) and name it in
    /// the serving certificate: for clients in containers, e.g. real nodes on a Docker network
    /// whose gateway this is. Clients on the machine keep using `https://127.0.0.1:PORT`.
    pub public_address: Option<std::net::IpAddr>,
}

/// One running test cluster.
pub struct TestCluster {
    dir: Option<tempfile::TempDir>,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    controller_manager: Option<Child>,
    pub(crate) managers: Vec<crate::managers::Manager>,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The admin kubeconfig (token auth, group system:masters).
    pub kubeconfig: PathBuf,
    /// The admin bearer token.
    pub token: String,
    /// A kubeconfig for user `fledge-user`, who has no groups and no rights until a test grants
    /// them (RBAC tests).
    pub user_kubeconfig: PathBuf,
    /// The bearer token of user `fledge-user`.
    pub user_token: String,
    /// PEM of the cluster CA.
    pub ca_pem: String,
    opts: Options,
    secure_port: u16,
    etcd_url: String,
}

/// The user name of [`TestCluster::user_kubeconfig`].
pub const USER: &str = "fledge-user";

/// A TCP port free on every interface, for a server the harness starts next.
///
/// It is picked at random *below* the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`), not by binding port 0: a port from the ephemeral
/// range can be taken by any outgoing connection between this check and the server's own bind
/// (a Cluster API manager once failed with `listen tcp :35383: bind: address already in use`
/// while parallel tests were busy). Falls back to port 0 where no such range is known.
pub fn free_port() -> std::io::Result<u16> {
    use std::hash::{BuildHasher, Hasher};
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    const LOW: u16 = 10000;
    if ephemeral_low > LOW + 1000 {
        let span = u64::from(ephemeral_low - LOW);
        for _ in 0..200 {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or_default(),
            );
            let port = LOW + (h.finish() % span) as u16;
            if TcpListener::bind(("0.0.0.0", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), HarnessError> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| HarnessError::Command {
            what: "openssl".into(),
            detail: format!("{e} (install openssl; scripts/install-test-deps.sh does)"),
        })?;
    if !out.status.success() {
        return Err(HarnessError::Command {
            what: format!("openssl {}", args.join(" ")),
            detail: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

/// A serving certificate `<dir>/<stem>.crt` + `.key` for 127.0.0.1 (the SANs of
/// `<dir>/san.cnf`), signed by the cluster CA in `dir`.
pub(crate) fn issue_cert(dir: &Path, stem: &str, cn: &str) -> Result<(), HarnessError> {
    if !dir.join("san.cnf").exists() {
        write_san(dir, None)?;
    }
    let (key, csr, crt) = (
        format!("{stem}.key"),
        format!("{stem}.csr"),
        format!("{stem}.crt"),
    );
    let subj = format!("/CN={cn}");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &subj,
        ],
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            "san.cnf",
        ],
    )
}

/// The SANs of every certificate [`issue_cert`] issues in `dir`: loopback, and `public`.
fn write_san(dir: &Path, public: Option<std::net::IpAddr>) -> std::io::Result<()> {
    let extra = public.map(|ip| format!(",IP:{ip}")).unwrap_or_default();
    std::fs::write(
        dir.join("san.cnf"),
        format!(
            "subjectAltName=IP:127.0.0.1{extra},DNS:localhost,DNS:kubernetes.default.svc\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
        ),
    )
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn random_token() -> String {
    let mut bytes = [0u8; 24];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut bytes);
    }
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

impl TestCluster {
    /// Starts etcd and kube-apiserver.
    pub async fn start() -> Result<Self, HarnessError> {
        Self::start_with(Options::default()).await
    }

    /// Starts a cluster with options.
    pub async fn start_with(opts: Options) -> Result<Self, HarnessError> {
        let bin = assets_bin();
        for b in ["etcd", "kube-apiserver", "kube-controller-manager"] {
            if !bin.join(b).is_file() {
                return Err(HarnessError::MissingAsset(bin.join(b)));
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("fledge-testcluster-")
            .tempdir()?;
        let d = dir.path();
        // Throw-away CA, serving certificate (IP SAN 127.0.0.1) and service-account key.
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=fledge-test-ca",
            ],
        )?;
        write_san(d, opts.public_address)?;
        issue_cert(d, "server", "kube-apiserver")?;
        openssl(
            d,
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                "sa.key",
            ],
        )?;
        let token = random_token();
        let user_token = random_token();
        std::fs::write(
            d.join("tokens.csv"),
            format!("{token},admin,admin-uid,\"system:masters\"\n{user_token},{USER},user-uid\n"),
        )?;
        let ca_pem = std::fs::read_to_string(d.join("ca.crt"))?;

        let mut cluster = TestCluster {
            dir: Some(dir),
            etcd: None,
            apiserver: None,
            controller_manager: None,
            managers: Vec::new(),
            url: String::new(),
            kubeconfig: PathBuf::new(),
            user_kubeconfig: PathBuf::new(),
            user_token: user_token.clone(),
            token,
            ca_pem,
            opts,
            secure_port: 0,
            etcd_url: String::new(),
        };
        cluster.start_etcd().await?;
        cluster.secure_port = free_port()?;
        cluster.url = format!("https://127.0.0.1:{}", cluster.secure_port);
        cluster.kubeconfig = cluster.dir().join("kubeconfig");
        std::fs::write(
            &cluster.kubeconfig,
            kubeconfig_yaml(&cluster.url, &cluster.ca_pem, &cluster.token),
        )?;
        cluster.user_kubeconfig = cluster.dir().join("user-kubeconfig");
        std::fs::write(
            &cluster.user_kubeconfig,
            kubeconfig_yaml(&cluster.url, &cluster.ca_pem, &user_token),
        )?;
        cluster.start_apiserver().await?;
        if cluster.opts.controller_manager {
            cluster.start_controller_manager()?;
        }
        Ok(cluster)
    }

    /// `https://<public address>:PORT`, the URL clients in containers use (see
    /// [`Options::public_address`]).
    pub fn public_url(&self) -> Option<String> {
        self.opts.public_address.map(|ip| {
            format!(
                "https://{}",
                std::net::SocketAddr::new(ip, self.secure_port)
            )
        })
    }

    /// The apiserver's audit log (JSON lines, one event per request at Metadata level).
    pub fn audit_log(&self) -> PathBuf {
        self.dir().join("audit.log")
    }

    /// The cluster's working directory (certificates, logs, etcd data).
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or(Path::new("/nonexistent"))
    }

    pub(crate) fn log(&self, name: &str) -> PathBuf {
        self.dir().join(format!("{name}.log"))
    }

    fn spawn(&self, name: &'static str, args: &[String]) -> Result<Child, HarnessError> {
        Ok(self.spawn_with_env(name, args, &[])?.0)
    }

    /// Starts `<assets>/name` with its output in `<dir>/name.log`; returns the log's path too.
    pub(crate) fn spawn_with_env(
        &self,
        name: &str,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Result<(Child, PathBuf), HarnessError> {
        let path = self.log(name);
        let log = std::fs::File::create(&path)?;
        let child = Command::new(assets_bin().join(name))
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        Ok((child, path))
    }

    async fn start_etcd(&mut self) -> Result<(), HarnessError> {
        let (client, peer) = (free_port()?, free_port()?);
        self.etcd_url = format!("http://127.0.0.1:{client}");
        let data = self.dir().join("etcd-data");
        let args: Vec<String> = vec![
            format!("--data-dir={}", data.display()),
            "--name=default".into(),
            format!("--listen-client-urls={}", self.etcd_url),
            format!("--advertise-client-urls={}", self.etcd_url),
            format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-cluster=default=http://127.0.0.1:{peer}"),
            "--max-request-bytes=10485760".into(),
            "--quota-backend-bytes=4294967296".into(),
            "--log-level=warn".into(),
        ];
        self.etcd = Some(self.spawn("etcd", &args)?);
        let addr = format!("127.0.0.1:{client}");
        self.wait("etcd", Duration::from_secs(30), |()| {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(&addr).await.is_ok() }
        })
        .await
    }

    /// Starts (or restarts) kube-apiserver on the cluster's port, and waits for /readyz.
    pub async fn start_apiserver(&mut self) -> Result<(), HarnessError> {
        let d = self.dir().to_path_buf();
        let p = |f: &str| d.join(f).display().to_string();
        let mut args: Vec<String> = vec![
            format!("--etcd-servers={}", self.etcd_url),
            match self.opts.public_address {
                Some(_) => "--bind-address=0.0.0.0".into(),
                None => "--bind-address=127.0.0.1".into(),
            },
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={}", self.secure_port),
            format!("--cert-dir={}", p("certs")),
            format!("--tls-cert-file={}", p("server.crt")),
            format!("--tls-private-key-file={}", p("server.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--token-auth-file={}", p("tokens.csv")),
            "--authorization-mode=RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", p("sa.key")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ];
        std::fs::write(
            d.join("audit-policy.yaml"),
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n",
        )?;
        args.extend([
            format!("--audit-policy-file={}", p("audit-policy.yaml")),
            format!("--audit-log-path={}", p("audit.log")),
            "--audit-log-format=json".into(),
            "--audit-log-mode=blocking".into(),
        ]);
        args.extend(self.opts.extra_apiserver_args.iter().cloned());
        self.apiserver = Some(self.spawn("kube-apiserver", &args)?);
        let client = self.client_raw().await?;
        self.wait("kube-apiserver", Duration::from_secs(90), move |_| {
            let client = client.clone();
            async move {
                let req = http::Request::get("/readyz").body(Vec::new());
                match req {
                    Ok(r) => client.request_text(r).await.is_ok_and(|t| t.trim() == "ok"),
                    Err(_) => false,
                }
            }
        })
        .await
    }

    /// Starts kube-controller-manager (garbage collector, namespace, service-account token),
    /// e.g. after installing CRDs so that its first discovery sees them.
    pub fn start_controller_manager(&mut self) -> Result<(), HarnessError> {
        let d = self.dir().to_path_buf();
        let p = |f: &str| d.join(f).display().to_string();
        let args: Vec<String> = vec![
            format!("--kubeconfig={}", self.kubeconfig.display()),
            "--controllers=garbagecollector,namespace,serviceaccount-token".into(),
            format!("--service-account-private-key-file={}", p("sa.key")),
            format!("--root-ca-file={}", p("ca.crt")),
            "--leader-elect=false".into(),
            "--secure-port=0".into(),
            "--use-service-account-credentials=false".into(),
            "--concurrent-gc-syncs=5".into(),
            "--v=1".into(),
        ];
        self.controller_manager = Some(self.spawn("kube-controller-manager", &args)?);
        Ok(())
    }

    async fn wait<F, Fut>(
        &mut self,
        component: &'static str,
        limit: Duration,
        ready: F,
    ) -> Result<(), HarnessError>
    where
        F: Fn(()) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let start = Instant::now();
        loop {
            let child = match component {
                "etcd" => self.etcd.as_mut(),
                _ => self.apiserver.as_mut(),
            };
            if let Some(status) = child.and_then(|c| c.try_wait().ok().flatten()) {
                return Err(
                    self.server_error(component, format!("exited during start-up ({status})"))
                );
            }
            if ready(()).await {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(self.server_error(
                    component,
                    format!("was not ready after {}s", limit.as_secs()),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn server_error(&self, component: &'static str, problem: String) -> HarnessError {
        let log = self.log(component);
        HarnessError::Server {
            component,
            problem,
            tail: tail(&log, 25),
            log,
        }
    }

    async fn client_raw(&self) -> Result<kube::Client, HarnessError> {
        let kc = Kubeconfig::read_from(&self.kubeconfig)
            .map_err(|e| HarnessError::Kube(e.to_string()))?;
        let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| HarnessError::Kube(e.to_string()))?;
        kube::Client::try_from(config).map_err(|e| HarnessError::Kube(e.to_string()))
    }

    /// An admin client.
    pub async fn client(&self) -> kube::Client {
        self.client_raw()
            .await
            .unwrap_or_else(|e| panic!("client for {}: {e}", self.url))
    }

    /// PIDs of the running processes (etcd, apiserver, controller-manager, CAPI managers).
    pub fn pids(&self) -> Vec<u32> {
        [&self.etcd, &self.apiserver, &self.controller_manager]
            .into_iter()
            .flatten()
            .map(Child::id)
            .chain(self.managers.iter().map(|m| m.child.id()))
            .collect()
    }

    /// Kills kube-apiserver (the data in etcd stays); [`Self::start_apiserver`] brings it back.
    pub fn kill_apiserver(&mut self) {
        stop(&mut self.apiserver);
    }

    /// Stops the Cluster API managers (they stay installed; their webhooks then fail).
    pub fn stop_capi_managers(&mut self) {
        for mut m in self.managers.drain(..) {
            let _ = m.child.kill();
            let _ = m.child.wait();
        }
    }

    /// Stops everything: the CAPI managers, controller-manager, apiserver, then etcd.
    pub fn stop(&mut self) {
        self.stop_capi_managers();
        stop(&mut self.controller_manager);
        stop(&mut self.apiserver);
        stop(&mut self.etcd);
    }
}

fn stop(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.stop();
        if let Some(d) = self.dir.take() {
            let _ = d.close();
        }
    }
}

/// A kubeconfig with token auth for `url`.
pub fn kubeconfig_yaml(url: &str, ca_pem: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\nusers:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: admin\ncurrent-context: test\n"
    )
}

/// Starts a cluster, or reports the missing assets: under `CI=true` that panics (a test
/// failure naming the script); otherwise it prints a skip notice and returns `None`.
pub async fn start_or_skip(opts: Options) -> Option<TestCluster> {
    match TestCluster::start_with(opts).await {
        Ok(c) => Some(c),
        Err(HarnessError::MissingAsset(p)) => {
            crate::missing(&format!("{}", p.display()), &format!("run {ASSETS_SCRIPT}"));
            None
        }
        Err(e) => panic!("cannot start a test cluster: {e}"),
    }
}
