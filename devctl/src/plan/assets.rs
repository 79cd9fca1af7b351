//! The static Prometheus and Grafana files shipped in this repository (and in the binary).

pub const PROMETHEUS_YML: &str = include_str!("../../../prometheus/prometheus.yml");
pub const PROMETHEUS_RULES: &[(&str, &str)] = &[(
    "platform.yml",
    include_str!("../../../prometheus/rules/platform.yml"),
)];
pub const GRAFANA_DATASOURCE: &str =
    include_str!("../../../grafana/provisioning/datasources/prometheus.yml");
pub const GRAFANA_PROVIDER: &str =
    include_str!("../../../grafana/provisioning/dashboards/provider.yml");
pub const GRAFANA_DASHBOARDS: &[(&str, &str)] = &[
    (
        "gateway-overview.json",
        include_str!("../../../grafana/dashboards/gateway-overview.json"),
    ),
    (
        "backends.json",
        include_str!("../../../grafana/dashboards/backends.json"),
    ),
];
