//! The engine benchmark with security on: JWT bearer tokens (HS256) on every call and
//! mTLS between the managers, the benchmark's client and the master, with certificates a
//! test CA made here signed — what a deployment runs with, measured against the same run
//! with both off.

use std::path::{Path, PathBuf};

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{BasicConstraints, ExtendedKeyUsage, SubjectAlternativeName};
use openssl::x509::{X509NameBuilder, X509};
use weir_runtime::auth::Credentials;
use weir_runtime::security::{ClientSecurity, TlsArgs};

/// The shared secret tokens are signed with.
const SECRET: &str = "weir-bench-shared-secret-of-32-bytes!!";

/// A CA, the master's certificate, a client certificate (managers and the benchmark's
/// client share it), and the tokens.
pub(crate) struct Secure {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
    /// Write and admin everywhere, and the worker role for the readiness probe.
    pub(crate) client_token: String,
    pub(crate) worker_token: String,
}

fn key() -> anyhow::Result<PKey<Private>> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    Ok(PKey::from_ec_key(EcKey::generate(&group)?)?)
}

fn issue(
    cn: &str,
    serial: u32,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    server: bool,
) -> anyhow::Result<X509> {
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_text("CN", cn)?;
    let name = name.build();
    let mut b = X509::builder()?;
    b.set_version(2)?;
    let serial = BigNum::from_u32(serial)?.to_asn1_integer()?;
    let (from, until) = (Asn1Time::days_from_now(0)?, Asn1Time::days_from_now(2)?);
    b.set_serial_number(&serial)?;
    b.set_not_before(&from)?;
    b.set_not_after(&until)?;
    b.set_subject_name(&name)?;
    b.set_pubkey(key)?;
    match issuer {
        None => {
            b.set_issuer_name(&name)?;
            b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
            b.sign(key, MessageDigest::sha256())?;
        }
        Some((ca, ca_key)) => {
            b.set_issuer_name(ca.subject_name())?;
            if server {
                let san = SubjectAlternativeName::new().ip("127.0.0.1").build(&b.x509v3_context(Some(ca), None))?;
                b.append_extension(san)?;
            } else {
                b.append_extension(ExtendedKeyUsage::new().client_auth().build()?)?;
            }
            b.sign(ca_key, MessageDigest::sha256())?;
        }
    }
    Ok(b.build())
}

fn write(dir: &Path, name: &str, bytes: Vec<u8>) -> anyhow::Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, bytes)?;
    Ok(p)
}

impl Secure {
    pub(crate) fn new() -> anyhow::Result<Secure> {
        let dir = tempfile::tempdir()?;
        let (ca_key, server_key, client_key) = (key()?, key()?, key()?);
        let ca = issue("Weir Bench CA", 1, &ca_key, None, false)?;
        let server = issue("127.0.0.1", 2, &server_key, Some((&ca, &ca_key)), true)?;
        let client = issue("weir-bench", 3, &client_key, Some((&ca, &ca_key)), false)?;
        let d = dir.path();
        let grants = |g: &[&str]| weir_auth::Grants::parse(g.iter().copied()).map_err(anyhow::Error::msg);
        let ttl = std::time::Duration::from_secs(24 * 3600);
        let token = |sub: &str, g: &[&str]| -> anyhow::Result<String> {
            Ok(weir_auth::token::mint(SECRET.as_bytes(), sub, &grants(g)?, ttl, None, None)?)
        };
        Ok(Secure {
            ca: write(d, "ca.pem", ca.to_pem()?)?,
            server: (
                write(d, "server.pem", server.to_pem()?)?,
                write(d, "server.key", server_key.private_key_to_pem_pkcs8()?)?,
            ),
            client: (
                write(d, "client.pem", client.to_pem()?)?,
                write(d, "client.key", client_key.private_key_to_pem_pkcs8()?)?,
            ),
            client_token: token("weir-bench", &["*:admin", "*:worker"])?,
            worker_token: token("weir-bench-manager", &["*:worker"])?,
            _dir: dir,
        })
    }

    /// The master's settings: tokens checked, mTLS, no submission limit (the benchmark
    /// submits as fast as it can).
    pub(crate) fn master_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("WEIR_AUTH", "true".into()),
            ("WEIR_AUTH_HS256_SECRET", SECRET.into()),
            ("WEIR_SUBMISSION_LIMIT", "off".into()),
            ("WEIR_TLS_CERT", self.server.0.display().to_string()),
            ("WEIR_TLS_KEY", self.server.1.display().to_string()),
            ("WEIR_TLS_CA", self.ca.display().to_string()),
        ]
    }

    /// A manager's settings: its token and its client certificate.
    pub(crate) fn manager_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("WEIR_TOKEN", self.worker_token.clone()),
            ("WEIR_TLS_CERT", self.client.0.display().to_string()),
            ("WEIR_TLS_KEY", self.client.1.display().to_string()),
            ("WEIR_TLS_CA", self.ca.display().to_string()),
        ]
    }

    /// The benchmark client's token and certificate.
    pub(crate) fn client(&self) -> anyhow::Result<ClientSecurity> {
        let tls = TlsArgs {
            tls_cert: Some(self.client.0.clone()),
            tls_key: Some(self.client.1.clone()),
            tls_ca: Some(self.ca.clone()),
        };
        Ok(ClientSecurity {
            credentials: Credentials::token(&self.client_token).map_err(anyhow::Error::msg)?,
            tls: tls.client()?,
        })
    }
}
