//! A real management plane for benchmarks: starts a test apiserver (scripts/go-peers.sh),
//! installs fledge's CRDs, creates the FledgeCluster of `examples/vsphere.yaml` in its namespace,
//! writes `server`, `token` and `ca.crt` into the directory given as the first argument, prints
//! "ready", and runs until its standard input closes.
//!
//! `cargo run -p fledge-tests --example mgmt_server -- DIR` (used by benches/agent.sh).

use std::io::Read;

use fledge_tests::cluster::TestCluster;
use fledge_tests::install::install_fledge_crds;
use kube::Api;
use kube::api::{DynamicObject, PostParams};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let dir = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or_else(|| anyhow::anyhow!("usage: mgmt_server DIR"))?,
    );
    let c = TestCluster::start().await?;
    let client = c.client().await;
    install_fledge_crds(&client)
        .await
        .map_err(anyhow::Error::msg)?;
    let text =
        std::fs::read_to_string(fledge_tests::workspace_root().join("examples/vsphere.yaml"))?;
    let obj: serde_json::Value = serde_norway::from_str(&text)?;
    let ns = obj["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))?,
        )
        .await?;
    let ar = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("fledge.dev", "v1alpha1", "FledgeCluster"),
        "fledgeclusters",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    api.create(&PostParams::default(), &serde_json::from_value(obj)?)
        .await?;
    std::fs::write(dir.join("server"), &c.url)?;
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(dir.join("token"))?
            .write_all(c.token.as_bytes())?;
    }
    std::fs::write(dir.join("ca.crt"), &c.ca_pem)?;
    println!("ready");
    // Run until the caller closes our standard input.
    let mut sink = Vec::new();
    let _ = tokio::task::spawn_blocking(move || std::io::stdin().read_to_end(&mut sink)).await;
    drop(c);
    Ok(())
}
