//! The consultation change feed and its WebSocket.
//!
//! One tailer per process follows the shared change log (so changes made through any replica
//! reach every subscriber) and fans events out over a broadcast channel. On SQLite it polls
//! every `--notify-poll`; on PostgreSQL it LISTENs on `consultation_events` (writes NOTIFY in
//! their transaction) and reads the log after its last `seq` on every wake-up, after every
//! reconnect and every few seconds as a safety net: the table is the source of truth, the
//! notification only a wake-up, so an event is never lost (a reconnect catches up) nor
//! doubled (reads start after the last `seq` delivered). A WebSocket client
//! first gets `{"type":"hello","instance":...}` naming the replica it landed on (the gateway's
//! sticky-session tests rely on it), then one message per change. On drain the server closes
//! with 1001 (going away) so clients reconnect elsewhere.
//!
//! The upgrade needs a token like every API route: `Authorization: Bearer <JWT>`, or, from a
//! browser (which cannot set headers on a WebSocket), `?access_token=<JWT>` on the URL. A
//! customer token receives only events about its own consultations (an update that moves a
//! consultation away from it is its last event about it); staff tokens receive every event.
//! When the token expires the server closes the socket with 1008 (policy violation).

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use service_kit::auth::Claims;
use service_kit::openapi::ErrorResponse;
use service_kit::store::StoreError;
use service_kit::ApiError;
use tokio::sync::broadcast;

use crate::store::{ChangeEvent, ConsultationStore};
use crate::SharedState;

/// Events buffered per subscriber before it is told it lagged.
const CHANNEL_CAPACITY: usize = 1024;
const BATCH: i64 = 500;

#[derive(Clone)]
pub struct Notifier {
    tx: broadcast::Sender<ChangeEvent>,
}

impl Notifier {
    /// Starts tailing the change log from its current end.
    pub async fn start(store: ConsultationStore, poll: Duration) -> Result<Self, StoreError> {
        let (tx, _) = broadcast::channel(CHANNEL_CAPACITY);
        let last = store.last_seq().await?;
        let feed = tx.clone();
        if store.postgres().is_some() {
            tokio::spawn(listen(store, feed, last));
            return Ok(Notifier { tx });
        }
        let mut last = last;
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(poll);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut pruned_at = last;
            loop {
                ticker.tick().await;
                match store.events_after(last, BATCH).await {
                    Ok(events) => {
                        for event in events {
                            last = event.seq;
                            // No subscribers is fine: the event is simply not delivered.
                            let _ = feed.send(event);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "change feed poll failed"),
                }
                if last - pruned_at >= 1000 {
                    if let Err(e) = store.prune_events(last).await {
                        tracing::warn!(error = %e, "change log prune failed");
                    }
                    pruned_at = last;
                }
            }
        });
        Ok(Notifier { tx })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<ChangeEvent> {
        self.tx.subscribe()
    }
}

/// How often the PostgreSQL feed reads the log without a notification (a safety net).
const PG_SAFETY_POLL: Duration = Duration::from_secs(5);

/// The PostgreSQL feed: wake on NOTIFY (or reconnect, or [`PG_SAFETY_POLL`]), then read
/// everything after `last`.
async fn listen(store: ConsultationStore, feed: broadcast::Sender<ChangeEvent>, mut last: i64) {
    let mut listener: Option<sqlx::postgres::PgListener> = None;
    let mut pruned_at = last;
    loop {
        // Catch up: the log is the source of truth.
        loop {
            match store.events_after(last, BATCH).await {
                Ok(events) => {
                    let full = events.len() as i64 == BATCH;
                    for event in events {
                        last = event.seq;
                        let _ = feed.send(event);
                    }
                    if !full {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "change feed read failed");
                    break;
                }
            }
        }
        if last - pruned_at >= 1000 {
            if let Err(e) = store.prune_events(last).await {
                tracing::warn!(error = %e, "change log prune failed");
            }
            pruned_at = last;
        }
        if listener.is_none() {
            if let Some(pg) = store.postgres() {
                match sqlx::postgres::PgListener::connect_with(pg.pool()).await {
                    Ok(mut l) => match l.listen(crate::store::EVENTS_CHANNEL).await {
                        Ok(()) => {
                            listener = Some(l);
                            // Anything committed before LISTEN took effect: read again.
                            continue;
                        }
                        Err(e) => tracing::warn!(error = %e, "LISTEN failed"),
                    },
                    Err(e) => tracing::warn!(error = %e, "change feed cannot connect"),
                }
            }
        }
        match listener.as_mut() {
            Some(l) => {
                tokio::select! {
                    received = l.try_recv() => match received {
                        // Drain what else arrived: one read covers them all.
                        Ok(Some(_)) => while l.next_buffered().is_some() {},
                        // The connection dropped; the next try_recv reconnects and re-LISTENs.
                        Ok(None) => tracing::warn!("change feed connection lost; catching up"),
                        Err(e) => {
                            tracing::warn!(error = %e, "change feed listener failed");
                            listener = None;
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    },
                    () = tokio::time::sleep(PG_SAFETY_POLL) => {}
                }
            }
            None => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// The change feed (WebSocket; see the module docs for its messages).
#[utoipa::path(get, path = "/api/v1/notifications", tag = "notifications",
    operation_id = "subscribe_notifications",
    params(("access_token" = Option<String>, Query,
        description = "The bearer token, for browsers that cannot set headers on a WebSocket")),
    responses(
        (status = 101, description = "Switching to WebSocket"),
        (status = 400, description = "Not a WebSocket upgrade request", body = ErrorResponse),
        (status = 426, description = "The connection cannot be upgraded", body = ErrorResponse),
    ))]
pub async fn subscribe(
    State(state): State<SharedState>,
    claims: Claims,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    match upgrade {
        Ok(upgrade) => upgrade
            .on_upgrade(move |socket| session(socket, state, claims))
            .into_response(),
        Err(rejection) => ApiError::new(
            rejection.status(),
            "websocket_required",
            format!("this endpoint speaks WebSocket: {}", rejection.body_text()),
        )
        .into_response(),
    }
}

async fn session(mut socket: WebSocket, state: SharedState, claims: Claims) {
    let mut events = state.notifier.subscribe();
    let only = claims.client().map(str::to_string);
    // Far enough in the future to mean "never" for a token that does not expire.
    let expires_in = claims
        .expires_in()
        .unwrap_or(Duration::from_secs(100 * 365 * 24 * 3600));
    let expiry = tokio::time::sleep(expires_in);
    tokio::pin!(expiry);
    let hello = serde_json::json!({
        "type": "hello",
        "service": crate::INFO.name,
        "instance": state.instance_id,
    });
    if socket
        .send(Message::Text(hello.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            event = events.recv() => {
                let message = match event {
                    Ok(e) if only.as_deref().is_some_and(|client| !e.concerns(client)) => continue,
                    Ok(e) => serde_json::json!({
                        "type": format!("consultation.{}", e.action),
                        "consultation_id": e.consultation_id,
                        "status": e.status,
                        "seq": e.seq,
                        "at": e.at,
                    }),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        serde_json::json!({ "type": "lagged", "missed": missed })
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                if socket.send(Message::Text(message.to_string().into())).await.is_err() {
                    return;
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(Message::Text(text))) if text.as_str() == "ping" => {
                    if socket.send(Message::Text("pong".into())).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
            },
            () = state.lifecycle.drain_started() => break,
            () = &mut expiry => {
                let _ = socket
                    .send(Message::Close(Some(CloseFrame {
                        code: axum::extract::ws::close_code::POLICY,
                        reason: "token expired".into(),
                    })))
                    .await;
                return;
            }
        }
    }
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: axum::extract::ws::close_code::AWAY,
            reason: "server shutting down".into(),
        })))
        .await;
}
