//! The notifier: tails the limit log and tells people. Each limit event becomes one email to
//! everyone concerned (the organisation's owners and admins, the key's `alert_emails` and its
//! creator's) and one signed webhook call per configured URL (organisation and workspace).
//!
//! Delivery order: for a batch of limit events, deliver (retrying with backoff), then record each
//! outcome and the new log offset in one store transaction. A crash between delivering and
//! recording re-delivers that batch once after restart (at-least-once); nothing is skipped.
//! Delivery runs on its own task and never blocks requests.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sha2::Sha256;
use tokio::sync::watch;

use super::Node;
use crate::codec;
use crate::domain::limits::BudgetKind;
use crate::domain::{LimitEvent, LimitKind, Millis};
use crate::log::Topic;
use crate::store::Notification;

use crate::ledger::sync::NOTIFIER_CONSUMER as CONSUMER;
const ATTEMPTS: u32 = 4;
/// How many of the latest deliveries a starting notifier remembers, to skip duplicates of them.
const RECENT_DELIVERIES: usize = 10_000;

/// Runs until shutdown.
pub async fn run(node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    let mut end = node.log.watch_end(Topic::Limits);
    let mut at = node.store.offset(CONSUMER).await.unwrap_or(0);
    // Two aggregators can see the same crossing at once and both emit it, under one
    // deterministic event id: deliver it once, also when the second copy comes after a restart
    // (the ids delivered lately are read back from the store).
    let mut recent = crate::domain::state::RecentIds::default();
    match node.store.notifications(RECENT_DELIVERIES).await {
        Ok(done) => {
            for n in done.iter().rev() {
                recent.insert_event_id(&n.limit_event_id, n.created_at);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "notifier: cannot read past deliveries; a duplicate limit event may be delivered again")
        }
    }
    loop {
        if at >= *end.borrow_and_update() {
            tokio::select! {
                r = end.changed() => if r.is_err() { return },
                _ = shutdown.changed() => return,
            }
            continue;
        }
        match node.log.read(Topic::Limits, at, 1 << 20).await {
            Ok(batch) => {
                let Some(next) = batch.last().map(|r| r.next) else {
                    continue;
                };
                let mut rows = Vec::new();
                for r in &batch {
                    match codec::decode_limit(&r.payload) {
                        // Limit state is for gateways, not people.
                        Ok(e) if e.kind == LimitKind::Usage => {}
                        Ok(e) if !recent.insert_event_id(&e.event_id, e.at) => {
                            tracing::debug!(event_id = %e.event_id, "notifier: duplicate limit event skipped")
                        }
                        Ok(e) => rows.extend(deliver(&node, &e).await),
                        Err(e) => {
                            tracing::error!(offset = r.offset, error = %e, "notifier: skipping undecodable limit event")
                        }
                    }
                }
                match node.store.record_notifications(rows, CONSUMER, next).await {
                    Ok(()) => at = next,
                    Err(e) => {
                        tracing::error!(error = %e, "notifier: recording failed; will retry the batch")
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "notifier: reading the limit log failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// The email recipients of an event: owners and admins, the key's alert emails and its creator's.
fn recipients(node: &Node, e: &LimitEvent) -> Vec<String> {
    let mut out = node.settings.alert_emails.clone();
    let state = node.ledger.state();
    if let Some(key) = e.api_key_id.as_deref().and_then(|k| state.api_keys.get(k)) {
        out.extend(key.alert_emails.iter().cloned());
        if let Some(creator) = key
            .created_by
            .as_deref()
            .and_then(|c| state.api_keys.get(c))
        {
            out.extend(creator.alert_emails.iter().cloned());
        }
    }
    out.sort();
    out.dedup();
    out
}

fn webhooks(node: &Node, e: &LimitEvent) -> Vec<String> {
    let mut out: Vec<String> = node.settings.alert_webhook_url.iter().cloned().collect();
    let state = node.ledger.state();
    if let Some(ws) = e
        .workspace_id
        .as_deref()
        .and_then(|w| state.workspaces.get(w))
    {
        out.extend(
            ws.defaults
                .get("alert_webhook_url")
                .and_then(|u| u.as_str())
                .map(str::to_owned),
        );
    }
    out
}

fn amount(kind: BudgetKind, d: rust_decimal::Decimal) -> String {
    match kind {
        BudgetKind::Cost => format!("${}", d.round_dp(6).normalize()),
        BudgetKind::Tokens => format!("{} tokens", d.normalize()),
    }
}

/// Subject and text of the email for an event.
pub fn message(e: &LimitEvent) -> (String, String) {
    let what = match e.kind {
        LimitKind::ThresholdCrossed => "crossed its alert threshold",
        LimitKind::Exhausted => "is exhausted: its requests now get HTTP 412",
        LimitKind::Reset => "started a new period",
        LimitKind::Usage => "reports its usage so far",
    };
    let subject = format!("[Tollgate] The {} budget {} {what}", e.owner_kind, e.budget);
    let mut body = format!(
        "The {} budget {} {what}.\n\nUsed: {} of {}\n",
        e.owner_kind,
        e.budget,
        amount(e.budget_type, e.used),
        amount(e.budget_type, e.credit_limit)
    );
    if let Some(t) = e.alert_threshold {
        body.push_str(&format!("Alert threshold: {}\n", amount(e.budget_type, t)));
    }
    body.push_str(&format!("Counting since: {}\n", e.window_start.to_iso()));
    match e.next_reset {
        Some(t) => body.push_str(&format!("Next reset: {}\n", t.to_iso())),
        None => body.push_str("This budget does not reset by itself; an admin can reset_usage.\n"),
    }
    (subject, body)
}

/// Retries `send` with exponential backoff; returns attempts made and the last error.
async fn with_retries<F, Fut>(mut send: F) -> (u32, Option<String>)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut wait = Duration::from_millis(500);
    for attempt in 1..=ATTEMPTS {
        match send().await {
            Ok(()) => return (attempt, None),
            Err(e) if attempt == ATTEMPTS => return (attempt, Some(e)),
            Err(e) => tracing::warn!(error = %e, attempt, "notification failed; retrying"),
        }
        tokio::time::sleep(wait).await;
        wait *= 2;
    }
    (ATTEMPTS, Some("no attempt made".into()))
}

async fn send_email(
    node: &Node,
    url: &str,
    to: &[String],
    subject: &str,
    body: &str,
) -> Result<(), String> {
    let mut m = Message::builder().from(
        node.settings
            .alert_from
            .parse::<Mailbox>()
            .map_err(|e| e.to_string())?,
    );
    for r in to {
        m = m.to(r.parse::<Mailbox>().map_err(|e| format!("{r}: {e}"))?);
    }
    let msg = m
        .subject(subject)
        .body(body.to_owned())
        .map_err(|e| e.to_string())?;
    let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
        .map_err(|e| e.to_string())?
        .build();
    transport
        .send(msg)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

async fn send_webhook(node: &Node, url: &str, body: &str) -> Result<(), String> {
    let mut req = node
        .webhook_http
        .post(url)
        .header("content-type", "application/json")
        .timeout(Duration::from_secs(10));
    if let Some(secret) = &node.settings.alert_webhook_secret {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|e| e.to_string())?;
        mac.update(body.as_bytes());
        let hex = crate::crypto::hex(&mac.finalize().into_bytes());
        req = req.header("x-tollgate-signature", format!("sha256={hex}"));
    }
    let resp = req
        .body(body.to_owned())
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("webhook answered {}", resp.status()))
    }
}

/// The JSON body of a webhook call.
pub fn webhook_body(e: &LimitEvent) -> String {
    serde_json::json!({
        "type": format!("budget.{}", e.kind.as_str()),
        "event_id": e.event_id,
        "at": e.at.to_iso(),
        "budget": e.budget,
        "owner_kind": e.owner_kind,
        "workspace_id": e.workspace_id,
        "api_key_id": e.api_key_id,
        "budget_type": match e.budget_type { BudgetKind::Cost => "cost", BudgetKind::Tokens => "tokens" },
        "credit_limit": crate::domain::pricing::decimal_json(e.credit_limit),
        "alert_threshold": e.alert_threshold.map(crate::domain::pricing::decimal_json),
        "used": crate::domain::pricing::decimal_json(e.used),
        "window_start": e.window_start.to_iso(),
        "next_reset": e.next_reset.map(Millis::to_iso),
    })
    .to_string()
}

async fn deliver(node: &Node, e: &LimitEvent) -> Vec<Notification> {
    let row = |channel: &str, recipients: String, (attempts, error): (u32, Option<String>)| {
        Notification {
            limit_event_id: e.event_id.clone(),
            channel: channel.into(),
            kind: e.kind.as_str().into(),
            budget: e.budget.clone(),
            recipients,
            status: if error.is_none() {
                "delivered".into()
            } else {
                "failed".into()
            },
            attempts,
            error,
            created_at: Millis::now(),
        }
    };
    let mut rows = Vec::new();
    let to = recipients(node, e);
    if let (Some(url), false) = (&node.settings.smtp_url, to.is_empty()) {
        let (subject, body) = message(e);
        let outcome = with_retries(|| send_email(node, url, &to, &subject, &body)).await;
        rows.push(row("email", to.join(","), outcome));
    }
    let body = webhook_body(e);
    for url in webhooks(node, e) {
        let outcome = with_retries(|| send_webhook(node, &url, &body)).await;
        rows.push(row("webhook", url, outcome));
    }
    rows
}
