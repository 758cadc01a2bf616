//! The audit trail: who did, or was refused, what and when. A record is written in the
//! store's commit of the change it reports (append-only, `weir_audit`), published on
//! `weir.audit` through the outbox, and kept for a retention period (90 days by default).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::OutboxMessage;
use crate::Millis;

/// Default days an audit record is kept.
pub const DEFAULT_RETENTION_DAYS: u32 = 90;
/// Longest message kept in a record.
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// Longest subject, namespace, action, target, code, trace id or peer kept in a record.
pub const MAX_FIELD_BYTES: usize = 256;
/// The CloudEvent type of an audit record on `weir.audit`.
pub const RECORDED: &str = "dev.weir.audit.recorded";

/// What became of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Done as asked.
    Ok,
    /// No valid token, or no client certificate.
    Unauthenticated,
    /// The caller lacks the role, or the target is outside its namespaces.
    Denied,
    /// Bad input, or a path or host outside the sandbox.
    Invalid,
    /// Over the caller's submission limit.
    Limited,
    /// Refused for the target's state, or failed inside.
    Failed,
}

impl Outcome {
    /// Every outcome, in a stable order.
    pub const ALL: [Outcome; 6] =
        [Outcome::Ok, Outcome::Unauthenticated, Outcome::Denied, Outcome::Invalid, Outcome::Limited, Outcome::Failed];

    /// The name in the store, on the wire and in `weir audit --outcome`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::Denied => "denied",
            Outcome::Invalid => "invalid",
            Outcome::Limited => "limited",
            Outcome::Failed => "failed",
        }
    }
}

impl std::str::FromStr for Outcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Outcome, String> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s).ok_or_else(|| {
            format!("unknown outcome {s:?} (known: ok, unauthenticated, denied, invalid, limited, failed)")
        })
    }
}

/// One audited call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// UUIDv7: unique, and sorts by time.
    pub id: Uuid,
    pub at_ms: Millis,
    /// The token's subject (`anonymous` with authentication off, empty when no token was valid).
    pub subject: String,
    /// The namespace acted on, when known.
    pub namespace: String,
    /// The call, e.g. `SubmitJob`, `CancelJob`, `AcquireTasks`.
    pub action: String,
    /// What it named: a job id, a job name.
    pub target: String,
    pub outcome: Outcome,
    /// The gRPC status code's name (`OK`, `PERMISSION_DENIED` …).
    pub code: String,
    /// Why it was refused (empty when done).
    pub message: String,
    /// The W3C trace id of the call, when it had one.
    pub trace_id: String,
    /// The caller's address.
    pub peer: String,
}

impl AuditRecord {
    /// A record of `action` by `subject` now; the caller fills in the rest.
    pub fn new(at_ms: Millis, subject: &str, action: &str) -> AuditRecord {
        AuditRecord {
            id: Uuid::now_v7(),
            at_ms,
            subject: subject.to_string(),
            namespace: String::new(),
            action: action.to_string(),
            target: String::new(),
            outcome: Outcome::Ok,
            code: "OK".into(),
            message: String::new(),
            trace_id: String::new(),
            peer: String::new(),
        }
    }

    /// The record with an outcome, a code and a message (cut to [`MAX_MESSAGE_BYTES`]).
    pub fn with_outcome(mut self, outcome: Outcome, code: &str, message: &str) -> AuditRecord {
        self.outcome = outcome;
        self.code = code.to_string();
        self.message = crate::text::shorten(message.to_string(), MAX_MESSAGE_BYTES);
        self
    }

    /// The record with every field fit for the store: control characters (a NUL, which
    /// PostgreSQL refuses in text, would fail the whole commit it rides in) replaced, and
    /// each field cut short — they come from callers, valid or not.
    pub fn cleaned(mut self) -> AuditRecord {
        let clean = |s: &mut String, max: usize| {
            if s.chars().any(char::is_control) {
                *s = s.chars().map(|c| if c.is_control() { '\u{fffd}' } else { c }).collect();
            }
            if s.len() > max {
                *s = crate::text::shorten(std::mem::take(s), max);
            }
        };
        for f in [&mut self.subject, &mut self.namespace, &mut self.action, &mut self.target, &mut self.code] {
            clean(f, MAX_FIELD_BYTES);
        }
        clean(&mut self.trace_id, MAX_FIELD_BYTES);
        clean(&mut self.peer, MAX_FIELD_BYTES);
        clean(&mut self.message, MAX_MESSAGE_BYTES);
        self
    }

    /// The record as an outbox message for `weir.audit`, keyed by subject so one caller's
    /// records stay in order.
    pub fn message(&self) -> OutboxMessage {
        OutboxMessage {
            topic: crate::events::topic::AUDIT.to_string(),
            key: self.subject.clone(),
            kind: RECORDED.to_string(),
            subject: self.id.to_string(),
            time_ms: self.at_ms,
            data: serde_json::to_value(self).unwrap_or_default(),
        }
    }
}

/// Which records `weir audit` shows; empty fields match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub subject: Option<String>,
    pub namespace: Option<String>,
    pub action: Option<String>,
    pub outcome: Option<Outcome>,
    /// Only records at or after this time.
    pub since_ms: Option<Millis>,
    /// Only records older than this id (the page cursor; newest first).
    pub before: Option<Uuid>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_becomes_an_audit_message() {
        let r = AuditRecord::new(1_000, "ada", "SubmitJob").with_outcome(
            Outcome::Denied,
            "PERMISSION_DENIED",
            &"x".repeat(5000),
        );
        assert!(r.message.len() <= MAX_MESSAGE_BYTES + '…'.len_utf8());
        let m = r.message();
        assert_eq!((m.topic.as_str(), m.key.as_str(), m.kind.as_str()), ("weir.audit", "ada", RECORDED));
        assert_eq!(m.data["outcome"], "denied");
        let mut bad = AuditRecord::new(1, "ada\0", "SubmitJob");
        bad.target = "x".repeat(10_000);
        bad.message = "malformed: unknown variant `\0`".into();
        let c = bad.cleaned();
        assert!(!c.subject.contains('\0') && !c.message.contains('\0'));
        assert!(c.target.len() <= MAX_FIELD_BYTES + '…'.len_utf8());
        for o in Outcome::ALL {
            assert_eq!(o.as_str().parse::<Outcome>(), Ok(o));
        }
        assert!("maybe".parse::<Outcome>().is_err());
    }
}
