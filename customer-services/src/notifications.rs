//! The consultation change feed and its WebSocket.
//!
//! One poller per process tails the shared change log (so changes made through any replica
//! reach every subscriber) and fans events out over a broadcast channel. A WebSocket client
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
use service_kit::sqlite::StoreError;
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
        let mut last = store.last_seq().await?;
        let feed = tx.clone();
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
