//! What a secure collection demands of every connection it opens (`security` in an api
//! step's config, the `secure_api` template's `params.security`): HTTPS only, hosts from
//! an allow-list, TLS 1.2 or newer, optionally a private CA to trust instead of the
//! system's and a pinned certificate that must be in every server's verified chain.
//!
//! Pure data and checks: the master refuses a step whose own URLs break the policy at
//! submission; the API manager builds its client from it, checks every URL it is about
//! to request (a next page or a redirect elsewhere is refused), and shakes hands with
//! each host in `check_tls` to see what the connection really is.

use serde::{Deserialize, Serialize};

use crate::secret::SecretRef;

/// A `security` policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySpec {
    /// Refuse `http://` URLs, redirects to them and plain connections (default true).
    #[serde(default = "yes")]
    pub https_only: bool,
    /// The hosts every request may go to: a name (`api.shop.example`) or a subdomain
    /// pattern (`*.shop.example`, any depth, not the bare domain). Empty: the hosts the
    /// step itself names (its base URL, fallbacks' and token URLs), so a next page or a
    /// redirect to another host is refused.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// The oldest TLS version accepted: `"1.2"` (default) or `"1.3"`.
    #[serde(default)]
    pub min_tls: TlsVersion,
    /// CA certificates (PEM) to trust instead of the system's, by reference.
    #[serde(default)]
    pub ca: Option<SecretRef>,
    /// SHA-256 fingerprints of certificates (their DER), `sha256:<hex>` or hex with or
    /// without colons: every server's verified chain must hold one of them.
    #[serde(default)]
    pub ca_pin: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Default for SecuritySpec {
    fn default() -> Self {
        SecuritySpec {
            https_only: true,
            allowed_hosts: vec![],
            min_tls: TlsVersion::default(),
            ca: None,
            ca_pin: vec![],
        }
    }
}

/// The TLS versions a policy may ask for at least.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

impl TlsVersion {
    /// As reports and OpenSSL name it (`TLSv1.2`).
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "TLSv1.2",
            TlsVersion::Tls13 => "TLSv1.3",
        }
    }
}

/// Most allowed hosts and pins a policy may list.
pub const MAX_POLICY_ITEMS: usize = 64;

impl SecuritySpec {
    /// Checks the policy itself; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        for (what, n) in [("allowed_hosts", self.allowed_hosts.len()), ("ca_pin", self.ca_pin.len())] {
            if n > MAX_POLICY_ITEMS {
                return Err(format!("security.{what} lists {n}, at most {MAX_POLICY_ITEMS}"));
            }
        }
        for h in &self.allowed_hosts {
            let name = h.strip_prefix("*.").unwrap_or(h);
            let ok = !name.is_empty()
                && name.split('.').all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
            if !ok {
                return Err(format!("security.allowed_hosts entry {h:?} is not a host name or a *.domain pattern"));
            }
        }
        for p in &self.ca_pin {
            parse_pin(p).map_err(|e| format!("security.ca_pin: {e}"))?;
        }
        match &self.ca {
            Some(ca) => ca.check("security.ca"),
            None => Ok(()),
        }
    }

    /// The pins as bytes (checked by [`check`](Self::check)).
    pub fn pins(&self) -> Vec<[u8; 32]> {
        self.ca_pin.iter().filter_map(|p| parse_pin(p).ok()).collect()
    }

    /// The policy that every URL of a step is held to: `named` are the URLs the step
    /// itself gives, whose hosts are the allow-list when none is given.
    pub fn policy<'a>(&self, named: impl IntoIterator<Item = &'a str>) -> UrlPolicy {
        let hosts = if self.allowed_hosts.is_empty() {
            let mut hs: Vec<String> = named.into_iter().filter_map(host_of).collect();
            hs.sort();
            hs.dedup();
            hs
        } else {
            self.allowed_hosts.iter().map(|h| h.to_ascii_lowercase()).collect()
        };
        UrlPolicy { https_only: self.https_only, hosts }
    }
}

/// The host of an `http(s)://` URL, lower case, without port or brackets.
pub fn host_of(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host =
        if let Some(v6) = authority.strip_prefix('[') { v6.split(']').next()? } else { authority.split(':').next()? };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// Which URLs a policy lets a request go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlPolicy {
    pub https_only: bool,
    /// Host names and `*.domain` patterns, lower case.
    pub hosts: Vec<String>,
}

impl UrlPolicy {
    /// Whether `url` may be requested; the error says which rule it breaks.
    pub fn check(&self, url: &str) -> Result<(), String> {
        if self.https_only && !url.starts_with("https://") {
            return Err(format!("{} is not HTTPS (security.https_only)", shorten_url(url)));
        }
        let host = host_of(url).ok_or_else(|| format!("{} has no host", shorten_url(url)))?;
        if !self.host_allowed(&host) {
            return Err(format!(
                "host {host} is not among the allowed hosts ({}) (security.allowed_hosts)",
                self.hosts.join(", ")
            ));
        }
        Ok(())
    }

    /// Whether `host` matches a name or a `*.domain` pattern.
    pub fn host_allowed(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.hosts.iter().any(|h| match h.strip_prefix("*.") {
            Some(domain) => host.len() > domain.len() + 1 && host.ends_with(&format!(".{domain}")),
            None => *h == host,
        })
    }
}

/// A URL cut at its query, for messages (a query may hold a key).
fn shorten_url(url: &str) -> String {
    url.split(['?', '#']).next().unwrap_or(url).to_string()
}

/// A pin's 32 bytes from `sha256:<hex>`, or hex with or without colons.
pub fn parse_pin(pin: &str) -> Result<[u8; 32], String> {
    let hex: String = pin.strip_prefix("sha256:").unwrap_or(pin).chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("{pin:?} is not a SHA-256 fingerprint (64 hex digits, optionally sha256: and colons)"));
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| format!("{pin:?}: {e}"))?;
    }
    Ok(out)
}

/// A fingerprint as reports show it: `sha256:<lower-case hex>`.
pub fn show_pin(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(7 + 2 * bytes.len());
    s.push_str("sha256:");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_held_to_https_and_the_hosts() {
        let spec =
            SecuritySpec { allowed_hosts: vec!["*.shop.example".into(), "auth.example".into()], ..Default::default() };
        let p = spec.policy(["https://ignored.example"]);
        assert!(p.check("https://api.shop.example/v2?key=secret").is_ok());
        assert!(p.check("https://a.b.shop.example:8443/x").is_ok());
        assert!(p.check("https://AUTH.example/token").is_ok());
        let e = p.check("http://api.shop.example/v2?key=secret").unwrap_err();
        assert!(e.contains("not HTTPS") && !e.contains("secret"), "{e}");
        assert!(p.check("https://shop.example/").unwrap_err().contains("allowed hosts"));
        assert!(p.check("https://evil.example/?h=api.shop.example").is_err());
        assert!(p.check("https://api.shop.example.evil.example/").is_err());
        // No list: the step's own hosts.
        let own = SecuritySpec::default().policy(["https://api.shop.example/v2", "https://auth.example:8443/t"]);
        assert_eq!(own.hosts, vec!["api.shop.example", "auth.example"]);
        assert!(own.check("https://cdn.shop.example/page2").is_err());
        let plain = SecuritySpec { https_only: false, ..Default::default() }.policy(["http://127.0.0.1:8080/"]);
        assert!(plain.check("http://127.0.0.1:9/x").is_ok());
        assert_eq!(host_of("https://[::1]:8443/x").as_deref(), Some("::1"));
    }

    #[test]
    fn bad_policies_are_named() {
        let bad = |s: SecuritySpec| s.check().unwrap_err();
        assert!(bad(SecuritySpec { allowed_hosts: vec!["a b".into()], ..Default::default() }).contains("allowed_hosts"));
        assert!(bad(SecuritySpec { allowed_hosts: vec!["*.".into()], ..Default::default() }).contains("allowed_hosts"));
        assert!(bad(SecuritySpec { ca_pin: vec!["abc".into()], ..Default::default() }).contains("ca_pin"));
        assert!(bad(SecuritySpec { ca: Some(SecretRef::Env("A-B".into())), ..Default::default() }).contains("ca.env"));
        let hex = "AB:".repeat(31) + "CD";
        let s = SecuritySpec { ca_pin: vec![format!("sha256:{}", "0f".repeat(32)), hex], ..Default::default() };
        assert!(s.check().is_ok());
        assert_eq!(s.pins()[1][31], 0xcd);
        assert_eq!(show_pin(&s.pins()[0]), format!("sha256:{}", "0f".repeat(32)));
        let v: SecuritySpec = serde_json::from_value(serde_json::json!({"min_tls": "1.3"})).expect("parse");
        assert_eq!((v.min_tls, v.https_only), (TlsVersion::Tls13, true));
        assert!(serde_json::from_value::<SecuritySpec>(serde_json::json!({"min_tls": "1.1"})).is_err());
    }
}
