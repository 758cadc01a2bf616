//! W3C Trace Context (`traceparent`), so a trace follows a job from the gRPC call that
//! submitted it through every event published about it.
//!
//! Format: `00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>`. Ids come from the
//! caller (random in the master), keeping this module free of I/O.

use std::fmt;
use std::str::FromStr;

/// A parsed `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub span_id: u64,
    /// Bit 0: sampled.
    pub flags: u8,
}

impl TraceParent {
    /// A new sampled trace; zero ids are invalid in the standard, so they are bumped.
    pub fn new(trace_id: u128, span_id: u64) -> Self {
        TraceParent { trace_id: trace_id.max(1), span_id: span_id.max(1), flags: 1 }
    }

    /// The same trace with another parent span (for a hop such as one published event).
    pub fn child(&self, span_id: u64) -> Self {
        TraceParent { span_id: span_id.max(1), ..*self }
    }

    /// The trace id in hex, as log lines and tracing backends show it.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{:032x}-{:016x}-{:02x}", self.trace_id, self.span_id, self.flags)
    }
}

impl FromStr for TraceParent {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("bad traceparent {s:?}: expected 00-<32 hex>-<16 hex>-<2 hex>");
        let parts: Vec<&str> = s.trim().split('-').collect();
        let [version, trace, span, flags] = parts.as_slice() else { return Err(bad()) };
        let hex = |p: &str, len: usize| p.len() == len && p.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if version.len() != 2 || *version == "ff" || !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
            return Err(bad());
        }
        let trace_id = u128::from_str_radix(trace, 16).map_err(|_| bad())?;
        let span_id = u64::from_str_radix(span, 16).map_err(|_| bad())?;
        let flags = u8::from_str_radix(flags, 16).map_err(|_| bad())?;
        if trace_id == 0 || span_id == 0 {
            return Err(bad());
        }
        Ok(TraceParent { trace_id, span_id, flags })
    }
}

/// A stable 64-bit id from text (FNV-1a), for span ids that must come out the same when an
/// event is published again.
pub fn stable_span_id(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_bad_headers() {
        let t: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().expect("valid");
        assert_eq!(t.to_string(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let c = t.child(7);
        assert_eq!((c.trace_id, c.span_id), (t.trace_id, 7));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(bad.parse::<TraceParent>().is_err(), "{bad:?}");
        }
        assert_eq!(stable_span_id("job/1"), stable_span_id("job/1"));
        assert_ne!(stable_span_id("job/1"), stable_span_id("job/2"));
    }
}
