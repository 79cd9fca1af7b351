//! The ACME manager: one task per gateway that keeps `[https.acme]`'s certificate current.
//!
//! Every 2 s it looks at the shared storage: a certificate there that differs from the one
//! served (the peer renewed, or this node did before a restart) is installed. When the
//! served certificate is due (`renewal::due`) the node tries the storage lease; the holder
//! orders (resuming the order a dead holder left in storage), writes the result to storage
//! and installs it, while the other node waits and picks the file up on its next look. The
//! HTTP-01 key authorizations are files in the storage too, so whichever node holds the VIP
//! when the CA connects answers the challenge.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gateway_config::AcmeConfig;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeStatus, ChallengeType, Identifier,
    NewAccount, NewOrder, Order, OrderStatus, RetryPolicy,
};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

use super::renewal::{self, Backoff, Due, Served};
use super::storage::{PendingOrder, Storage, StorageError};
use super::{unix_now, CertSource, Installed, ServerCerts};

/// How long a lease lasts without renewal; the holder renews every `LEASE_TTL / 5`.
const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often storage is looked at for a peer's certificate and for due renewals.
const POLL: Duration = Duration::from_secs(2);
/// Bound on one order, from new-order to certificate download.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("ACME: {0}")]
    Protocol(#[from] instant_acme::Error),
    #[error("ACME order for {domains:?}: {detail}")]
    Order {
        domains: Vec<String>,
        detail: String,
    },
    #[error("ACME CA bundle {path}: {detail}")]
    Ca { path: String, detail: String },
    #[error("the certificate the CA issued is unusable: {0}")]
    Issued(#[from] super::CertError),
    #[error("the order lease went to {0}")]
    LeaseLost(String),
    #[error("the order took longer than {0:?}")]
    Timeout(Duration),
}

fn order_err(domains: &[String], detail: impl Into<String>) -> AcmeError {
    AcmeError::Order {
        domains: domains.to_vec(),
        detail: detail.into(),
    }
}

/// `gateway_acme_*` and `gateway_certificate_*` series.
#[derive(Clone)]
pub struct AcmeMetrics {
    pub orders: IntCounterVec,
    pub last_attempt: IntGauge,
    pub last_success: IntGauge,
    pub consecutive_failures: IntGauge,
    pub self_signed: IntGauge,
}

impl AcmeMetrics {
    pub fn register(registry: &Registry) -> Result<AcmeMetrics, prometheus::Error> {
        let metrics = AcmeMetrics {
            orders: IntCounterVec::new(
                Opts::new(
                    "gateway_acme_orders_total",
                    "ACME orders this gateway ran, by result (success, error).",
                ),
                &["result"],
            )?,
            last_attempt: IntGauge::new(
                "gateway_acme_last_attempt_timestamp_seconds",
                "Unix time this gateway last started an ACME order.",
            )?,
            last_success: IntGauge::new(
                "gateway_acme_last_success_timestamp_seconds",
                "Unix time this gateway last obtained a certificate from the ACME CA.",
            )?,
            consecutive_failures: IntGauge::new(
                "gateway_acme_consecutive_failures",
                "ACME orders failed in a row on this gateway (0 after a success).",
            )?,
            self_signed: IntGauge::new(
                "gateway_certificate_self_signed",
                "1 while the HTTPS listeners serve a self-signed stand-in (no ACME certificate yet).",
            )?,
        };
        registry.register(Box::new(metrics.orders.clone()))?;
        registry.register(Box::new(metrics.last_attempt.clone()))?;
        registry.register(Box::new(metrics.last_success.clone()))?;
        registry.register(Box::new(metrics.consecutive_failures.clone()))?;
        registry.register(Box::new(metrics.self_signed.clone()))?;
        Ok(metrics)
    }
}

fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What the manager wants to do now.
pub enum Wanted {
    /// The gateway is gone or draining: stop.
    Stop,
    /// The config uses no ACME (now): idle.
    Off,
    /// Keep this `[https.acme]`'s certificate current in this slot; order only when
    /// `may_order` (the VIP holder of an HA pair, or a gateway without `[ha]`): the backup
    /// takes what the master stored.
    On {
        config: AcmeConfig,
        certs: Arc<ServerCerts>,
        may_order: bool,
    },
}

/// What the manager needs from the gateway: the current `[https.acme]` (it follows reloads)
/// and the certificate slot.
pub trait Host: Send + Sync + 'static {
    fn wanted(&self) -> Wanted;
}

/// The lease holder's name when the gateway has no `[ha]` name: host name and process id.
pub fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "gateway".into());
    format!("{host}-{}", std::process::id())
}

/// The stored certificate, if it is usable here: it parses, names exactly the configured
/// domains and has not expired.
fn usable_stored(storage: &Storage, config: &AcmeConfig) -> Option<Installed> {
    match storage.certificate() {
        Ok(Some(stored)) if stored.covers(&config.domains) && stored.not_after > unix_now() => {
            Some(stored)
        }
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring the stored ACME certificate");
            None
        }
    }
}

/// The certificate to serve when `[https.acme]` starts: the stored one if it is usable,
/// else a self-signed stand-in.
pub fn initial(config: &AcmeConfig) -> Result<Installed, super::CertError> {
    if let Some(stored) = Storage::open(&config.storage)
        .ok()
        .and_then(|storage| usable_stored(&storage, config))
    {
        return Ok(stored);
    }
    tracing::warn!(
        domains = ?config.domains,
        "no ACME certificate yet: serving a self-signed stand-in until the CA issues one"
    );
    Installed::self_signed(&config.domains)
}

/// Runs until the host says stop: one look every `POLL`.
pub async fn run(host: Arc<dyn Host>, node: String, metrics: AcmeMetrics) {
    let mut manager = Manager {
        node,
        metrics,
        storage: None,
        seen_mtime: None,
        backoff: None,
        retry_at: 0,
    };
    loop {
        match host.wanted() {
            Wanted::Stop => return,
            Wanted::Off => {}
            Wanted::On {
                config,
                certs,
                may_order,
            } => manager.step(&config, &certs, may_order).await,
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The manager's memory between looks.
struct Manager {
    node: String,
    metrics: AcmeMetrics,
    /// Opened once per storage directory (again when a reload names another).
    storage: Option<Storage>,
    /// The stored certificate's mtime when last looked at.
    seen_mtime: Option<std::time::SystemTime>,
    /// Failures so far, for the retry settings it was made with.
    backoff: Option<(Backoff, (Duration, Duration))>,
    /// No order before this unix time (after a failure).
    retry_at: i64,
}

impl Manager {
    fn storage(&mut self, config: &AcmeConfig) -> Option<Storage> {
        if self
            .storage
            .as_ref()
            .is_none_or(|s| s.dir() != config.storage)
        {
            self.storage = Storage::open(&config.storage)
                .map_err(|e| tracing::error!(error = %e, "ACME storage unusable"))
                .ok();
            self.seen_mtime = None;
        }
        self.storage.clone()
    }

    fn backoff(&mut self, config: &AcmeConfig) -> &mut Backoff {
        let settings = (config.retry_initial.0, config.retry_max.0);
        let backoff = self
            .backoff
            .take()
            .filter(|(_, made_with)| *made_with == settings)
            .unwrap_or_else(|| (Backoff::new(settings.0, settings.1), settings));
        &mut self.backoff.insert(backoff).0
    }

    /// One look: adopt what the storage holds, and order if due and allowed.
    async fn step(&mut self, config: &AcmeConfig, certs: &ServerCerts, may_order: bool) {
        let Some(storage) = self.storage(config) else {
            return;
        };
        // A certificate the peer (or an earlier run) stored.
        let mtime = storage.certificate_mtime();
        if mtime != self.seen_mtime {
            self.seen_mtime = mtime;
            if let Some(stored) = usable_stored(&storage, config) {
                certs.install(stored);
            }
        }
        let current = certs.current();
        self.metrics.self_signed.set(i64::from(
            current
                .as_ref()
                .is_some_and(|c| c.source == CertSource::SelfSigned),
        ));
        let served = current.as_ref().map(|c| Served {
            issued: c.source == CertSource::Acme,
            not_before: c.not_before,
            not_after: c.not_after,
            covers_domains: c.covers(&config.domains),
        });
        let now = unix_now();
        let Due::Now(reason) = renewal::due(served.as_ref(), now, None) else {
            return;
        };
        if now < self.retry_at || !may_order {
            return;
        }
        match storage.try_lease(&self.node, unix_now_ms(), LEASE_TTL.as_millis() as i64) {
            Ok(Ok(())) => {}
            Ok(Err(holder)) => {
                tracing::debug!(%holder, "the peer is ordering; waiting for its certificate");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot take the ACME order lease");
                return;
            }
        }
        tracing::info!(domains = ?config.domains, reason, "ordering a certificate");
        self.metrics.last_attempt.set(unix_now());
        let result = ordering(&storage, config, &self.node).await;
        if let Err(e) = storage.release_lease(&self.node) {
            tracing::warn!(error = %e, "cannot release the ACME order lease");
        }
        match result {
            Ok(installed) => {
                self.backoff(config).succeed();
                self.metrics.orders.with_label_values(&["success"]).inc();
                self.metrics.last_success.set(unix_now());
                self.metrics.consecutive_failures.set(0);
                self.seen_mtime = storage.certificate_mtime();
                self.retry_at = 0;
                certs.install(installed);
            }
            Err(e) => {
                let backoff = self.backoff(config);
                let wait = backoff.fail();
                let failures = backoff.failures();
                self.metrics.orders.with_label_values(&["error"]).inc();
                self.metrics.consecutive_failures.set(i64::from(failures));
                self.retry_at = unix_now() + wait.as_secs().max(1) as i64;
                tracing::error!(
                    error = %e,
                    retry_in = ?wait,
                    serving = current.as_ref().map_or("nothing", |c| c.source.as_str()),
                    "ACME order failed; the served certificate stays"
                );
            }
        }
    }
}

/// One order while holding the lease: renews the lease as it goes and gives up when it is
/// lost (the other node then owns the order; it resumes from storage).
async fn ordering(
    storage: &Storage,
    config: &AcmeConfig,
    node: &str,
) -> Result<Installed, AcmeError> {
    let keep_lease = async {
        loop {
            tokio::time::sleep(LEASE_TTL / 5).await;
            match storage.try_lease(node, unix_now_ms(), LEASE_TTL.as_millis() as i64) {
                Ok(Ok(())) => {}
                Ok(Err(holder)) => return AcmeError::LeaseLost(holder),
                Err(e) => tracing::warn!(error = %e, "cannot renew the ACME order lease"),
            }
        }
    };
    tokio::select! {
        result = tokio::time::timeout(ORDER_TIMEOUT, order(storage, config)) => {
            result.map_err(|_| AcmeError::Timeout(ORDER_TIMEOUT))?
        }
        lost = keep_lease => Err(lost),
    }
}

async fn account(storage: &Storage, config: &AcmeConfig) -> Result<Account, AcmeError> {
    let builder = || match &config.ca {
        Some(ca) => Account::builder_with_root(ca).map_err(|e| AcmeError::Ca {
            path: ca.display().to_string(),
            detail: e.to_string(),
        }),
        None => Account::builder().map_err(AcmeError::Protocol),
    };
    if let Some(credentials) = storage.account(&config.directory)? {
        return Ok(builder()?.from_credentials(credentials).await?);
    }
    let contact: Vec<&str> = config.contact.iter().map(String::as_str).collect();
    let (account, credentials): (Account, AccountCredentials) = builder()?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            config.directory.clone(),
            None,
        )
        .await?;
    storage.save_account(&config.directory, credentials)?;
    tracing::info!(directory = %config.directory, "ACME account created");
    Ok(account)
}

/// The order left in storage for these domains, if the CA still has it usable.
async fn resume(account: &Account, storage: &Storage, domains: &[String]) -> Option<Order> {
    let pending = storage.pending_order().ok().flatten()?;
    if pending.domains != domains {
        return None;
    }
    match account.order(pending.url.clone()).await {
        Ok(mut order) => {
            let status = order.state().status;
            if status == OrderStatus::Invalid {
                let reason = order.state().error.as_ref().map(|p| p.to_string());
                tracing::warn!(url = %pending.url, ?reason, "the stored ACME order failed; starting a new one");
                return None;
            }
            tracing::info!(url = %pending.url, ?status, "resuming the stored ACME order");
            Some(order)
        }
        Err(e) => {
            tracing::warn!(error = %e, "the stored ACME order is gone; starting a new one");
            None
        }
    }
}

async fn order(storage: &Storage, config: &AcmeConfig) -> Result<Installed, AcmeError> {
    let domains = &config.domains;
    let account = account(storage, config).await?;
    let mut order = match resume(&account, storage, domains).await {
        Some(order) => order,
        None => {
            storage.clear_order()?;
            let identifiers: Vec<Identifier> =
                domains.iter().cloned().map(Identifier::Dns).collect();
            let order = account.new_order(&NewOrder::new(&identifiers)).await?;
            storage.save_order(&PendingOrder {
                url: order.url().to_owned(),
                domains: domains.clone(),
            })?;
            order
        }
    };
    let patient = RetryPolicy::new().timeout(Duration::from_secs(120));
    if order.state().status == OrderStatus::Pending {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(order_err(domains, format!("authorization {other:?}"))),
            }
            let mut challenge = authz
                .challenge(ChallengeType::Http01)
                .ok_or_else(|| order_err(domains, "the CA offers no http-01 challenge"))?;
            storage.write_challenge(&challenge.token, challenge.key_authorization().as_str())?;
            if challenge.status == ChallengeStatus::Pending {
                challenge.set_ready().await?;
            }
        }
        let status = order.poll_ready(&patient).await?;
        if !matches!(
            status,
            OrderStatus::Ready | OrderStatus::Valid | OrderStatus::Processing
        ) {
            let detail = order
                .state()
                .error
                .as_ref()
                .map_or_else(|| format!("order {status:?}"), |p| p.to_string());
            storage.clear_order()?;
            return Err(order_err(domains, detail));
        }
    }
    let key_pem = storage.order_key()?;
    if order.state().status == OrderStatus::Ready {
        let key = rcgen::KeyPair::from_pem(&key_pem)
            .map_err(|e| order_err(domains, format!("order key: {e}")))?;
        let csr = rcgen::CertificateParams::new(domains.clone())
            .and_then(|params| params.serialize_request(&key))
            .map_err(|e| order_err(domains, format!("CSR: {e}")))?;
        order.finalize_csr(csr.der()).await?;
    }
    let chain_pem = order.poll_certificate(&patient).await?;
    let installed = Installed::from_pem(
        chain_pem.as_bytes(),
        key_pem.as_bytes(),
        CertSource::Acme,
        "the issued certificate",
    )?;
    storage.save_certificate(&key_pem, &chain_pem)?;
    storage.clear_order()?;
    tracing::info!(
        domains = ?domains,
        not_after = installed.not_after,
        "ACME certificate issued and stored"
    );
    Ok(installed)
}
