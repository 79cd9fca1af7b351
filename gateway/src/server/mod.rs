//! The running gateway: the current snapshot, listeners, health checks, reloads and drain.
//!
//! Reload = read and validate the file, bind any new listen addresses, build a snapshot
//! (certificates re-read, upstream state carried over), swap it in, then stop listeners that
//! are gone and restart health checks. Any failure before the swap leaves the old config
//! serving. Connections accepted on a listener that a reload removes stay open until done.
//!
//! Accept loops run on the calling (control) runtime; with thread per core each accepted
//! connection goes to the worker with the fewest open connections (`Gateway::dispatch`, in
//! `conn`, with the rest of a client connection's life).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use service_kit::health::Lifecycle;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;

use crate::certs::unix_now;
use crate::config::Config;
use crate::ha::node::{HaNode, VipSpec};
use crate::ha::vip::BindVip;
use crate::health_check::HealthChecks;
use crate::metrics::GatewayMetrics;
use crate::policy::conn_limit::ConnLimiter;
use crate::proxy;
use crate::runtime::Snapshot;

mod conn;
mod h2;
mod handover;

use conn::accept_loop;

/// A client must finish the TLS handshake within this time.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerKind {
    Https,
    Http,
}

impl ListenerKind {
    fn label(self) -> &'static str {
        match self {
            ListenerKind::Https => "https",
            ListenerKind::Http => "http",
        }
    }
}

struct ListenerHandle {
    stop: watch::Sender<bool>,
    /// The accept loop; once it has finished the socket is closed.
    task: tokio::task::JoinHandle<()>,
}

pub struct Gateway {
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: GatewayMetrics,
    pub lifecycle: Lifecycle,
    config_path: PathBuf,
    /// The config as the file says (the snapshot's adds the servers DNS found).
    file_config: Mutex<crate::config::Config>,
    /// What `discover` found last, by upstream.
    discovered: Mutex<crate::discover::Found>,
    /// Whether the DNS discovery task runs (started once, by the first config that needs it).
    discovering: std::sync::atomic::AtomicBool,
    reload_lock: tokio::sync::Mutex<()>,
    listeners: Mutex<HashMap<(ListenerKind, SocketAddr), ListenerHandle>>,
    health: Mutex<Option<HealthChecks>>,
    /// Client connections, and the signal that winds them down.
    drain: crate::drain::Drain,
    conn_limiter: Arc<ConnLimiter>,
    ha: Mutex<Option<Arc<HaNode>>>,
    /// Bind mode: the VIP and whether this node holds it (listeners on it are bound only then).
    vip_bind: Option<(std::net::IpAddr, watch::Receiver<bool>)>,
    /// The worker runtimes that serve client connections; empty: the runtime that started
    /// the gateway does.
    workers: Vec<tokio::runtime::Handle>,
    /// Open client connections per worker, for the accept loops' choice.
    worker_load: Box<[AtomicUsize]>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Build(#[from] crate::runtime::BuildError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Ha(#[from] crate::ha::node::HaError),
}

impl StartError {
    /// Configuration problems are the operator's to fix (exit 2); the rest are runtime (1).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            StartError::Config(_) | StartError::Build(_) | StartError::Ha(_)
        )
    }
}

impl proxy::Host for Gateway {
    fn metrics(&self) -> &GatewayMetrics {
        &self.metrics
    }

    fn draining(&self) -> watch::Receiver<bool> {
        self.lifecycle.subscribe()
    }
}

/// The gateway as the ACME manager sees it.
struct AcmeHost(std::sync::Weak<Gateway>);

impl crate::certs::acme::Host for AcmeHost {
    fn wanted(&self) -> crate::certs::acme::Wanted {
        use crate::certs::acme::Wanted;
        let Some(gateway) = self.0.upgrade() else {
            return Wanted::Stop;
        };
        if gateway.lifecycle.is_draining() {
            return Wanted::Stop;
        }
        let snapshot = gateway.snapshot.load();
        // In a pair the VIP holder orders (the CA's validation reaches it); before the HA
        // node has started nobody does.
        let may_order = snapshot.config.ha.is_none()
            || gateway.ha().is_some_and(|node| lock(&node.status).vip_held);
        match snapshot.config.https.as_ref().and_then(|h| h.acme.clone()) {
            Some(config) => Wanted::On {
                config,
                certs: snapshot.certs.clone(),
                may_order,
            },
            None => Wanted::Off,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Binds with SO_REUSEADDR and a deep backlog.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    let err = |source| StartError::Bind { addr, source };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(4096).map_err(err)
}

impl Gateway {
    /// Loads the config, binds every listener and starts serving: on each of `workers` when
    /// given (thread per core), else on the calling runtime.
    pub async fn start(
        config_path: &Path,
        workers: Vec<tokio::runtime::Handle>,
    ) -> Result<Arc<Gateway>, StartError> {
        let config = crate::config::load(config_path)?;
        let metrics = GatewayMetrics::new()?;
        let (bind_vip, vip_bind) = match &config.ha {
            Some(ha) if ha.vip_mode == crate::config::VipMode::Bind => {
                let (holder, held) = BindVip::new();
                (Some(holder), Some((ha.vip.addr, held)))
            }
            _ => (None, None),
        };
        let bound = bind_all(&config, &HashMap::new(), vip_filter(&vip_bind))?;
        let file_config = config.clone();
        let discovers = config.upstreams.values().any(|u| u.discover.is_some());
        let snapshot = Snapshot::build(config, None, &metrics)?;
        metrics.reloads.with_label_values(&["success"]).inc();
        metrics.last_reload_success.set(unix_now());
        let gateway = Arc::new(Gateway {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            lifecycle: Lifecycle::new(),
            config_path: config_path.to_owned(),
            file_config: Mutex::new(file_config),
            discovered: Mutex::new(Default::default()),
            discovering: std::sync::atomic::AtomicBool::new(false),
            reload_lock: tokio::sync::Mutex::new(()),
            listeners: Mutex::new(HashMap::new()),
            health: Mutex::new(None),
            drain: crate::drain::Drain::default(),
            conn_limiter: Arc::new(ConnLimiter::default()),
            ha: Mutex::new(None),
            vip_bind,
            worker_load: workers.iter().map(|_| AtomicUsize::new(0)).collect(),
            workers,
        });
        tokio::spawn(forget_idle_clients(Arc::downgrade(&gateway)));
        tokio::spawn(close_idle_upstream_connections(Arc::downgrade(&gateway)));
        gateway.start_certificates();
        if discovers {
            gateway.start_discovery();
        }
        gateway.commit_listeners(bound);
        gateway.restart_health_checks();
        let ha_config = gateway.snapshot.load().config.ha.clone();
        if let Some(ha) = ha_config {
            let spec = match bind_vip {
                Some(holder) => VipSpec::Bind(holder),
                None => VipSpec::Interface {
                    interface: ha.interface.clone(),
                },
            };
            let host = Arc::new(handover::HaHost {
                gateway: Arc::downgrade(&gateway),
                runtime: tokio::runtime::Handle::current(),
                paused: Mutex::new(None),
                quiescing_since: Mutex::new(None),
            });
            let node = HaNode::start(&ha, spec, host, gateway.metrics.ha.clone())?;
            *lock(&gateway.ha) = Some(Arc::new(node));
            if gateway.vip_bind.is_some() {
                tokio::spawn(follow_vip(Arc::downgrade(&gateway)));
            }
        }
        Ok(gateway)
    }

    /// The HA node, when `[ha]` is configured.
    pub fn ha(&self) -> Option<Arc<HaNode>> {
        lock(&self.ha).clone()
    }

    /// Whether some upstream has a server that can take requests (HA tracking).
    pub fn can_serve(&self) -> bool {
        let snapshot = self.snapshot.load();
        snapshot.upstreams.values().any(|u| {
            u.shared.snapshot().iter().any(|s| {
                matches!(
                    s.peer.state,
                    crate::balance::PeerState::Up | crate::balance::PeerState::Full
                )
            })
        })
    }

    /// Bind mode: binds or closes the listeners on the VIP to match `held`.
    fn reconcile_vip_listeners(self: &Arc<Self>) -> Result<(), StartError> {
        let bound = {
            let current = lock(&self.listeners);
            bind_all(
                &self.snapshot.load().config,
                &current,
                vip_filter(&self.vip_bind),
            )?
        };
        self.commit_listeners(bound);
        Ok(())
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Sees `true` once the gateway starts draining (WebSocket tunnels close then).
    pub fn draining(&self) -> watch::Receiver<bool> {
        self.lifecycle.subscribe()
    }

    /// Re-reads the config file and swaps it in; on error the running config stays.
    pub async fn reload(self: &Arc<Self>, trigger: &str) -> Result<(), String> {
        let _serialized = self.reload_lock.lock().await;
        let result = self.try_reload();
        match &result {
            Ok(()) => {
                self.metrics.reloads.with_label_values(&["success"]).inc();
                self.metrics.last_reload_success.set(unix_now());
                tracing::info!(trigger, "configuration reloaded");
            }
            Err(e) => {
                self.metrics.reloads.with_label_values(&["failure"]).inc();
                tracing::error!(trigger, error = %e, "configuration rejected; the previous one keeps serving");
            }
        }
        result
    }

    /// The config as the file says.
    pub fn file_config(&self) -> crate::config::Config {
        lock(&self.file_config).clone()
    }

    /// What DNS found last for each discovering upstream.
    pub fn discovered(&self) -> crate::discover::Found {
        lock(&self.discovered).clone()
    }

    /// Swaps in the servers DNS found for the `changed` upstreams, like a reload of the same
    /// file (listeners and everything else stay).
    pub async fn apply_discovered(
        self: &Arc<Self>,
        changed: crate::discover::Found,
    ) -> Result<(), String> {
        let _serialized = self.reload_lock.lock().await;
        let mut found = self.discovered();
        found.extend(changed);
        let config = crate::discover::effective(&self.file_config(), &found);
        let previous = self.snapshot.load_full();
        let snapshot =
            Snapshot::build(config, Some(&previous), &self.metrics).map_err(|e| e.to_string())?;
        for (name, addrs) in &found {
            self.metrics
                .discovered_servers
                .with_label_values(&[name.as_str()])
                .set(i64::try_from(addrs.len()).unwrap_or(i64::MAX));
        }
        *lock(&self.discovered) = found;
        self.snapshot.store(Arc::new(snapshot));
        self.restart_health_checks();
        Ok(())
    }

    fn try_reload(self: &Arc<Self>) -> Result<(), String> {
        let file = crate::config::load(&self.config_path).map_err(|e| e.to_string())?;
        let config = crate::discover::effective(&file, &self.discovered());
        if config.admin.listen != self.snapshot.load().config.admin.listen {
            tracing::warn!("admin.listen changes take effect at the next restart");
        }
        let bound = {
            let current = lock(&self.listeners);
            bind_all(&config, &current, vip_filter(&self.vip_bind)).map_err(|e| e.to_string())?
        };
        let previous = self.snapshot.load_full();
        let snapshot =
            Snapshot::build(config, Some(&previous), &self.metrics).map_err(|e| e.to_string())?;
        let discovers = file.upstreams.values().any(|u| u.discover.is_some());
        *lock(&self.file_config) = file;
        self.snapshot.store(Arc::new(snapshot));
        self.commit_listeners(bound);
        self.restart_health_checks();
        if discovers {
            self.start_discovery();
        }
        Ok(())
    }

    /// Starts the DNS discovery task unless it runs.
    /// The ACME manager (idle unless `[https.acme]`) and the OCSP stapler.
    fn start_certificates(self: &Arc<Self>) {
        let certs = self.snapshot.load().certs.clone();
        let node = self
            .snapshot
            .load()
            .config
            .ha
            .as_ref()
            .map_or_else(crate::certs::acme::node_name, |ha| ha.name.clone());
        tokio::spawn(crate::certs::acme::run(
            Arc::new(AcmeHost(Arc::downgrade(self))),
            node,
            self.metrics.acme.clone(),
        ));
        let weak = Arc::downgrade(self);
        tokio::spawn(crate::certs::ocsp::run(
            certs,
            move || {
                let gateway = weak.upgrade()?;
                let snapshot = gateway.snapshot.load();
                Some(
                    snapshot
                        .config
                        .https
                        .as_ref()
                        .is_some_and(|h| h.ocsp_stapling),
                )
            },
            self.metrics.ocsp.clone(),
        ));
    }

    fn start_discovery(self: &Arc<Self>) {
        if !self
            .discovering
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            tokio::spawn(crate::discover::run(Arc::downgrade(self)));
        }
    }

    fn restart_health_checks(&self) {
        let checks = HealthChecks::start(&self.snapshot.load());
        *lock(&self.health) = Some(checks);
    }

    /// Starts accept loops for newly bound listeners and stops those the config dropped.
    fn commit_listeners(self: &Arc<Self>, bound: Vec<(ListenerKind, SocketAddr, TcpListener)>) {
        let wanted: Vec<_> = wanted_listeners(&self.snapshot.load().config)
            .into_iter()
            .filter(|(_, addr)| vip_filter(&self.vip_bind)(addr))
            .collect();
        let mut listeners = lock(&self.listeners);
        listeners.retain(|key, handle| {
            let keep = wanted.contains(key);
            if !keep {
                let _ = handle.stop.send(true);
                tracing::info!(listener = key.0.label(), addr = %key.1, "listener removed");
            }
            keep
        });
        for (kind, addr, listener) in bound {
            let (stop, stopped) = watch::channel(false);
            let local = listener.local_addr().unwrap_or(addr);
            let task = tokio::spawn(accept_loop(self.clone(), listener, kind, stopped));
            tracing::info!(listener = kind.label(), addr = %local, workers = self.workers.len().max(1), "listening");
            listeners.insert((kind, addr), ListenerHandle { stop, task });
        }
    }

    /// Fingerprint of the config file and the files it names, for change polling.
    pub fn watched_fingerprint(&self) -> Vec<(PathBuf, Option<(SystemTime, u64)>)> {
        let mut files = vec![self.config_path.clone()];
        files.extend(self.snapshot.load().config.referenced_files());
        files
            .into_iter()
            .map(|f| {
                let meta = std::fs::metadata(&f)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())));
                (f, meta)
            })
            .collect()
    }
}

/// Bind mode: follows the HA node's VIP flag, binding the VIP listeners on acquire (retrying
/// while the old master still holds the port) and closing them on release.
async fn follow_vip(gateway: std::sync::Weak<Gateway>) {
    let Some(mut held) = gateway
        .upgrade()
        .and_then(|g| g.vip_bind.as_ref().map(|(_, rx)| rx.clone()))
    else {
        return;
    };
    loop {
        let Some(g) = gateway.upgrade() else { return };
        let want = *held.borrow_and_update();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match g.reconcile_vip_listeners() {
                Ok(()) => break,
                Err(e) if want && std::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "VIP listener busy; retrying");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    if !*held.borrow() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot bind the VIP listeners");
                    break;
                }
            }
        }
        drop(g);
        if held.changed().await.is_err() {
            return;
        }
    }
}

/// Drops rate-limit buckets of clients that went quiet, every few seconds, so memory tracks
/// recently active clients only.
async fn forget_idle_clients(gateway: std::sync::Weak<Gateway>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(10));
    loop {
        ticker.tick().await;
        let Some(gateway) = gateway.upgrade() else {
            return;
        };
        let snapshot = gateway.snapshot.load_full();
        let mut tracked = 0;
        for route in snapshot.router.routes() {
            if let Some(limiter) = &route.target.policy.rate_limit {
                limiter.forget_idle();
                tracked += limiter.tracked();
            }
        }
        gateway.metrics.rate_limit_clients.set(tracked as i64);
    }
}

/// Closes upstream connections that idled past their upstream's `keepalive_timeout`, every
/// second. A checkout closes its own worker's on the way, but after the last request nothing
/// else would, and each would stay open until the server closed it.
async fn close_idle_upstream_connections(gateway: std::sync::Weak<Gateway>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(gateway) = gateway.upgrade() else {
            return;
        };
        let snapshot = gateway.snapshot.load_full();
        for upstream in snapshot.upstreams.values() {
            upstream.shared.close_idle(&upstream.transport);
        }
    }
}

fn wanted_listeners(config: &Config) -> Vec<(ListenerKind, SocketAddr)> {
    let https = config
        .https
        .iter()
        .flat_map(|h| h.listen.iter().map(|a| (ListenerKind::Https, *a)));
    let http = config
        .http
        .iter()
        .flat_map(|h| h.listen.iter().map(|a| (ListenerKind::Http, *a)));
    https.chain(http).collect()
}

/// In bind mode, listeners on the VIP are wanted only while this node holds it.
fn vip_filter(
    vip_bind: &Option<(std::net::IpAddr, watch::Receiver<bool>)>,
) -> impl Fn(&SocketAddr) -> bool + '_ {
    move |addr| match vip_bind {
        Some((vip, held)) => addr.ip() != *vip || *held.borrow(),
        None => true,
    }
}

/// Binds every wanted listener that is not already running.
fn bind_all(
    config: &Config,
    running: &HashMap<(ListenerKind, SocketAddr), ListenerHandle>,
    allowed: impl Fn(&SocketAddr) -> bool,
) -> Result<Vec<(ListenerKind, SocketAddr, TcpListener)>, StartError> {
    wanted_listeners(config)
        .into_iter()
        .filter(|(_, addr)| allowed(addr))
        .filter(|key| !running.contains_key(key))
        .map(|(kind, addr)| Ok((kind, addr, bind(addr)?)))
        .collect()
}
