use super::*;
use crate::plan::RuntimeKind;
use crate::state::Leaf;

const PRODUCTION: &str = include_str!("../../../topology/production.toml");

fn fixture(pins: Pins) -> (Topology, Plan, Certs, Pins) {
    let topology = Topology::parse(PRODUCTION).unwrap();
    let options = crate::plan::test_options(RuntimeKind::Docker);
    let plan = Plan::build(&topology, &options).unwrap();
    let mut leaves = BTreeMap::new();
    for spec in plan
        .certificates
        .iter()
        .chain(certificates(&topology).iter())
    {
        leaves.insert(
            spec.name.clone(),
            Leaf {
                cert: format!("CERT {}", spec.name),
                key: format!("KEY {}", spec.name),
            },
        );
    }
    let certs = Certs {
        ca: "CA".into(),
        leaves,
    };
    (topology, plan, certs, pins)
}

fn objects_of(pins: Pins) -> Vec<serde_json::Value> {
    let (topology, plan, certs, pins) = fixture(pins);
    let input = Input {
        topology: &topology,
        plan: &plan,
        certs: &certs,
        pins: &pins,
    };
    objects::build(&input)
        .unwrap()
        .iter()
        .map(|o| o.to_json().unwrap())
        .collect()
}

fn find<'a>(objects: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn backends_are_statefulsets_with_probes_limits_and_a_locked_down_context() {
    let objects = objects_of(Pins::default());
    for (pool, port, replicas) in [("admin", 3002, 5), ("customer", 3001, 5)] {
        let sts = find(&objects, "StatefulSet", pool);
        assert_eq!(sts["spec"]["replicas"], replicas);
        assert_eq!(sts["spec"]["serviceName"], pool);
        let c = &sts["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/health");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/ready");
        assert_eq!(c["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
        assert_eq!(c["readinessProbe"]["httpGet"]["port"], port);
        assert!(c["resources"]["requests"]["cpu"].is_string());
        assert!(c["resources"]["limits"]["memory"].is_string());
        let sc = &c["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["capabilities"]["drop"][0], "ALL");
        let env = c["env"].as_array().unwrap();
        let url = env.iter().find(|e| e["name"] == "DATABASE_URL").unwrap();
        assert_eq!(url["valueFrom"]["secretKeyRef"]["name"], "database-url");
        assert_eq!(url["valueFrom"]["secretKeyRef"]["key"], pool);
        assert_eq!(
            find(&objects, "Secret", "database-url")["stringData"][pool],
            format!("postgres://insightserenity@db.internal.insightserenity.com:5432/{pool}")
        );
        assert!(env.iter().any(|e| e["name"] == "DATABASE_PASSWORD_FILE"));
        let svc = find(&objects, "Service", pool);
        assert_eq!(svc["spec"]["clusterIP"], "None");
        assert_eq!(
            find(&objects, "PodDisruptionBudget", pool)["spec"]["maxUnavailable"],
            1
        );
    }
}

#[test]
fn gateways_run_on_their_edge_nodes_with_only_the_capabilities_the_vip_needs() {
    let objects = objects_of(Pins::default());
    for name in ["gateway-1", "gateway-2"] {
        let d = find(&objects, "Deployment", name);
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["hostNetwork"], true);
        assert_eq!(pod["nodeSelector"]["insightserenity.com/gateway"], name);
        assert!(pod["affinity"]["podAntiAffinity"].is_object());
        let caps = &pod["containers"][0]["securityContext"]["capabilities"];
        assert_eq!(caps["add"], serde_json::json!(["NET_ADMIN", "NET_RAW"]));
        assert_eq!(caps["drop"], serde_json::json!(["ALL"]));
        let config = find(&objects, "ConfigMap", &format!("{name}-config"))["data"]["gateway.toml"]
            .as_str()
            .unwrap()
            .to_string();
        let parsed = ::gateway::config::parse(&config).unwrap();
        let admin = &parsed.upstreams["admin"];
        assert!(admin.servers.is_empty());
        let discover = admin.discover.as_ref().unwrap();
        assert_eq!(discover.name, "admin.insightserenity.svc.cluster.local");
        assert_eq!(discover.port, 3002);
        assert_eq!(
            admin.server_name.as_deref(),
            Some("admin.insightserenity.svc.cluster.local")
        );
        assert!(parsed.ha.is_some(), "the same [ha] as on VMs");
        // The public certificate from Let's Encrypt, ordered into the pair's shared claim.
        let acme = parsed.https.as_ref().unwrap().acme.as_ref().unwrap();
        assert_eq!(acme.directory, gateway_config::LETS_ENCRYPT);
        assert_eq!(acme.domains, ["api.insightserenity.com"]);
        assert_eq!(acme.storage, std::path::Path::new("/data/acme"));
        let mounts = &pod["containers"][0]["volumeMounts"];
        assert!(mounts
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["mountPath"] == "/data/acme"));
        assert!(pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["persistentVolumeClaim"]["claimName"] == "gateway-acme"));
    }
    let claim = find(&objects, "PersistentVolumeClaim", "gateway-acme");
    assert_eq!(
        claim["spec"]["accessModes"],
        serde_json::json!(["ReadWriteMany"])
    );
}

#[test]
fn network_policies_let_only_the_gateways_and_prometheus_reach_backends() {
    let objects = objects_of(Pins::default());
    let deny = find(&objects, "NetworkPolicy", "default-deny-ingress");
    assert_eq!(deny["spec"]["podSelector"], serde_json::json!({}));
    let admin = find(&objects, "NetworkPolicy", "admin-ingress");
    let from = admin["spec"]["ingress"][0]["from"].as_array().unwrap();
    let cidrs: Vec<&str> = from
        .iter()
        .filter_map(|p| p["ipBlock"]["cidr"].as_str())
        .collect();
    assert_eq!(cidrs, ["10.0.1.10/32", "10.0.1.11/32"]);
    assert!(from
        .iter()
        .any(|p| p["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "prometheus"));
    // Prometheus may still send alerts.
    let am = find(&objects, "NetworkPolicy", "alertmanager-ingress");
    assert_eq!(
        am["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "prometheus"
    );
    assert_eq!(am["spec"]["ingress"][0]["ports"][0]["port"], 9093);
}

#[test]
fn images_are_pinned_by_digest_when_pushed() {
    let pinned = "registry.example.com/is/admin-server@sha256:abc";
    let pins = Pins {
        images: BTreeMap::from([("insightserenity/admin-server:0.1.0".into(), pinned.into())]),
    };
    let objects = objects_of(pins.clone());
    let sts = find(&objects, "StatefulSet", "admin");
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["image"],
        pinned
    );
    let (topology, plan, certs, pins) = fixture(pins);
    let files = render(&Input {
        topology: &topology,
        plan: &plan,
        certs: &certs,
        pins: &pins,
    })
    .unwrap();
    let production = &files
        .iter()
        .find(|(p, _)| p == "overlays/production/kustomization.yaml")
        .unwrap()
        .1;
    assert!(
        production.contains("digest: \"sha256:abc\""),
        "{production}"
    );
    assert!(files.iter().any(|(p, _)| p == "base/kustomization.yaml"));
}

#[test]
fn alertmanager_and_grafana_run_beside_prometheus_and_find_it_by_service() {
    let objects = objects_of(Pins::default());
    for (name, uid) in [("alertmanager", 65534), ("grafana", 472)] {
        let d = find(&objects, "Deployment", name);
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsUser"], uid, "{name}");
        let c = &pod["containers"][0];
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert!(c["readinessProbe"]["httpGet"]["path"].is_string());
        find(&objects, "Service", name);
    }
    let datasource = find(&objects, "ConfigMap", "grafana-config")["data"]
        ["provisioning_datasources_prometheus.yml"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        datasource.contains("http://prometheus.insightserenity.svc.cluster.local:9090"),
        "{datasource}"
    );
    let prometheus = find(&objects, "ConfigMap", "prometheus-config")["data"]["prometheus.yml"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        prometheus.contains("alertmanager.insightserenity.svc.cluster.local:9093"),
        "{prometheus}"
    );
    assert!(prometheus.contains("kubernetes_sd_configs"));
}
