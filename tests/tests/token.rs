//! Issue 28: the agent's management credential is a bound, expiring token. `fledge apply`
//! mints it (TokenRequest) into an Opaque Secret and keeps it while it is not due; a legacy
//! token Secret is replaced; the leader renews the token for its own ServiceAccount before it
//! expires, and a follower takes a newer token from the cluster's copy but never an older one.
//! Against a real API server; the rendered Role is what the token may do.

use std::path::Path;

use fledge_agent::clients::token::{renew_if_due, take_from_cluster};
use fledge_generator::management;
use fledge_generator::spec::{self, CapiVersion, CheckedCluster, ProviderKind};
use fledge_generator::token;
use fledge_tests::cluster::{Options, kubeconfig_yaml, start_or_skip};
use fledge_tests::crds::core_dir;
use fledge_tests::install::install_crds;
use fledge_tests::workspace_root;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::Api;
use kube::api::{DeleteParams, PostParams};

fn request() -> std::path::PathBuf {
    workspace_root().join("tests/cases/docker-v1beta2/input.yaml")
}

fn fledge_apply(kubeconfig: &Path, extra: &[&str]) -> String {
    let out = std::process::Command::new(fledge_tests::binary("fledge"))
        .arg("apply")
        .arg(request())
        .args(["--install-crds", "--kubeconfig"])
        .arg(kubeconfig)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn token_of(s: &Secret) -> String {
    String::from_utf8(s.data.as_ref().unwrap()["token"].0.clone()).unwrap()
}

async fn client_with(url: &str, ca: &str, token: &str) -> kube::Client {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, kubeconfig_yaml(url, ca, token)).unwrap();
    fledge_generator::target::client_from_kubeconfig(Some(&path))
        .await
        .unwrap()
        .client
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agents_token_is_bound_and_expiring_renewed_before_it_expires_and_never_taken_older() {
    let Some(c) = start_or_skip(Options::default()).await else {
        return;
    };
    let admin = c.client().await;
    let docker = fledge_generator::providers::get(ProviderKind::Docker)
        .api(CapiVersion::V1beta2)
        .crd_dir;
    install_crds(&admin, &[core_dir(CapiVersion::V1beta2), docker])
        .await
        .unwrap();
    let checked: CheckedCluster = spec::load_request(&request()).unwrap();
    let ns = checked.namespace.as_str();
    let names = management::Names::new(checked.name.as_str());
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), ns);

    // `fledge apply` mints a bound token for the agent's ServiceAccount, valid for the
    // requested time, with the CA the agent trusts the API server by (this server runs no
    // kube-controller-manager, so no kube-root-ca.crt: the kubeconfig's CA).
    let out = fledge_apply(&c.kubeconfig, &["--token-duration", "2h"]);
    assert!(
        out.contains(&format!("secret/{} created", names.agent_token)),
        "{out}"
    );
    let minted = secrets.get(&names.agent_token).await.unwrap();
    assert_eq!(minted.type_.as_deref(), Some("Opaque"));
    let first = token_of(&minted);
    let claims = token::claims(&first).expect("a bound token has iat and exp");
    assert_eq!(claims.lifetime().as_secs(), 7200);
    let ca = String::from_utf8(minted.data.as_ref().unwrap()["ca.crt"].0.clone()).unwrap();
    assert_eq!(ca.trim(), c.ca_pem.trim());
    let owner = &minted.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("FledgeCluster", checked.name.as_str())
    );

    // Applying again keeps a token that is not due: nothing changes.
    let out = fledge_apply(&c.kubeconfig, &["--token-duration", "2h"]);
    assert!(
        out.contains(&format!("secret/{} unchanged", names.agent_token)),
        "{out}"
    );
    assert_eq!(
        token_of(&secrets.get(&names.agent_token).await.unwrap()),
        first
    );

    // A legacy token Secret (never expires) left by an older fledge is replaced.
    secrets
        .delete(&names.agent_token, &DeleteParams::default())
        .await
        .unwrap();
    let mut legacy = Secret::default();
    legacy.metadata.name = Some(names.agent_token.clone());
    legacy.metadata.annotations = Some(
        [(
            "kubernetes.io/service-account.name".to_string(),
            names.agent.clone(),
        )]
        .into(),
    );
    legacy.type_ = Some("kubernetes.io/service-account-token".into());
    secrets
        .create(&PostParams::default(), &legacy)
        .await
        .unwrap();
    fledge_apply(&c.kubeconfig, &["--token-duration", "2h"]);
    let replaced = secrets.get(&names.agent_token).await.unwrap();
    assert_eq!(replaced.type_.as_deref(), Some("Opaque"));
    let token_a = token_of(&replaced);
    assert!(token::claims(&token_a).is_some());

    // What the token may do: renew itself, by name, and mint a token for no other account.
    let agent = client_with(&c.url, &c.ca_pem, &token_a).await;
    token::request(&agent, ns, &names.agent, token::MIN_DURATION)
        .await
        .expect("the agent renews its own token");
    let mut other = ServiceAccount::default();
    other.metadata.name = Some("someone-else".into());
    Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &other)
        .await
        .unwrap();
    match token::request(&agent, ns, "someone-else", token::MIN_DURATION).await {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("the agent's token minted a token for another account: {other:?}"),
    }

    // The leader renews: not before it is due, and once due a new token for the same
    // lifetime replaces the file's, 0600, and works.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{token_a}\n")).unwrap();
    let a = token::claims(&token_a).unwrap();
    let not_due = renew_if_due(&agent, ns, &names.agent, &file, a.issued_at + 60)
        .await
        .unwrap();
    assert_eq!(not_due, None);
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), token_a);
    // Past 80% of its lifetime (the claims' clock; a later issued-at makes the new one expire
    // later).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let renewed = renew_if_due(
        &agent,
        ns,
        &names.agent,
        &file,
        a.issued_at + a.lifetime().as_secs() as i64 * 9 / 10,
    )
    .await
    .unwrap()
    .expect("renewed once due");
    assert_eq!(renewed.lifetime(), a.lifetime());
    let token_b = std::fs::read_to_string(&file).unwrap();
    assert_ne!(token_b, token_a);
    assert!(renewed.expires > a.expires, "{renewed:?} {a:?}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let b_client = client_with(&c.url, &c.ca_pem, &token_b).await;
    Api::<Secret>::namespaced(b_client, ns)
        .get_opt("no-such-secret")
        .await
        .expect("the renewed token authenticates");

    // A follower takes the newer token from the cluster's copy, and never an older one.
    let copy = "copy-of-the-agents-token";
    let put = |token: String| {
        let mut s = Secret::default();
        s.metadata.name = Some(copy.into());
        s.data = Some([("token".to_string(), ByteString(token.into_bytes()))].into());
        s
    };
    secrets
        .create(&PostParams::default(), &put(token_b.clone()))
        .await
        .unwrap();
    let follower = dir.path().join("follower-token");
    std::fs::write(&follower, &token_a).unwrap();
    let took = take_from_cluster(&admin, ns, copy, &follower)
        .await
        .unwrap();
    assert_eq!(took, Some(renewed));
    assert_eq!(std::fs::read_to_string(&follower).unwrap(), token_b);
    secrets
        .delete(copy, &DeleteParams::default())
        .await
        .unwrap();
    secrets
        .create(&PostParams::default(), &put(token_a.clone()))
        .await
        .unwrap();
    let took = take_from_cluster(&admin, ns, copy, &follower)
        .await
        .unwrap();
    assert_eq!(took, None, "an older token was taken");
    assert_eq!(std::fs::read_to_string(&follower).unwrap(), token_b);
}

fn fledge(args: &[&str], kubeconfig: &Path) -> std::process::Output {
    std::process::Command::new(fledge_tests::binary("fledge"))
        .args(args)
        .arg(request())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .output()
        .unwrap()
}

/// Whether `client` may do `verb` on `resource` in `ns`, asked by doing it: a 403 is a no.
fn denied<T: std::fmt::Debug>(r: kube::Result<T>) -> bool {
    match r {
        Err(kube::Error::Api(s)) => s.code == 403,
        other => panic!("expected a 403, got {other:?}"),
    }
}

/// Issue 28: the agent's move rights exist only while it moves. `fledge apply` binds them; the
/// agent gives them up once the pivot is done (it may delete that one RoleBinding, by name);
/// from then on its token, stolen from a node, cannot create a Cluster, read or list Secrets,
/// mint a token for another account or bind itself more rights, while it still reads its
/// FledgeCluster, reports status and renews itself. `fledge delete` requests the deletion and
/// binds the rights again for the unpivot, owned by the FledgeCluster.
#[tokio::test(flavor = "multi_thread")]
async fn a_stolen_token_of_a_pivoted_cluster_cannot_create_clusters_read_secrets_or_mint_tokens() {
    use fledge_agent::phases::pivoted::{Revoked, move_rights_bound, revoke};
    use k8s_openapi::api::rbac::v1::RoleBinding;
    use kube::api::{DynamicObject, ListParams, Patch, PatchParams};
    let Some(c) = start_or_skip(Options::default()).await else {
        return;
    };
    let admin = c.client().await;
    let docker = fledge_generator::providers::get(ProviderKind::Docker)
        .api(CapiVersion::V1beta2)
        .crd_dir;
    install_crds(&admin, &[core_dir(CapiVersion::V1beta2), docker])
        .await
        .unwrap();
    let checked: CheckedCluster = spec::load_request(&request()).unwrap();
    let (ns, name) = (checked.namespace.as_str(), checked.name.as_str());
    let names = management::Names::new(name);
    fledge_apply(&c.kubeconfig, &[]);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), ns);
    let token = token_of(&secrets.get(&names.agent_token).await.unwrap());
    let agent = client_with(&c.url, &c.ca_pem, &token).await;
    let mut other_secret = Secret::default();
    other_secret.metadata.name = Some("someone-elses-credentials".into());
    secrets
        .create(&PostParams::default(), &other_secret)
        .await
        .unwrap();
    let mut other = ServiceAccount::default();
    other.metadata.name = Some("someone-else".into());
    Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &other)
        .await
        .unwrap();

    // Until the pivot is done the agent holds its move rights.
    assert!(move_rights_bound(&agent, ns).await.unwrap());
    let agent_secrets: Api<Secret> = Api::namespaced(agent.clone(), ns);
    agent_secrets
        .list(&ListParams::default())
        .await
        .expect("the move lists the namespace's Secrets");

    // The pivot is done: the agent gives them up, once.
    assert_eq!(revoke(&agent, ns, name).await.unwrap(), Revoked::Now);
    assert_eq!(revoke(&agent, ns, name).await.unwrap(), Revoked::Already);
    assert!(!move_rights_bound(&agent, ns).await.unwrap());

    // What the stolen token cannot do.
    let clusters: Api<DynamicObject> = Api::namespaced_with(
        agent.clone(),
        ns,
        &fledge_tests::capi::resource("cluster.x-k8s.io/v1beta2", "Cluster"),
    );
    let cluster: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster",
        "metadata": {"name": "launched-with-the-management-planes-identity", "namespace": ns},
        "spec": {}}))
    .unwrap();
    assert!(
        denied(clusters.create(&PostParams::default(), &cluster).await),
        "create a Cluster"
    );
    assert!(
        denied(agent_secrets.get("someone-elses-credentials").await),
        "read another Secret"
    );
    assert!(
        denied(agent_secrets.get(&names.agent_token).await),
        "read its own token Secret"
    );
    assert!(
        denied(agent_secrets.list(&ListParams::default()).await),
        "list Secrets"
    );
    assert!(
        denied(token::request(&agent, ns, "someone-else", token::MIN_DURATION).await),
        "mint a token for another account"
    );
    let bind_back: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": names.agent_move, "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": names.agent_move},
        "subjects": [{"kind": "ServiceAccount", "name": names.agent, "namespace": ns}]}))
    .unwrap();
    assert!(
        denied(
            Api::<RoleBinding>::namespaced(agent.clone(), ns)
                .create(&PostParams::default(), &bind_back)
                .await
        ),
        "bind its move rights again"
    );

    // What the agent still does: read its FledgeCluster, report status, renew itself.
    let fcs: Api<DynamicObject> = Api::namespaced_with(
        agent.clone(),
        ns,
        &fledge_tests::capi::resource("fledge.dev/v1alpha1", "FledgeCluster"),
    );
    fcs.get(name).await.expect("reads its FledgeCluster");
    fcs.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status": {"phase": "Steady"}})),
    )
    .await
    .expect("reports its status");
    token::request(&agent, ns, &names.agent, token::MIN_DURATION)
        .await
        .expect("renews its own token");

    // `fledge delete`: the deletion requested (the agent's finalizer holds the FledgeCluster),
    // then the move rights bound again, owned by the FledgeCluster.
    let admin_fcs: Api<DynamicObject> = Api::namespaced_with(
        admin.clone(),
        ns,
        &fledge_tests::capi::resource("fledge.dev/v1alpha1", "FledgeCluster"),
    );
    admin_fcs
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"metadata": {"finalizers": [fledge_agent::phases::unpivoted::FINALIZER]}}),
            ),
        )
        .await
        .unwrap();
    let uid = admin_fcs.get(name).await.unwrap().metadata.uid.unwrap();
    let out = fledge(&["delete"], &c.kubeconfig);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        format!("fledgecluster.fledge.dev/{name} deleted"),
        // The Role stayed; only its binding was given up.
        format!(
            "role.rbac.authorization.k8s.io/{} unchanged",
            names.agent_move
        ),
        format!(
            "rolebinding.rbac.authorization.k8s.io/{} created",
            names.agent_move
        ),
    ] {
        assert!(stdout.contains(&line), "{line} in:\n{stdout}");
    }
    let fc = admin_fcs.get(name).await.unwrap();
    assert!(fc.metadata.deletion_timestamp.is_some());
    assert!(move_rights_bound(&agent, ns).await.unwrap());
    let rebound = Api::<RoleBinding>::namespaced(admin.clone(), ns)
        .get(&names.agent_move)
        .await
        .unwrap();
    assert_eq!(rebound.metadata.owner_references.unwrap()[0].uid, uid);
    // Again: nothing more is deleted, the rights are as they were.
    let out = fledge(&["delete"], &c.kubeconfig);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !stdout.contains("deleted"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "rolebinding.rbac.authorization.k8s.io/{} unchanged",
            names.agent_move
        )),
        "{stdout}"
    );

    // `--wait` on a FledgeCluster the agent still holds: the agent's state, then a clear error.
    let out = fledge(&["delete", "--wait=3s"], &c.kubeconfig);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("agent phase Steady")
            && stderr.contains(&format!(
                "FledgeCluster {ns}/{name} is still there after 3s"
            )),
        "{stderr}"
    );

    // Released by the agent: gone. A third run says so, unless told to ignore it.
    admin_fcs
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    let out = fledge(&["delete"], &c.kubeconfig);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains(&format!("FledgeCluster {ns}/{name} not found"))
            && stderr.contains("--ignore-not-found"),
        "{stderr}"
    );
    let out = fledge(&["delete", "--ignore-not-found"], &c.kubeconfig);
    assert!(out.status.success());
}
