//! Only CP-A runs the agent. The KubeadmControlPlane that fledge renders gives CP-A the agent's
//! files (its config, and the management token and CA from the agent's service-account token
//! Secret) and a `postKubeadmCommands` entry that installs it. In the workload cluster those
//! would make every machine CAPI adds try to bootstrap from a Secret the pivot never moves
//! (the token stays with the management plane that issued it), so scale-out could not work.
//! The pivot therefore removes them from the copies: from the KubeadmControlPlane's
//! `kubeadmConfigSpec` and, identically, from the control-plane machines' KubeadmConfigs, so that
//! KCP still finds its machines up to date (no rollout of CP-A) while new machines join
//! without the agent.

use fledge_generator::management::paths;
use serde_json::Value;

/// Files only CP-A's agent needs.
pub const AGENT_FILES: [&str; 3] = [
    paths::AGENT_CONFIG,
    paths::MANAGEMENT_TOKEN,
    paths::MANAGEMENT_CA,
];

/// Whether a bootstrap command installs the agent (`<agent> install --config <config>`).
fn installs_agent(cmd: &Value) -> bool {
    cmd.as_str()
        .is_some_and(|c| c.ends_with(&format!(" install --config {}", paths::AGENT_CONFIG)))
}

/// Removes the agent's files and its install command from a KubeadmControlPlane
/// (`spec.kubeadmConfigSpec`) or a KubeadmConfig (`spec`) body; other kinds are left alone.
/// Returns how many entries were removed.
pub fn strip(kind: &str, body: &mut Value) -> usize {
    let spec = match kind {
        "KubeadmControlPlane" => &mut body["spec"]["kubeadmConfigSpec"],
        "KubeadmConfig" => &mut body["spec"],
        _ => return 0,
    };
    let mut removed = 0;
    if let Some(files) = spec.get_mut("files").and_then(Value::as_array_mut) {
        let before = files.len();
        files.retain(|f| !AGENT_FILES.contains(&f["path"].as_str().unwrap_or_default()));
        removed += before - files.len();
    }
    if let Some(cmds) = spec
        .get_mut("postKubeadmCommands")
        .and_then(Value::as_array_mut)
    {
        let before = cmds.len();
        cmds.retain(|c| !installs_agent(c));
        removed += before - cmds.len();
    }
    for key in ["files", "postKubeadmCommands"] {
        if spec
            .get(key)
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
            && let Some(m) = spec.as_object_mut()
        {
            m.remove(key);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> Value {
        json!({
            "files": [
                {"path": "/etc/fledge/agent.yaml", "content": "x"},
                {"path": "/etc/fledge/management/token", "contentFrom": {"secret": {"name": "c-fledge-agent-token", "key": "token"}}},
                {"path": "/etc/fledge/management/ca.crt", "contentFrom": {"secret": {"name": "c-fledge-agent-token", "key": "ca.crt"}}},
                {"path": "/etc/motd", "content": "hi"}
            ],
            "postKubeadmCommands": ["/usr/local/bin/fledge-agent install --config /etc/fledge/agent.yaml", "echo done"],
            "users": [{"name": "capi"}]
        })
    }

    #[test]
    fn the_agents_files_and_install_leave_kcp_and_kubeadm_configs_alike() {
        let mut kcp = json!({"spec": {"replicas": 1, "kubeadmConfigSpec": spec()}});
        let mut config = json!({"spec": spec()});
        assert_eq!(strip("KubeadmControlPlane", &mut kcp), 4);
        assert_eq!(strip("KubeadmConfig", &mut config), 4);
        assert_eq!(kcp["spec"]["kubeadmConfigSpec"], config["spec"]);
        assert_eq!(
            config["spec"],
            json!({"files": [{"path": "/etc/motd", "content": "hi"}],
                   "postKubeadmCommands": ["echo done"], "users": [{"name": "capi"}]})
        );
        // Idempotent, and other kinds untouched.
        assert_eq!(strip("KubeadmConfig", &mut config), 0);
        let mut other = json!({"spec": spec()});
        assert_eq!(strip("Machine", &mut other), 0);
        assert_eq!(other["spec"], spec());
    }

    #[test]
    fn emptied_lists_are_removed() {
        let mut config = json!({"spec": {"files": [{"path": "/etc/fledge/agent.yaml"}],
            "postKubeadmCommands": ["/opt/fledge/bin/fledge-agent install --config /etc/fledge/agent.yaml"]}});
        strip("KubeadmConfig", &mut config);
        assert_eq!(config, json!({"spec": {}}));
    }
}
