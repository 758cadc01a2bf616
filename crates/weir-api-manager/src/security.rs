//! The checks of a secure collection (`secure_api`), configured like `collect` with its
//! `security` policy ([`weir_core::api::security`]):
//!
//! - `check_security` holds the step's own URLs to the policy (HTTPS, allowed hosts),
//!   reads its CA bundle and pins, and says which CAs the collection will trust: nothing
//!   is sent.
//! - `check_tls` shakes hands with every host the step names (OpenSSL, as a client with
//!   the policy's minimum version and CAs) and reports what each connection really is:
//!   protocol, cipher, the verified chain with each certificate's fingerprint, and which
//!   pin matched. An old protocol, a chain that does not verify or one without a pinned
//!   certificate fails the step (`insecure`, not retried).
//!
//! The collection itself is held to the same policy by its client ([`crate::client`]):
//! every URL checked before it is requested, redirects only to allowed hosts, the minimum
//! TLS version, and only the trusted roots below.

use std::net::ToSocketAddrs;
use std::time::Duration;

use openssl::hash::MessageDigest;
use openssl::ssl::{SslConnector, SslMethod, SslVersion};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509NameRef, X509Ref, X509};
use serde_json::{json, Value};
use weir_core::api::security::{show_pin, SecuritySpec, TlsVersion};
use weir_core::api::CollectStep;

use crate::collect::Collect;
use crate::error::CollectError;

/// The roots (DER) a secured client trusts instead of the system's, if the policy says:
/// the `ca` bundle's certificates, or with `ca_pin` only the pinned ones among them (or
/// among the system's roots). `None`: the system's roots, unchanged (no CA, or pins that
/// name no root — an intermediate's or a leaf's pin is checked by `check_tls`).
pub fn trusted_roots(spec: &SecuritySpec) -> Result<Option<Vec<Vec<u8>>>, CollectError> {
    if spec.ca.is_none() && spec.ca_pin.is_empty() {
        return Ok(None);
    }
    let certs = match &spec.ca {
        Some(ca) => {
            let pem = weir_storage::read_secret(ca).map_err(|e| CollectError::Config(format!("security.ca: {e}")))?;
            let certs = X509::stack_from_pem(&pem).map_err(|e| {
                CollectError::Config(format!("security.ca ({}): not PEM certificates: {e}", ca.describe()))
            })?;
            if certs.is_empty() {
                return Err(CollectError::Config(format!("security.ca ({}) holds no certificate", ca.describe())));
            }
            certs
        }
        None => system_roots(),
    };
    let pins = spec.pins();
    let ders: Vec<(Vec<u8>, [u8; 32])> =
        certs.iter().filter_map(|c| Some((c.to_der().ok()?, fingerprint(c).ok()?))).collect();
    let pinned: Vec<Vec<u8>> = ders.iter().filter(|(_, f)| pins.contains(f)).map(|(d, _)| d.clone()).collect();
    Ok(match (spec.ca.is_some(), pinned.is_empty()) {
        (_, false) => Some(pinned),
        (true, true) => Some(ders.into_iter().map(|(d, _)| d).collect()),
        (false, true) => None,
    })
}

/// The system's root certificates (where OpenSSL looks for them), empty if none are found.
fn system_roots() -> Vec<X509> {
    let probe = openssl_probe::probe();
    probe
        .cert_file
        .and_then(|f| std::fs::read(f).ok())
        .and_then(|pem| X509::stack_from_pem(&pem).ok())
        .unwrap_or_default()
}

/// A certificate's SHA-256 fingerprint (of its DER).
fn fingerprint(c: &X509Ref) -> Result<[u8; 32], CollectError> {
    let d = c.digest(MessageDigest::sha256()).map_err(|e| CollectError::Config(format!("fingerprint: {e}")))?;
    let mut out = [0u8; 32];
    out.copy_from_slice(&d);
    Ok(out)
}

/// A certificate name as `CN=…, O=…`.
fn name(n: &X509NameRef) -> String {
    n.entries()
        .map(|e| {
            let key = e.object().nid().short_name().unwrap_or("?");
            let value = e.data().to_string().unwrap_or_default();
            format!("{key}={value}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The policy a step is held to: its own, or the defaults (HTTPS, its own hosts, TLS 1.2).
fn policy_of(step: &CollectStep) -> SecuritySpec {
    step.security.clone().unwrap_or_default()
}

/// `host:port` of every URL the step names, in order, once each.
fn endpoints(step: &CollectStep) -> Vec<(String, String, u16, bool)> {
    let mut out: Vec<(String, String, u16, bool)> = Vec::new();
    for (field, url) in step.urls() {
        let Ok(u) = url::Url::parse(url) else { continue };
        let (Some(host), Some(port)) = (u.host_str(), u.port_or_known_default()) else { continue };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        if !out.iter().any(|(_, h, p, _)| *h == host && *p == port) {
            out.push((field, host, port, u.scheme() == "https"));
        }
    }
    out
}

impl Collect {
    /// `check_security`: the policy against the step's own URLs, its CA and pins.
    pub(crate) async fn check_security(&self, step: &CollectStep) -> Result<Value, CollectError> {
        let spec = policy_of(step);
        spec.check().map_err(CollectError::Config)?;
        let policy = spec.policy(step.urls().into_iter().map(|(_, u)| u));
        let mut urls = Vec::new();
        for (field, url) in step.urls() {
            policy.check(url).map_err(|e| CollectError::Insecure(format!("api {}: {field}: {e}", step.api)))?;
            urls.push(json!({"field": field, "url": crate::client::shown(&url::Url::parse(url).map_err(|e| CollectError::Config(format!("{field}: {e}")))?, &[])}));
        }
        let spec2 = spec.clone();
        let roots = tokio::task::spawn_blocking(move || trusted_roots(&spec2))
            .await
            .map_err(|e| CollectError::Config(format!("reading the CAs: {e}")))??;
        let mut roots_shown = Vec::new();
        for der in roots.iter().flatten() {
            if let Ok(c) = X509::from_der(der) {
                roots_shown.push(json!({"subject": name(c.subject_name()), "sha256": show_pin(&fingerprint(&c)?)}));
            }
        }
        let trust = match (&spec.ca, &roots) {
            (_, None) => "the system's roots".to_string(),
            (Some(ca), Some(_)) => format!("only the CA from {}", ca.describe()),
            (None, Some(_)) => "only the pinned roots among the system's".to_string(),
        };
        let auth = step.auth.as_ref().map_or("none", |a| a.name());
        Ok(json!({
            "kind": "check_security",
            "api": step.api,
            "checks": {
                "https_only": spec.https_only,
                "allowed_hosts": policy.hosts,
                "urls": urls,
                "min_tls": spec.min_tls.as_str(),
                "trust": trust,
                "trusted_roots": roots_shown,
                "ca_pin": spec.pins().iter().map(|p| show_pin(p)).collect::<Vec<_>>(),
                // Credentials are given by reference only (the config cannot hold them).
                "auth": auth,
            },
            "passed": true,
        }))
    }

    /// `check_tls`: a handshake with every host the step names.
    pub(crate) async fn check_tls(&self, step: &CollectStep) -> Result<Value, CollectError> {
        let spec = policy_of(step);
        let timeout = step.timeout().min(Duration::from_secs(30));
        let spec2 = spec.clone();
        let roots = tokio::task::spawn_blocking(move || trusted_roots(&spec2))
            .await
            .map_err(|e| CollectError::Config(format!("reading the CAs: {e}")))??;
        let mut hosts = Vec::new();
        for (field, host, port, tls) in endpoints(step) {
            if !tls {
                return Err(CollectError::Insecure(format!(
                    "api {}: {field} {host}:{port} is plain HTTP: the connection is not encrypted",
                    step.api
                )));
            }
            let (spec, roots, api) = (spec.clone(), roots.clone(), step.api.clone());
            let report =
                tokio::task::spawn_blocking(move || handshake(&api, &host, port, &spec, roots.as_deref(), timeout))
                    .await
                    .map_err(|e| CollectError::Transient(format!("handshake: {e}")))??;
            hosts.push(json!({"field": field, "connection": report}));
        }
        Ok(
            json!({"kind": "check_tls", "api": step.api, "min_tls": spec.min_tls.as_str(), "hosts": hosts, "passed": true}),
        )
    }
}

/// One TLS handshake as a client held to `spec`, and what it showed.
fn handshake(
    api: &str,
    host: &str,
    port: u16,
    spec: &SecuritySpec,
    roots: Option<&[Vec<u8>]>,
    timeout: Duration,
) -> Result<Value, CollectError> {
    let at = format!("{host}:{port}");
    let setup = |e: openssl::error::ErrorStack| CollectError::Config(format!("api {api}: TLS setup: {e}"));
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(setup)?;
    b.set_min_proto_version(Some(match spec.min_tls {
        TlsVersion::Tls12 => SslVersion::TLS1_2,
        TlsVersion::Tls13 => SslVersion::TLS1_3,
    }))
    .map_err(setup)?;
    if let Some(roots) = roots {
        let mut store = X509StoreBuilder::new().map_err(setup)?;
        for der in roots {
            store.add_cert(X509::from_der(der).map_err(setup)?).map_err(setup)?;
        }
        b.set_cert_store(store.build());
    }
    let connector = b.build();
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| CollectError::Transient(format!("api {api}: resolving {at}: {e}")))?
        .next()
        .ok_or_else(|| CollectError::Transient(format!("api {api}: {host} has no address")))?;
    let tcp = std::net::TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| CollectError::Transient(format!("api {api}: connecting to {at}: {e}")))?;
    let _ = tcp.set_read_timeout(Some(timeout));
    let _ = tcp.set_write_timeout(Some(timeout));
    let stream = connector.connect(host, tcp).map_err(|e| {
        let why = e.to_string();
        let detail = match &e {
            openssl::ssl::HandshakeError::Failure(m) => {
                let verify = m.ssl().verify_result();
                if verify != openssl::x509::X509VerifyResult::OK {
                    format!("the certificate chain does not verify: {}", verify.error_string())
                } else {
                    format!("{why}: {}", m.error())
                }
            }
            _ => why,
        };
        let low = detail.to_ascii_lowercase();
        if low.contains("verify") || low.contains("protocol") || low.contains("version") || low.contains("alert") {
            CollectError::Insecure(format!(
                "api {api}: TLS with {at} refused (at least {}): {detail}",
                spec.min_tls.as_str()
            ))
        } else {
            CollectError::Transient(format!("api {api}: TLS with {at}: {detail}"))
        }
    })?;
    let ssl = stream.ssl();
    let mut chain = Vec::new();
    let mut matched = None;
    let pins = spec.pins();
    for c in ssl.verified_chain().into_iter().flatten() {
        let fp = fingerprint(c)?;
        if pins.contains(&fp) {
            matched = Some(show_pin(&fp));
        }
        chain.push(json!({
            "subject": name(c.subject_name()),
            "issuer": name(c.issuer_name()),
            "sha256": show_pin(&fp),
            "not_after": c.not_after().to_string(),
        }));
    }
    if !pins.is_empty() && matched.is_none() {
        return Err(CollectError::Insecure(format!(
            "api {api}: no certificate in the verified chain of {at} matches security.ca_pin ({}); the chain: {}",
            spec.ca_pin.join(", "),
            chain
                .iter()
                .map(|c| format!("{} {}", c["subject"].as_str().unwrap_or(""), c["sha256"].as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    Ok(json!({
        "host": host,
        "port": port,
        "protocol": ssl.version_str(),
        "cipher": ssl.current_cipher().map(|c| c.name()).unwrap_or(""),
        "verified": true,
        "chain": chain,
        "pin_matched": matched,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_core::api::security::parse_pin;
    use weir_core::secret::SecretRef;

    #[test]
    fn a_ca_bundle_is_trusted_alone_and_pins_narrow_it() {
        let dir = tempfile::tempdir().expect("tmp");
        // Two self-signed CAs made here with OpenSSL.
        let make = |cn: &str| {
            let key = openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).expect("rsa")).expect("key");
            let mut name = openssl::x509::X509NameBuilder::new().expect("name");
            name.append_entry_by_text("CN", cn).expect("cn");
            let name = name.build();
            let mut b = X509::builder().expect("builder");
            b.set_version(2).expect("v3");
            b.set_subject_name(&name).expect("subject");
            b.set_issuer_name(&name).expect("issuer");
            b.set_pubkey(&key).expect("pubkey");
            b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).expect("t")).expect("nb");
            b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(1).expect("t")).expect("na");
            b.sign(&key, MessageDigest::sha256()).expect("sign");
            b.build()
        };
        let (a, b) = (make("Weir Test CA A"), make("Weir Test CA B"));
        let mut pem = a.to_pem().expect("pem");
        pem.extend(b.to_pem().expect("pem"));
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, &pem).expect("write");
        let ca = Some(SecretRef::File(file.display().to_string()));
        let spec = SecuritySpec { ca: ca.clone(), ..Default::default() };
        assert_eq!(trusted_roots(&spec).expect("roots").map(|r| r.len()), Some(2));
        let pin_b = show_pin(&fingerprint(&b).expect("fp"));
        assert_eq!(parse_pin(&pin_b).expect("pin"), fingerprint(&b).expect("fp"));
        let pinned = SecuritySpec { ca, ca_pin: vec![pin_b], ..Default::default() };
        assert_eq!(trusted_roots(&pinned).expect("roots"), Some(vec![b.to_der().expect("der")]));
        assert!(trusted_roots(&SecuritySpec::default()).expect("none").is_none());
        std::fs::write(&file, "not a certificate").expect("write");
        let e = trusted_roots(&spec).expect_err("error").to_string();
        assert!(e.contains("security.ca"), "{e}");
    }
}
