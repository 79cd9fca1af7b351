//! The summary `up` prints: where everything is and how to trust the CA.

use crate::plan::Plan;
use crate::status::Status;

pub fn text(status: &Status, plan: &Plan) -> String {
    let healthy = status
        .services
        .iter()
        .filter(|s| s.health == crate::engine::Health::Healthy)
        .count();
    let mut out = format!(
        "\nInsightSerenity {} is up ({} runtime): {healthy} healthy of {} instances\n",
        plan.deployment,
        status.runtime,
        status.services.len()
    );
    let line = |k: &str, v: &str| format!("  {k:<12} {v}\n");
    if let Some(https) = status.endpoints.get("https") {
        out.push_str(&line("edge https", https));
    }
    if let Some(http) = status.endpoints.get("http") {
        out.push_str(&line("edge http", http));
    }
    out.push_str(&line(
        "VIP",
        &format!(
            "{} (held by {})",
            status.vip.address,
            status.vip.holder.as_deref().unwrap_or("nobody yet")
        ),
    ));
    for (name, url) in &plan.endpoints.gateway_admin {
        out.push_str(&line(name, &format!("{url}/-/ha")));
    }
    match status.endpoints.get("prometheus") {
        Some(p) => out.push_str(&line("prometheus", p)),
        None => out.push_str(&line("prometheus", "unavailable")),
    }
    match status.endpoints.get("grafana") {
        Some(g) => out.push_str(&line("grafana", g)),
        None => out.push_str(&line("grafana", "unavailable")),
    }
    if let Some(db) = status.endpoints.get("postgres") {
        out.push_str(&line(
            "postgres",
            &format!("{db} (password: secrets.json `database` in the state dir)"),
        ));
    }
    out.push_str(&line("CA", &status.ca));
    out.push_str(&format!(
        "\n  every /api/v1 call needs a token: devctl token --role admin|operator|support|viewer, or --client NAME\n  curl --cacert {} -H \"Authorization: Bearer $(devctl token --role viewer)\" {}/api/v1/admin/stats\n  trust the CA system-wide: devctl certs --trust\n",
        status.ca,
        status
            .endpoints
            .get("https")
            .map(String::as_str)
            .unwrap_or("https://127.0.0.1:8443")
    ));
    out
}
