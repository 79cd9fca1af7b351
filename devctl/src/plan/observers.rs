//! Prometheus (scrapes every gateway and backend over mTLS, file_sd targets, the rules) and
//! Grafana (provisioned datasource and dashboards, anonymous viewers).

use super::assets;
use super::{join, leaf, leaf_sans, Builder, FileSource, Kind, Part, PlannedFile};

pub(crate) fn build(b: &Builder<'_>) -> Part {
    let mut part = prometheus(b);
    part.instances.push(grafana(b));
    part.instances.extend(alertmanager(b));
    part
}

/// Alertmanager: routing with grouping, an instance that is down inhibits its own error and
/// latency alerts, every notification to the topology's webhook when it names one.
fn alertmanager(b: &Builder<'_>) -> Option<super::Instance> {
    let am = b.t.alertmanager.as_ref()?;
    let address = b.net.addr(am.address);
    let dir = b.config_dir("alertmanager", "/etc/alertmanager");
    let mut i = b.instance(Kind::Alertmanager, "alertmanager", "alertmanager", address);
    i.port = am.port;
    i.image = am.image.clone();
    i.binary = "alertmanager".into();
    i.args = vec![
        format!("--config.file={}", join(&dir, "alertmanager.yml")),
        format!(
            "--storage.path={}",
            b.data_dir("alertmanager", "/alertmanager")
        ),
        format!("--web.listen-address={}:{}", b.listen_ip(address), am.port),
        // One instance: no gossip with peers.
        "--cluster.listen-address=".into(),
    ];
    i.config_dir = dir;
    i.files = vec![PlannedFile::fixed(
        "alertmanager.yml",
        FileSource::Text(alertmanager_yml(am.webhook.as_deref())),
    )];
    i.publish = b.publish(b.t.publish_address(), am.publish_port, am.port);
    Some(i)
}

/// Alertmanager's configuration.
pub fn alertmanager_yml(webhook: Option<&str>) -> String {
    use crate::yaml::Yaml;
    let mut receiver = Yaml::map().with("name", "default");
    if let Some(url) = webhook {
        receiver.insert(
            "webhook_configs",
            Yaml::Seq(vec![Yaml::map()
                .with("url", url)
                .with("send_resolved", true)]),
        );
    }
    let latency_and_errors =
        "BackendHighP99|BackendHigh5xxRatio|GatewayHighP99|GatewayHigh5xxRatio";
    Yaml::map()
        .with(
            "route",
            Yaml::map()
                .with("receiver", "default")
                .with("group_by", Yaml::strs(["alertname", "role"]))
                .with("group_wait", "10s")
                .with("group_interval", "1m")
                .with("repeat_interval", "4h"),
        )
        .with("receivers", Yaml::Seq(vec![receiver]))
        .with(
            "inhibit_rules",
            Yaml::Seq(vec![
                // An instance that is down explains its own errors and latency.
                Yaml::map()
                    .with(
                        "source_matchers",
                        Yaml::strs(["alertname=\"InstanceDown\""]),
                    )
                    .with(
                        "target_matchers",
                        Yaml::strs([format!("alertname=~\"{latency_and_errors}\"")]),
                    )
                    .with("equal", Yaml::strs(["instance"])),
                // No VIP holder explains every gateway-side symptom.
                Yaml::map()
                    .with("source_matchers", Yaml::strs(["alertname=\"NoVipHolder\""]))
                    .with(
                        "target_matchers",
                        Yaml::strs(["alertname=~\"Gateway.*|InstanceDown\"", "role=\"gateway\""]),
                    ),
            ]),
        )
        .render()
}

fn prometheus(b: &Builder<'_>) -> Part {
    let prom = &b.t.prometheus;
    let address = b.net.addr(prom.address);
    let dir = b.config_dir("prometheus", "/etc/prometheus");
    let mut files = vec![
        PlannedFile::fixed(
            "prometheus.yml",
            FileSource::Text(assets::PROMETHEUS_YML.into()),
        ),
        PlannedFile::fixed("tls/ca.crt", FileSource::CaCert),
        PlannedFile::fixed("tls/client.crt", FileSource::Cert("prometheus".into())),
        PlannedFile::fixed("tls/client.key", FileSource::Key("prometheus".into())),
    ];
    for (rule_file, text) in assets::PROMETHEUS_RULES {
        files.push(PlannedFile::fixed(
            &format!("rules/{rule_file}"),
            FileSource::Text((*text).into()),
        ));
    }
    let mut i = b.instance(Kind::Prometheus, "prometheus", "prometheus", address);
    i.port = prom.port;
    i.image = prom.image.clone();
    i.binary = "prometheus".into();
    i.args = vec![
        format!("--config.file={}", join(&dir, "prometheus.yml")),
        format!(
            "--storage.tsdb.path={}",
            b.data_dir("prometheus", "/prometheus")
        ),
        format!(
            "--web.listen-address={}:{}",
            b.listen_ip(address),
            prom.port
        ),
        "--web.enable-lifecycle".into(),
        "--storage.tsdb.retention.time=2d".into(),
    ];
    i.config_dir = dir;
    i.files = files;
    i.publish = b.publish(b.t.publish_address(), prom.publish_port, prom.port);
    Part {
        instances: vec![i],
        certificates: vec![leaf(
            "prometheus",
            leaf_sans(
                &["prometheus", &b.container("prometheus")],
                address,
                &[],
                None,
            ),
        )],
    }
}

fn grafana(b: &Builder<'_>) -> super::Instance {
    let graf = &b.t.grafana;
    let prom = &b.t.prometheus;
    let address = b.net.addr(graf.address);
    let dir = b.config_dir("grafana", "/etc/grafana");
    let mut files = vec![
        PlannedFile::fixed(
            "provisioning/datasources/prometheus.yml",
            FileSource::Text(assets::GRAFANA_DATASOURCE.replace(
                "http://prometheus:9090",
                &format!("http://{}:{}", b.net.addr(prom.address), prom.port),
            )),
        ),
        PlannedFile::fixed(
            "provisioning/dashboards/provider.yml",
            FileSource::Text(
                assets::GRAFANA_PROVIDER
                    .replace("/etc/grafana/dashboards", &join(&dir, "dashboards")),
            ),
        ),
    ];
    for (name, text) in assets::GRAFANA_DASHBOARDS {
        files.push(PlannedFile::fixed(
            &format!("dashboards/{name}"),
            FileSource::Text((*text).into()),
        ));
    }
    let mut i = b.instance(Kind::Grafana, "grafana", "grafana", address);
    i.port = graf.port;
    i.image = graf.image.clone();
    i.binary = "grafana".into();
    i.env = vec![
        (
            "GF_SERVER_HTTP_ADDR".into(),
            b.listen_ip(address).to_string(),
        ),
        ("GF_SERVER_HTTP_PORT".into(), graf.port.to_string()),
        ("GF_PATHS_PROVISIONING".into(), join(&dir, "provisioning")),
        ("GF_AUTH_ANONYMOUS_ENABLED".into(), "true".into()),
        ("GF_AUTH_ANONYMOUS_ORG_ROLE".into(), "Viewer".into()),
        ("GF_ANALYTICS_REPORTING_ENABLED".into(), "false".into()),
        ("GF_ANALYTICS_CHECK_FOR_UPDATES".into(), "false".into()),
    ];
    i.config_dir = dir;
    i.files = files;
    i.publish = b.publish(b.t.publish_address(), graf.publish_port, graf.port);
    i
}
