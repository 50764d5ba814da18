//! Turning a queued message back into a MESSAGE for a device, and building the IMDN
//! notifications (RFC 5438) that report its fate to the sender.
//!
//! Invariant: every delivery attempt of one queued message carries the same Call-ID, CSeq,
//! From tag, `imdn.Message-ID` and `X-PMS-Message-ID`, so a device can discard a repeat
//! (guarantee 3). The delivered body and Content-Type are the sender's, byte for byte.
//! Invariant: an IMDN never asks for an IMDN (no Disposition-Notification on it).
//! Invariant: a message that arrived over TLS, and every IMDN about it, goes out only through
//! a binding registered over TLS, unless the node's policy allows plaintext delivery
//! ([`may_carry`]; RFC 3261 §26.2: a path that started encrypted stays encrypted).

use pms_mailbox::{Binding, DedupKey, MessagePayload, NewMessage, QueuedMessage, UserRecord};
use pms_sip::imdn::{ImdnStatus, build_cpim_imdn, build_imdn, parse_disposition_notification};
use pms_sip::message::{Method, Request, SipUri};
use pms_types::{GroupId, MessageId, UnixMillis, UserId};

use crate::config::EdgeConfig;
use crate::service::SipService;
use crate::status::Refusal;
use pms_types::time::rfc3339;

/// The MESSAGE that delivers `message` to the device of `binding`. The session adds the Via.
pub fn delivery_request(
    binding: &Binding,
    message: &QueuedMessage,
    payload: &MessagePayload,
    domain: &str,
) -> Request {
    let mut request = Request::new(Method::Message, binding.contact.clone());
    let headers = &mut request.headers;
    headers.push("Max-Forwards", "70");
    let from_tag = message
        .message_id
        .as_str()
        .get(..16)
        .unwrap_or(message.message_id.as_str());
    headers.push("From", format!("<{}>;tag={from_tag}", payload.from));
    headers.push("To", format!("<{}>", payload.to));
    headers.push("Call-ID", format!("{}@{domain}", message.message_id));
    headers.push("CSeq", "1 MESSAGE");
    headers.push("Date", payload.date.clone());
    headers.push("Content-Type", payload.content_type.clone());
    if let Some(encoding) = &payload.content_encoding {
        headers.push("Content-Encoding", encoding.clone());
    }
    if let Some(imdn_message_id) = &payload.imdn_message_id {
        headers.push("imdn.Message-ID", imdn_message_id.clone());
    }
    if let Some(disposition) = payload
        .disposition_notification
        .as_ref()
        .filter(|_| !payload.notification_in_cpim)
    {
        headers.push("Disposition-Notification", disposition.clone());
    }
    headers.push("X-PMS-Message-ID", message.message_id.as_str());
    request.body = payload.body.clone();
    request
}

/// Whether the flow of `binding` may carry `payload`: a message that arrived over TLS (or an
/// IMDN about one) needs a TLS flow unless `config.allow_plaintext_delivery`.
pub fn may_carry(binding: &Binding, payload: &MessagePayload, config: &EdgeConfig) -> bool {
    binding.over_tls || !payload.received_over_tls || config.allow_plaintext_delivery
}

/// Whether the sender of `payload` asked to hear about `status`.
pub fn wants_notification(payload: &MessagePayload, status: ImdnStatus) -> bool {
    let Some(header) = &payload.disposition_notification else {
        return false;
    };
    let asked = parse_disposition_notification(header);
    match status {
        ImdnStatus::Delivered => asked.positive_delivery,
        ImdnStatus::Failed | ImdnStatus::Forbidden | ImdnStatus::Error => asked.negative_delivery,
        ImdnStatus::Processed | ImdnStatus::Stored => asked.processing,
        _ => false,
    }
}

/// The IMDN to queue for the sender of `message` when it reached `status`, if the sender asked
/// for one and is a local user.
pub fn notification(
    service: &SipService,
    message_id: &MessageId,
    payload: &MessagePayload,
    status: ImdnStatus,
    now: UnixMillis,
) -> Result<Option<NewMessage>, Refusal> {
    if !wants_notification(payload, status) {
        return Ok(None);
    }
    let domain = &service.config().domain;
    let Some(sender) = SipUri::parse(&payload.from)
        .ok()
        .filter(|uri| uri.host.eq_ignore_ascii_case(domain))
        .and_then(|uri| uri.user)
        .and_then(|user| UserId::parse(&user).ok())
    else {
        return Ok(None);
    };
    let state = service.mailboxes().state(GroupId::DIRECTORY);
    let Some(record): Option<UserRecord> =
        pms_mailbox::query::user(&*state, GroupId::DIRECTORY, &sender)
            .map_err(|error| Refusal::Internal(error.to_string()))?
    else {
        return Ok(None);
    };
    let original_id = payload
        .imdn_message_id
        .clone()
        .unwrap_or_else(|| message_id.to_string());
    let datetime = rfc3339(now);
    let xml = build_imdn(&original_id, &datetime, &payload.to, &payload.to, status);
    let notification_id = MessageId::from_random_bytes(rand::random());
    // Invariant: a request that asked inside CPIM gets its reports inside CPIM (RFC 5438
    // §7.1.1), which is what liblinphone matches to the message it sent.
    let (content_type, body) = if payload.notification_in_cpim {
        (
            "message/cpim",
            build_cpim_imdn(
                &payload.to,
                &payload.from,
                &datetime,
                notification_id.as_str(),
                &xml,
            ),
        )
    } else {
        ("message/imdn+xml", xml.into_bytes())
    };
    let imdn_payload = MessagePayload {
        from: payload.to.clone(),
        to: payload.from.clone(),
        content_type: content_type.into(),
        body,
        date: pms_types::time::rfc1123(now),
        imdn_message_id: Some(notification_id.to_string()),
        disposition_notification: None,
        notification_in_cpim: false,
        content_encoding: None,
        // The report reveals what happened to a message that travelled encrypted.
        received_over_tls: payload.received_over_tls,
    };
    let sealed = service.seal_for(&sender, &record, &notification_id, &imdn_payload)?;
    let dedup = pms_crypto::dedup_hash(&[
        b"notification",
        message_id.as_str().as_bytes(),
        status.element_name().as_bytes(),
    ]);
    Ok(Some(NewMessage {
        message_id: notification_id,
        recipient: sender,
        sealed,
        expires_at: now.saturating_add_ms(
            service
                .config()
                .message_expires_default_secs
                .saturating_mul(1000),
        ),
        dedup_keys: vec![DedupKey(dedup)],
    }))
}

/// Opens a queued message's sealed payload with its recipient's data key.
pub fn open_payload(
    service: &SipService,
    message: &QueuedMessage,
) -> Result<MessagePayload, Refusal> {
    let state = service.mailboxes().state(GroupId::DIRECTORY);
    let record = pms_mailbox::query::user(&*state, GroupId::DIRECTORY, &message.recipient)
        .map_err(|error| Refusal::Internal(error.to_string()))?
        .ok_or_else(|| Refusal::NotFound(format!("User {} not found", message.recipient)))?;
    let key = service
        .keyring()
        .data_key(&message.recipient, &record.wrapped_data_key)
        .map_err(|error| {
            Refusal::Internal(format!("data key of {}: {error}", message.recipient))
        })?;
    let plaintext = pms_crypto::open(
        &key,
        message.recipient.as_str(),
        message.message_id.as_str(),
        &message.sealed,
    )
    .map_err(|error| Refusal::Internal(format!("opening {}: {error}", message.message_id)))?;
    pms_mailbox::decode(pms_types::Keyspace::Messages, &plaintext)
        .map_err(|error| Refusal::Internal(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pms_types::{FlowId, NodeId};

    fn binding(over_tls: bool) -> Binding {
        Binding {
            user: UserId::parse("bob").expect("user"),
            key: "phone".into(),
            contact: "sip:bob@127.0.0.1:5999".into(),
            flow: FlowId {
                node: NodeId(1),
                incarnation: 1,
                connection: 1,
            },
            over_tls,
            registered_at: UnixMillis(1),
            expires_at: UnixMillis(2),
        }
    }

    fn payload(received_over_tls: bool) -> MessagePayload {
        MessagePayload {
            from: "sip:alice@localhost".into(),
            to: "sip:bob@localhost".into(),
            content_type: "text/plain".into(),
            body: b"hi".to_vec(),
            date: String::new(),
            imdn_message_id: None,
            disposition_notification: None,
            notification_in_cpim: false,
            content_encoding: None,
            received_over_tls,
        }
    }

    #[test]
    fn a_tls_message_needs_a_tls_flow_unless_the_policy_allows_plaintext() {
        let mut config = EdgeConfig::new("localhost", pms_types::NodeId(1), 1);
        assert!(may_carry(&binding(true), &payload(true), &config));
        assert!(!may_carry(&binding(false), &payload(true), &config));
        assert!(may_carry(&binding(false), &payload(false), &config));
        assert!(may_carry(&binding(true), &payload(false), &config));
        config.allow_plaintext_delivery = true;
        assert!(may_carry(&binding(false), &payload(true), &config));
    }
}

/// Most message ids whose accepting trace context a node keeps (oldest forgotten first): about
/// 200 bytes each, so at most about 1 MB.
pub const TRACE_CONTEXTS_MAX: usize = 4_096;

/// The trace context of the proposal that queued each recent message, on the node that
/// proposed it as leader, so that its delivery (later, from the `MailboxActor`) joins the
/// same trace as a child. In memory only: after a leader change, a restart, or once
/// [`TRACE_CONTEXTS_MAX`] later messages were queued, the delivery starts a trace of its own.
#[derive(Default)]
struct TraceContexts {
    by_message: std::collections::HashMap<MessageId, opentelemetry::Context>,
    order: std::collections::VecDeque<MessageId>,
}

fn trace_contexts() -> std::sync::MutexGuard<'static, TraceContexts> {
    static CONTEXTS: std::sync::OnceLock<std::sync::Mutex<TraceContexts>> =
        std::sync::OnceLock::new();
    CONTEXTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Keeps the current span's trace context (if it is part of a trace) for the delivery of the
/// message `command` queues. Called by the leader just before it proposes the command.
pub fn remember_trace(command: &pms_mailbox::Command) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let pms_mailbox::Command::Enqueue { message, .. } = command else {
        return;
    };
    remember_context(&message.message_id, tracing::Span::current().context());
}

/// Keeps `context` for `message_id` when it belongs to a trace, forgetting the oldest beyond
/// [`TRACE_CONTEXTS_MAX`].
fn remember_context(message_id: &MessageId, context: opentelemetry::Context) {
    use opentelemetry::trace::TraceContextExt as _;
    if !context.span().span_context().is_valid() {
        return;
    }
    let mut contexts = trace_contexts();
    if contexts
        .by_message
        .insert(message_id.clone(), context)
        .is_none()
    {
        contexts.order.push_back(message_id.clone());
    }
    while contexts.order.len() > TRACE_CONTEXTS_MAX {
        if let Some(oldest) = contexts.order.pop_front() {
            contexts.by_message.remove(&oldest);
        }
    }
}

/// Makes `span` (a delivery attempt of `message_id`) a child of the proposal that queued the
/// message, with a link to it, when this node still knows that proposal's context.
pub fn join_accepting_trace(span: &tracing::Span, message_id: &MessageId) {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let Some(context) = trace_contexts().by_message.get(message_id).cloned() else {
        return;
    };
    span.add_link(context.span().span_context().clone());
    // Fails only without the OpenTelemetry layer, where there is no trace to join.
    let _ = span.set_parent(context);
}

#[cfg(test)]
mod trace_context_tests {
    use super::*;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    };

    fn context(n: u64) -> opentelemetry::Context {
        opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(u128::from(n) + 1),
            SpanId::from(n + 1),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        ))
    }

    fn known(id: &MessageId) -> bool {
        trace_contexts().by_message.contains_key(id)
    }

    #[test]
    fn contexts_are_bounded_oldest_first_and_only_for_traces() {
        let id = |n: usize| {
            MessageId::from_random_bytes({
                let mut bytes = [0u8; 16];
                bytes[..8].copy_from_slice(&(n as u64 | 1 << 63).to_be_bytes());
                bytes
            })
        };
        remember_context(&id(0), opentelemetry::Context::new());
        assert!(!known(&id(0)), "no trace, nothing kept");
        for n in 1..=TRACE_CONTEXTS_MAX + 1 {
            remember_context(&id(n), context(n as u64));
        }
        assert!(trace_contexts().by_message.len() <= TRACE_CONTEXTS_MAX);
        assert!(!known(&id(1)), "the oldest is forgotten");
        assert!(known(&id(TRACE_CONTEXTS_MAX + 1)), "the newest is kept");
    }
}
