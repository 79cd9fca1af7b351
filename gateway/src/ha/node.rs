//! The HA node: the pure [`Machine`] driven by a UDP socket, timers and tracking, on its own
//! OS thread with its own single-threaded runtime, so adverts keep their rhythm however busy
//! the proxy's worker threads are.
//!
//! Inputs: authenticated adverts (forged or replayed ones are dropped and counted), the
//! machine's own deadlines, a tracking probe every 100 ms, and commands (shutdown, and a test
//! hook that drops adverts both ways to simulate a partition). Outputs: adverts to every peer,
//! VIP acquire/release, transitions logged, counted and kept for `/-/ha`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prometheus::{IntCounter, IntCounterVec, IntGauge};
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use super::vip::{VipError, VipHolder};
use super::{
    decode, encode, Action, AdvertKey, Config, Input, Machine, PeerName, ReplayGuard, State,
};
use crate::config::HaConfig;

/// How often a quiescing node looks at its open connections.
const QUIET_POLL: Duration = Duration::from_millis(2);

/// Transitions kept for `/-/ha`.
const HISTORY: usize = 32;

/// Adverts carry the sender's wall clock (µs); one further than this from ours is a replay
/// (or a peer with a broken clock). Complements the per-sender high-water mark, which cannot
/// catch the first replayed advert from a sender we have not heard yet.
const FRESHNESS_MICROS: u64 = 5_000_000;

#[derive(Debug, Clone, Serialize)]
pub struct TransitionRecord {
    pub at: String,
    pub from: String,
    pub to: String,
    pub reason: String,
}

/// What `/-/ha` reports.
#[derive(Debug, Clone, Serialize)]
pub struct HaStatus {
    pub name: String,
    pub state: String,
    pub priority: u8,
    pub effective_priority: u8,
    pub master: Option<String>,
    pub vip: String,
    pub vip_mode: String,
    pub vip_held: bool,
    pub peers: Vec<String>,
    pub adverts_sent: u64,
    pub adverts_received: u64,
    pub adverts_rejected: u64,
    pub transitions: VecDeque<TransitionRecord>,
}

#[derive(Clone)]
pub struct HaMetrics {
    pub master: IntGauge,
    pub vip_held: IntGauge,
    pub effective_priority: IntGauge,
    pub transitions: IntCounterVec,
    pub sent: IntCounter,
    pub received: IntCounter,
    pub rejected: IntCounterVec,
}

pub enum Command {
    Shutdown(oneshot::Sender<()>),
    DropAdverts(bool),
}

/// What the node needs from the gateway it runs in. Every call must return at once: the HA
/// thread never waits on the proxy.
pub trait Host: Send + Sync {
    /// True while this node can serve; false applies the tracking penalty.
    fn can_serve(&self) -> bool;
    /// Wind client connections down (`true`: the VIP is about to move away) or serve them
    /// normally again (`false`).
    fn quiesce(&self, on: bool);
    /// While quiescing: whether the VIP may move now (no client connection left that the
    /// move would cut). Asked every few milliseconds.
    fn quiet(&self) -> bool;
}

/// Handle to the running node.
pub struct HaNode {
    pub status: Arc<Mutex<HaStatus>>,
    commands: mpsc::UnboundedSender<Command>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// How long a handover may take (the machine's bound, plus a margin).
    handover: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum HaError {
    #[error("[ha]: {0}")]
    Config(String),
    #[error("[ha] cannot bind UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Vip(#[from] VipError),
    #[error("[ha] cannot start its thread: {0}")]
    Thread(std::io::Error),
}

/// How the VIP will be held; opened inside the HA thread's runtime.
pub enum VipSpec {
    Interface { interface: Option<String> },
    Bind(super::vip::BindVip),
}

fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    format!("{secs:.3}")
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn state_name(state: State) -> String {
    state.to_string().to_ascii_lowercase()
}

impl HaNode {
    /// Starts the node; returns once the socket is bound and the VIP holder is ready, so
    /// configuration and permission errors surface at start.
    pub fn start(
        config: &HaConfig,
        vip: VipSpec,
        host: Arc<dyn Host>,
        metrics: HaMetrics,
    ) -> Result<HaNode, HaError> {
        let name = PeerName::new(&config.name).map_err(|e| HaError::Config(e.to_string()))?;
        let mut machine_config = Config::new(name.clone(), config.address, config.priority);
        machine_config.advert_interval = config.advert_interval.0;
        machine_config.preempt = config.preempt;
        machine_config.preempt_delay = config.preempt_delay.map(|d| d.0);
        machine_config.sole_backup = config.peers.len() == 1;
        let machine = Machine::new(machine_config).map_err(|e| HaError::Config(e.to_string()))?;
        let key =
            AdvertKey::new(config.secret.as_bytes()).map_err(|e| HaError::Config(e.to_string()))?;
        let bind = SocketAddr::new(config.address, config.port);
        let socket = std::net::UdpSocket::bind(bind)
            .map_err(|source| HaError::Bind { addr: bind, source })?;
        socket
            .set_nonblocking(true)
            .map_err(|source| HaError::Bind { addr: bind, source })?;
        let status = Arc::new(Mutex::new(HaStatus {
            name: config.name.clone(),
            state: "initialize".into(),
            priority: config.priority,
            effective_priority: config.priority,
            master: None,
            vip: format!("{}/{}", config.vip.addr, config.vip.prefix),
            vip_mode: format!("{:?}", config.vip_mode).to_ascii_lowercase(),
            vip_held: false,
            peers: config.peers.iter().map(|p| p.to_string()).collect(),
            adverts_sent: 0,
            adverts_received: 0,
            adverts_rejected: 0,
            transitions: VecDeque::new(),
        }));
        let (commands, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let peers = config.peers.clone();
        let penalty = config.track_penalty;
        let (vip_addr, vip_prefix, own) = (config.vip.addr, config.vip.prefix, config.address);
        let thread_status = status.clone();
        let thread = std::thread::Builder::new()
            .name("ha".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(HaError::Thread(e)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let holder = match vip {
                        VipSpec::Bind(b) => VipHolder::Bind(b),
                        VipSpec::Interface { interface } => {
                            match super::vip::InterfaceVip::open(
                                vip_addr,
                                vip_prefix,
                                own,
                                interface.as_deref(),
                            )
                            .await
                            {
                                Ok(v) => {
                                    // A VIP left behind by a crash of this node goes first.
                                    if let Err(e) = v.release().await {
                                        tracing::warn!(error = %e, "could not clear a stale VIP");
                                    }
                                    VipHolder::Interface(v)
                                }
                                Err(e) => {
                                    let _ = ready_tx.send(Err(HaError::Vip(e)));
                                    return;
                                }
                            }
                        }
                    };
                    let socket = match UdpSocket::from_std(socket) {
                        Ok(s) => s,
                        Err(source) => {
                            let _ = ready_tx.send(Err(HaError::Bind { addr: bind, source }));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    let driver = Driver {
                        machine,
                        socket,
                        key,
                        peers,
                        holder,
                        status: thread_status,
                        metrics,
                        guard: ReplayGuard::default(),
                        drop_adverts: false,
                        last_counter: 0,
                        host,
                        quiet_by: None,
                        penalty,
                    };
                    driver.run(rx).await;
                });
            })
            .map_err(HaError::Thread)?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(HaNode {
                status,
                commands,
                thread: Mutex::new(Some(thread)),
                handover: super::machine::master_down_interval(
                    super::machine::MIN_PRIORITY,
                    config.advert_interval.0,
                ) + Duration::from_secs(1),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(HaError::Config("the HA thread ended during start".into())),
        }
    }

    pub fn status(&self) -> HaStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Clean stop. As master: priority-0 adverts, and the VIP kept (so are the listeners)
    /// until the peer announces it has taken over; returns once the VIP is released.
    pub async fn shutdown(&self) {
        let (done, wait) = oneshot::channel();
        if self.commands.send(Command::Shutdown(done)).is_ok() {
            let _ = tokio::time::timeout(self.handover, wait).await;
        }
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    /// Test hook: drop adverts both ways (a partition).
    pub fn drop_adverts(&self, drop: bool) {
        let _ = self.commands.send(Command::DropAdverts(drop));
    }
}

struct Driver {
    machine: Machine,
    socket: UdpSocket,
    key: AdvertKey,
    peers: Vec<SocketAddr>,
    holder: VipHolder,
    status: Arc<Mutex<HaStatus>>,
    metrics: HaMetrics,
    guard: ReplayGuard,
    drop_adverts: bool,
    last_counter: u64,
    host: Arc<dyn Host>,
    /// Set while quiescing for a handover: when to stop waiting for quiet.
    quiet_by: Option<tokio::time::Instant>,
    penalty: u8,
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let actions = self.machine.handle(Instant::now(), Input::Start);
        self.apply(actions).await;
        let mut buf = [0u8; 512];
        let mut track = tokio::time::interval(Duration::from_millis(100));
        track.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut applied_penalty = 0u8;
        // Set once a shutdown is asked for: answered when the machine has stopped (a master
        // first hands over).
        let mut stopping: Option<oneshot::Sender<()>> = None;
        loop {
            if stopping.is_some() && self.machine.state() == State::Stopped {
                if let Some(done) = stopping.take() {
                    let _ = done.send(());
                }
                return;
            }
            let deadline = self
                .machine
                .next_deadline()
                .map(tokio::time::Instant::from_std);
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let quiet_check = async {
                match self.quiet_by {
                    Some(_) => tokio::time::sleep(QUIET_POLL).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = quiet_check => {
                    let due = self.quiet_by.is_some_and(|by| tokio::time::Instant::now() >= by);
                    if due || self.host.quiet() {
                        self.quiet_by = None;
                        let actions = self.machine.handle(Instant::now(), Input::Quiet);
                        self.apply(actions).await;
                    }
                }
                received = self.socket.recv_from(&mut buf) => {
                    let Ok((n, from)) = received else { continue };
                    if self.drop_adverts {
                        continue;
                    }
                    self.on_datagram(&buf[..n], from).await;
                }
                () = sleep => {
                    let actions = self.machine.handle(Instant::now(), Input::Tick);
                    self.apply(actions).await;
                }
                _ = track.tick() => {
                    let penalty = if self.host.can_serve() { 0 } else { self.penalty };
                    if penalty != applied_penalty {
                        tracing::warn!(penalty, "tracking: effective priority changes");
                        applied_penalty = penalty;
                        let actions = self.machine.handle(Instant::now(), Input::Tracking { penalty });
                        self.apply(actions).await;
                    }
                }
                command = commands.recv(), if stopping.is_none() => match command {
                    Some(Command::DropAdverts(drop)) => {
                        tracing::warn!(drop, "HA test hook: dropping adverts");
                        self.drop_adverts = drop;
                    }
                    Some(Command::Shutdown(done)) => {
                        self.drop_adverts = false;
                        let actions = self.machine.handle(Instant::now(), Input::Shutdown);
                        self.apply(actions).await;
                        stopping = Some(done);
                    }
                    None => return,
                },
            }
        }
    }

    async fn on_datagram(&mut self, bytes: &[u8], from: SocketAddr) {
        let rejected = |this: &Self, reason: &str| {
            this.metrics.rejected.with_label_values(&[reason]).inc();
            this.status
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .adverts_rejected += 1;
        };
        match decode(bytes, &self.key) {
            Ok((advert, counter)) => {
                let now = unix_micros();
                if counter.abs_diff(now) > FRESHNESS_MICROS {
                    tracing::warn!(%from, counter, now, "stale HA advert ignored");
                    rejected(self, "replayed");
                    return;
                }
                if let Err(e) = self.guard.check(&advert.from_name, counter) {
                    tracing::warn!(%from, error = %e, "replayed HA advert ignored");
                    rejected(self, "replayed");
                    return;
                }
                self.metrics.received.inc();
                self.status
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .adverts_received += 1;
                let actions = self.machine.handle(Instant::now(), Input::Advert(advert));
                self.apply(actions).await;
            }
            Err(e) => {
                tracing::warn!(%from, error = %e, "HA advert rejected");
                rejected(self, "invalid");
            }
        }
    }

    fn next_counter(&mut self) -> u64 {
        self.last_counter = unix_micros().max(self.last_counter + 1);
        self.last_counter
    }

    async fn apply(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Quiesce => {
                    tracing::info!("a better peer asks for the VIP: winding connections down");
                    self.host.quiesce(true);
                    self.quiet_by = Some(tokio::time::Instant::now() + super::machine::YIELD_QUIET);
                }
                Action::Resume => {
                    self.host.quiesce(false);
                    self.quiet_by = None;
                }
                Action::SendAdvert { priority } => {
                    if self.drop_adverts {
                        continue;
                    }
                    let advert = self.machine.advert(priority);
                    let counter = self.next_counter();
                    let bytes = encode(&advert, counter, &self.key);
                    for peer in &self.peers {
                        if let Err(e) = self.socket.send_to(&bytes, peer).await {
                            tracing::debug!(%peer, error = %e, "HA advert not sent");
                        }
                    }
                    self.metrics.sent.inc();
                    self.status
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .adverts_sent += 1;
                }
                Action::AcquireVip => match self.holder.acquire().await {
                    Ok(()) => {
                        self.metrics.vip_held.set(1);
                        self.status
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .vip_held = true;
                        tracing::info!("VIP acquired");
                    }
                    Err(e) => tracing::error!(error = %e, "could not acquire the VIP"),
                },
                Action::StopAnnouncing => self.holder.stop_announcing(),
                Action::ReleaseVip => {
                    if let Err(e) = self.holder.release().await {
                        tracing::error!(error = %e, "could not release the VIP");
                    }
                    self.metrics.vip_held.set(0);
                    self.status
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .vip_held = false;
                    tracing::info!("VIP released");
                }
                Action::Transition { from, to, reason } => {
                    tracing::warn!(from = %from, to = %to, reason = %reason, "HA transition");
                    self.metrics
                        .transitions
                        .with_label_values(&[&state_name(to)])
                        .inc();
                    self.metrics.master.set(i64::from(to == State::Master));
                    let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
                    status.state = state_name(to);
                    if status.transitions.len() == HISTORY {
                        status.transitions.pop_front();
                    }
                    status.transitions.push_back(TransitionRecord {
                        at: now_rfc3339(),
                        from: state_name(from),
                        to: state_name(to),
                        reason: reason.to_string(),
                    });
                }
            }
        }
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.effective_priority = self.machine.effective_priority();
        status.master = self.machine.current_master().map(|m| m.name.to_string());
        self.metrics
            .effective_priority
            .set(i64::from(self.machine.effective_priority()));
    }
}
