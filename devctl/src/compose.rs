//! `compose/docker-compose.yml`, rendered from a Docker plan: the same images, addresses,
//! environment, health checks and configs as `devctl up`, for people who prefer Compose. The
//! configs come from `devctl render --out .devctl/render` (bind-mounted read-only; override
//! the directory with DEVCTL_RENDER).

use crate::plan::{
    Instance, Kind, Plan, LABEL_DEPLOYMENT, LABEL_INSTANCE, LABEL_MANAGED, LABEL_ROLE,
};
use crate::yaml::Yaml;

pub const NETWORK: &str = "platform";
const RENDER: &str = "${DEVCTL_RENDER:-../.devctl/render}";

/// Health probe timing shared by compose and the Docker runtime.
pub const HEALTH_INTERVAL_S: u64 = 1;
pub const HEALTH_TIMEOUT_S: u64 = 3;
pub const HEALTH_RETRIES: i64 = 3;
pub const HEALTH_START_PERIOD_S: u64 = 20;

/// Where `instance`'s rendered files are mounted: (dir under the render dir, container path).
pub fn mounts(instance: &Instance) -> Vec<(String, String)> {
    if instance.files.is_empty() {
        return Vec::new();
    }
    match instance.kind {
        // Grafana's image keeps grafana.ini in /etc/grafana: mount only our subdirectories.
        Kind::Grafana => ["provisioning", "dashboards"]
            .iter()
            .map(|d| {
                (
                    format!("{}/{d}", instance.name),
                    format!("{}/{d}", instance.config_dir),
                )
            })
            .collect(),
        // The official image creates the pools' databases from its init directory on the
        // first start (devctl itself provisions them through `exec`).
        Kind::Database => vec![
            (instance.name.clone(), instance.config_dir.clone()),
            (
                format!("{}/initdb", instance.name),
                "/docker-entrypoint-initdb.d".into(),
            ),
        ],
        _ => vec![(instance.name.clone(), instance.config_dir.clone())],
    }
}

fn image_ref(instance: &Instance) -> String {
    match instance.kind {
        Kind::Prometheus => format!("${{PROMETHEUS_IMAGE:-{}}}", instance.image),
        Kind::Grafana => format!("${{GRAFANA_IMAGE:-{}}}", instance.image),
        Kind::Alertmanager => format!("${{ALERTMANAGER_IMAGE:-{}}}", instance.image),
        _ => instance.image.clone(),
    }
}

fn labels(plan: &Plan, instance: &Instance) -> Yaml {
    Yaml::map()
        .with(LABEL_MANAGED, "true")
        .with(LABEL_DEPLOYMENT, &plan.deployment)
        .with(LABEL_ROLE, &instance.role)
        .with(LABEL_INSTANCE, &instance.name)
}

fn service(plan: &Plan, i: &Instance) -> Yaml {
    let mut s = Yaml::map().with("image", image_ref(i));
    if !i.args.is_empty() {
        s.insert("command", Yaml::strs(i.args.iter().cloned()));
    }
    if !i.env.is_empty() {
        let mut env = Yaml::map();
        for (k, v) in &i.env {
            env.insert(k, v.replace('$', "$$"));
        }
        s.insert("environment", env);
    }
    if let Some(user) = &i.user {
        s.insert("user", user);
    }
    // Backends start once the database answers.
    if let (Kind::Backend, Some(db)) = (i.kind, &plan.store.instance) {
        s.insert(
            "depends_on",
            Yaml::map().with(
                db.as_str(),
                Yaml::map().with("condition", "service_healthy"),
            ),
        );
    }
    if !i.cap_add.is_empty() {
        s.insert("cap_add", Yaml::strs(i.cap_add.iter().cloned()));
    }
    if !i.sysctls.is_empty() {
        let sysctls = i
            .sysctls
            .iter()
            .fold(Yaml::map(), |m, (k, v)| m.with(k, v.as_str()));
        s.insert("sysctls", sysctls);
    }
    let ours = matches!(i.kind, Kind::Gateway | Kind::Backend | Kind::Edge);
    s.insert(
        "restart",
        if ours { "on-failure" } else { "unless-stopped" },
    );
    s.insert("labels", labels(plan, i));
    s.insert(
        "logging",
        Yaml::map().with("driver", "json-file").with(
            "options",
            Yaml::map()
                .with("max-size", plan.logs.max_size.as_str())
                .with("max-file", plan.logs.max_file.to_string()),
        ),
    );
    if let Some(probe) = i.container_probe() {
        let mut test = vec!["CMD".to_string()];
        test.extend(probe);
        s.insert(
            "healthcheck",
            Yaml::map()
                .with("test", Yaml::strs(test))
                .with("interval", format!("{HEALTH_INTERVAL_S}s"))
                .with("timeout", format!("{HEALTH_TIMEOUT_S}s"))
                .with("retries", HEALTH_RETRIES)
                .with("start_period", format!("{HEALTH_START_PERIOD_S}s")),
        );
    }
    let mut volumes: Vec<String> = mounts(i)
        .into_iter()
        .map(|(from, to)| format!("{RENDER}/{from}:{to}:ro"))
        .collect();
    if let Some((volume, path)) = &i.volume {
        let key = volume
            .strip_prefix(&format!("{}-", plan.network.name))
            .unwrap_or(volume);
        volumes.push(format!("{key}:{path}"));
    }
    if !volumes.is_empty() {
        s.insert("volumes", Yaml::strs(volumes));
    }
    s.insert(
        "networks",
        Yaml::map().with(
            NETWORK,
            Yaml::map()
                .with("ipv4_address", i.address.to_string())
                .with("aliases", Yaml::strs(i.aliases.iter().cloned())),
        ),
    );
    if !i.publish.is_empty() {
        s.insert(
            "ports",
            Yaml::strs(
                i.publish
                    .iter()
                    .map(|p| format!("{}:{}:{}", p.host_ip, p.host_port, p.container_port)),
            ),
        );
    }
    s
}

/// The compose document for a Docker plan.
pub fn render(plan: &Plan, topology_path: &str) -> String {
    let mut services = Yaml::map();
    for i in &plan.instances {
        services.insert(&i.name, service(plan, i));
    }
    let mut net_labels = Yaml::map();
    for (k, v) in plan.labels() {
        net_labels.insert(&k, v);
    }
    let networks = Yaml::map().with(
        NETWORK,
        Yaml::map()
            .with("driver", "bridge")
            .with(
                "ipam",
                Yaml::map().with(
                    "config",
                    Yaml::Seq(vec![Yaml::map()
                        .with("subnet", &plan.network.subnet)
                        .with("ip_range", &plan.network.ip_range)
                        .with("gateway", plan.network.gateway.to_string())]),
                ),
            )
            .with("labels", net_labels.clone()),
    );
    let mut volumes = Yaml::map();
    for v in &plan.volumes {
        let key = v
            .strip_prefix(&format!("{}-", plan.network.name))
            .unwrap_or(v);
        volumes.insert(key, Yaml::map().with("labels", net_labels.clone()));
    }
    let doc = Yaml::map()
        .with("version", "2.4")
        .with("services", services)
        .with("networks", networks)
        .with("volumes", volumes);
    format!(
        "# Rendered by `devctl compose` from {topology_path}. Do not edit: a test fails when this\n\
         # file and the topology disagree. Configs and certificates come from\n\
         # `devctl render --out .devctl/render` (or set DEVCTL_RENDER); images from `devctl up`.\n\
         # Run: docker-compose -f compose/docker-compose.yml up -d\n{}",
        doc.render()
    )
}
