//! `devctl alerts`: what Alertmanager has firing now, and since when (its v2 API).

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum AlertsError {
    #[error("the topology has no [alertmanager]")]
    NoAlertmanager,
    #[error("cannot reach Alertmanager at {url}: {reason} (is the stack up? `devctl status`)")]
    Unreachable { url: String, reason: String },
    #[error("Alertmanager at {url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("Alertmanager's answer is not a list of alerts: {0}")]
    Parse(String),
}

/// One alert as Alertmanager reports it (the fields we show).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
    pub starts_at: String,
    pub status: AlertStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertStatus {
    /// `active`, `suppressed` (silenced or inhibited) or `unprocessed`.
    pub state: String,
}

impl Alert {
    pub fn name(&self) -> &str {
        self.labels.get("alertname").map_or("?", String::as_str)
    }
}

/// Alerts Alertmanager holds now (active and suppressed), oldest first.
pub async fn firing(base: &str) -> Result<Vec<Alert>, AlertsError> {
    let url = format!("{base}/api/v2/alerts");
    let response = service_kit::client::get(&url, None, Duration::from_secs(5))
        .await
        .map_err(|e| AlertsError::Unreachable {
            url: base.to_string(),
            reason: e.to_string(),
        })?;
    if !response.status.is_success() {
        return Err(AlertsError::Status {
            url: base.to_string(),
            status: response.status.as_u16(),
        });
    }
    let mut alerts: Vec<Alert> =
        serde_json::from_slice(&response.body).map_err(|e| AlertsError::Parse(e.to_string()))?;
    alerts.sort_by(|a, b| a.starts_at.cmp(&b.starts_at));
    Ok(alerts)
}

/// The human table: alert, severity, what it is about, state, since when, summary.
pub fn table(alerts: &[Alert]) -> String {
    if alerts.is_empty() {
        return "no alerts firing\n".into();
    }
    let mut out = format!(
        "{:<22} {:<9} {:<14} {:<11} {:<20} SUMMARY\n",
        "ALERT", "SEVERITY", "ABOUT", "STATE", "SINCE"
    );
    for a in alerts {
        let label = |k: &str| a.labels.get(k).map_or("-", String::as_str);
        let about = match (a.labels.get("instance"), a.labels.get("role")) {
            (Some(i), _) => i.as_str(),
            (None, Some(r)) => r.as_str(),
            (None, None) => label("upstream"),
        };
        let since: String = a.starts_at.chars().take(19).collect();
        out.push_str(&format!(
            "{:<22} {:<9} {:<14} {:<11} {:<20} {}\n",
            a.name(),
            label("severity"),
            about,
            a.status.state,
            since.replace('T', " "),
            a.annotations.get("summary").map_or("", String::as_str),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alertmanager_v2_alerts_read_and_print() {
        let body = r#"[{"annotations":{"summary":"admin-3 (admin) is not answering scrapes"},
            "endsAt":"2026-12-02T07:10:00Z","fingerprint":"ab","receivers":[{"name":"default"}],
            "startsAt":"2026-12-02T07:00:05.123Z","status":{"inhibitedBy":[],"silencedBy":[],"state":"active"},
            "updatedAt":"2026-12-02T07:01:00Z","generatorURL":"http://x",
            "labels":{"alertname":"InstanceDown","instance":"admin-3","role":"admin","severity":"critical"}}]"#;
        let alerts: Vec<Alert> = serde_json::from_str(body).unwrap();
        assert_eq!(alerts[0].name(), "InstanceDown");
        let t = table(&alerts);
        assert!(
            t.contains("InstanceDown")
                && t.contains("admin-3")
                && t.contains("2026-12-02 07:00:05")
        );
        assert_eq!(table(&[]), "no alerts firing\n");
    }
}
