//! JWT bearer tokens: signature, issuer, audience, expiry and not-before checked by
//! `jsonwebtoken` with a small clock-skew leeway; the subject and the permissions claim
//! become a [`Principal`]. Tokens already verified are remembered until they expire, so a
//! busy worker's every call does not pay for an RSA or ECDSA verification.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::{AuthError, Grants, Jwks, Principal};

/// Default claim holding `namespace:role` permissions.
pub const DEFAULT_PERMISSIONS_CLAIM: &str = "permissions";
/// Default clock-skew leeway for `exp` and `nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Most verified tokens remembered at once.
const CACHE_ENTRIES: usize = 10_000;

/// What a token must say besides a good signature.
#[derive(Debug, Clone)]
pub struct TokenRules {
    /// The `iss` required, if any.
    pub issuer: Option<String>,
    /// The `aud` required, if any.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// The claim listing permissions: an array of `namespace:role` strings, or one string
    /// of them separated by spaces (as an OAuth `scope`).
    pub permissions_claim: String,
}

impl Default for TokenRules {
    fn default() -> Self {
        TokenRules {
            issuer: None,
            audience: None,
            leeway: DEFAULT_LEEWAY,
            permissions_claim: DEFAULT_PERMISSIONS_CLAIM.into(),
        }
    }
}

/// Checks bearer tokens against a shared secret (HS256/384/512) and/or the keys of JWKS
/// URLs (RS*, PS*, ES256/384, EdDSA).
pub struct Verifier {
    rules: TokenRules,
    secret: Option<DecodingKey>,
    jwks: Option<Arc<Jwks>>,
    /// SHA-256 of a token → who it named, until it expires (cleared when the keys change).
    verified: Mutex<(u64, HashMap<[u8; 32], Principal>)>,
}

impl Verifier {
    /// A verifier with a shared secret, a key set, or both; at least one is required.
    pub fn new(rules: TokenRules, secret: Option<&[u8]>, jwks: Option<Arc<Jwks>>) -> Result<Verifier, AuthError> {
        if secret.is_none() && jwks.is_none() {
            return Err(AuthError::Config("authentication needs an HS256 secret or a JWKS URL".into()));
        }
        if let Some(s) = secret {
            if s.len() < 32 {
                return Err(AuthError::Config(format!(
                    "the HS256 secret has {} bytes; give at least 32 (256 bits)",
                    s.len()
                )));
            }
        }
        Ok(Verifier {
            rules,
            secret: secret.map(DecodingKey::from_secret),
            jwks,
            verified: Mutex::new((0, HashMap::new())),
        })
    }

    /// The rules tokens are held to.
    pub fn rules(&self) -> &TokenRules {
        &self.rules
    }

    /// Who `authorization` (the header's value) names, or why it is refused.
    pub async fn verify_header(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let value = authorization.ok_or(AuthError::MissingToken)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::NotBearer)?;
        self.verify(token).await
    }

    /// Who `token` names, or why it is refused.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let generation = self.jwks.as_ref().map(|j| j.generation()).unwrap_or(0);
        let now = now_secs();
        if let Some(p) = self.remembered(&digest, generation, now) {
            return Ok(p);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(format!("malformed: {e}")))?;
        let (key, alg) = match header.alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => match &self.secret {
                Some(k) => (k.clone(), header.alg),
                None => {
                    return Err(AuthError::Invalid(format!(
                        "{:?} (shared-secret) tokens are not accepted here",
                        header.alg
                    )))
                }
            },
            _ => match &self.jwks {
                Some(j) => j.key(header.kid.as_deref()).await?,
                None => {
                    return Err(AuthError::Invalid(format!(
                        "{:?} tokens need a JWKS URL, and none is configured",
                        header.alg
                    )))
                }
            },
        };
        if alg != header.alg {
            return Err(AuthError::Invalid(format!("the token says {:?} but its key is for {alg:?}", header.alg)));
        }
        let mut v = Validation::new(alg);
        v.leeway = self.rules.leeway.as_secs();
        v.validate_nbf = true;
        v.required_spec_claims = HashSet::from(["exp".to_string(), "sub".to_string()]);
        match &self.rules.audience {
            Some(a) => v.set_audience(&[a]),
            None => v.validate_aud = false,
        }
        if let Some(i) = &self.rules.issuer {
            v.set_issuer(&[i]);
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &v).map_err(|e| self.explain(e))?;
        let principal = self.principal(&data.claims)?;
        self.remember(digest, generation, principal.clone());
        Ok(principal)
    }

    fn remembered(&self, digest: &[u8; 32], generation: u64, now: u64) -> Option<Principal> {
        let cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if cache.0 != generation {
            return None;
        }
        let p = cache.1.get(digest)?;
        // Still within its lifetime, with the same leeway a fresh check allows.
        (p.expires_at? + self.rules.leeway.as_secs() > now).then(|| p.clone())
    }

    fn remember(&self, digest: [u8; 32], generation: u64, principal: Principal) {
        let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if cache.0 != generation || cache.1.len() >= CACHE_ENTRIES {
            cache.1.clear();
            cache.0 = generation;
        }
        cache.1.insert(digest, principal);
    }

    fn explain(&self, e: jsonwebtoken::errors::Error) -> AuthError {
        let why = match e.kind() {
            ErrorKind::ExpiredSignature => "it has expired".to_string(),
            ErrorKind::ImmatureSignature => "it is not valid yet (nbf is in the future)".to_string(),
            ErrorKind::InvalidAudience => {
                format!("its audience is not {:?}", self.rules.audience.as_deref().unwrap_or_default())
            }
            ErrorKind::InvalidIssuer => {
                format!("its issuer is not {:?}", self.rules.issuer.as_deref().unwrap_or_default())
            }
            ErrorKind::InvalidSignature => "its signature does not verify".to_string(),
            ErrorKind::MissingRequiredClaim(c) => format!("it has no {c:?} claim"),
            ErrorKind::InvalidAlgorithm => "its algorithm is not its key's".to_string(),
            _ => format!("{e}"),
        };
        AuthError::Invalid(why)
    }

    fn principal(&self, claims: &Map<String, Value>) -> Result<Principal, AuthError> {
        let subject = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => s.clone(),
            _ => return Err(AuthError::Invalid("its sub claim is not a short non-empty string".into())),
        };
        let entries: Vec<&str> = match claims.get(&self.rules.permissions_claim) {
            None => Vec::new(),
            Some(Value::String(s)) => s.split_whitespace().collect(),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            Some(_) => {
                return Err(AuthError::Invalid(format!(
                    "its {:?} claim is neither a list nor a string of permissions",
                    self.rules.permissions_claim
                )))
            }
        };
        // Entries that are not `namespace:role` (another application's permissions in the
        // same claim) grant nothing here.
        let grants = Grants::parse(entries.into_iter().filter(|e| e.parse::<crate::Grant>().is_ok()))
            .map_err(AuthError::Invalid)?;
        let expires_at = claims.get("exp").and_then(Value::as_u64);
        Ok(Principal { subject, grants, expires_at })
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// Signs an HS256 token for `subject` with `grants`, valid for `ttl` — for small setups
/// with a shared secret (`weir token`, `weir dev --auth`'s own managers), where no
/// identity provider issues them.
pub fn mint(
    secret: &[u8],
    subject: &str,
    grants: &Grants,
    ttl: Duration,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<String, AuthError> {
    let now = now_secs();
    let mut claims = serde_json::json!({
        "sub": subject,
        "iat": now,
        "nbf": now,
        "exp": now + ttl.as_secs(),
        DEFAULT_PERMISSIONS_CLAIM: grants.iter().map(ToString::to_string).collect::<Vec<_>>(),
    });
    if let Some(i) = issuer {
        claims["iss"] = i.into();
    }
    if let Some(a) = audience {
        claims["aud"] = a.into();
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .map_err(|e| AuthError::Config(format!("cannot sign the token: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Role;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn token(claims: Value, secret: &[u8]) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret)).expect("encodes")
    }

    fn rules() -> TokenRules {
        TokenRules { issuer: Some("https://idp.test".into()), audience: Some("weir".into()), ..TokenRules::default() }
    }

    fn claims(extra: Value) -> Value {
        let now = now_secs();
        let mut c = json!({"sub": "ada", "iss": "https://idp.test", "aud": "weir", "exp": now + 600, "nbf": now - 10,
            "permissions": ["finance:write", "*:read", "read:users"]});
        if let (Some(c), Value::Object(e)) = (c.as_object_mut(), extra) {
            c.extend(e);
        }
        c
    }

    async fn check(v: &Verifier, t: &str) -> Result<Principal, String> {
        v.verify(t).await.map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn a_good_token_names_its_subject_and_grants() {
        let v = Verifier::new(rules(), Some(SECRET), None).expect("verifier");
        let p = check(&v, &token(claims(json!({})), SECRET)).await.expect("accepted");
        assert_eq!(p.subject, "ada");
        assert!(p.may("finance", Role::Write) && p.may("hr", Role::Read) && !p.may("hr", Role::Write));
        assert_eq!(p.grants.to_string(), "*:read,finance:write");
        // Remembered: the same answer again.
        assert_eq!(check(&v, &token(claims(json!({})), SECRET)).await.expect("again"), p);
        let scope = Verifier::new(rules(), Some(SECRET), None).expect("verifier");
        let p = check(&scope, &token(claims(json!({"permissions": "hr:admin  *:worker"})), SECRET)).await.expect("ok");
        assert!(p.may("hr", Role::Write) && p.may("x", Role::Worker));
    }

    #[tokio::test]
    async fn bad_tokens_are_refused_naming_why() {
        let v = Verifier::new(rules(), Some(SECRET), None).expect("verifier");
        let now = now_secs();
        let cases = [
            (claims(json!({"exp": now - 120})), "expired"),
            (claims(json!({"nbf": now + 600})), "not valid yet"),
            (claims(json!({"aud": "other"})), "audience"),
            (claims(json!({"iss": "https://evil.test"})), "issuer"),
            (claims(json!({"sub": ""})), "sub"),
        ];
        for (c, why) in cases {
            let e = check(&v, &token(c, SECRET)).await.expect_err(why);
            assert!(e.contains(why), "{e} should say {why}");
        }
        // Within the leeway, an expired token still passes.
        assert!(check(&v, &token(claims(json!({"exp": now - 5})), SECRET)).await.is_ok());
        let e = check(&v, &token(claims(json!({})), b"another-secret-another-secret-xx")).await.expect_err("key");
        assert!(e.contains("signature"), "{e}");
        // Tampered: the payload changed after signing.
        let good = token(claims(json!({})), SECRET);
        let parts: Vec<&str> = good.split('.').collect();
        let forged = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            claims(json!({"permissions": ["*:admin"]})).to_string(),
        );
        let e = check(&v, &format!("{}.{forged}.{}", parts[0], parts[2])).await.expect_err("tampered");
        assert!(e.contains("signature"), "{e}");
        // Unsigned: `alg: none`.
        let none =
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, r#"{"alg":"none","typ":"JWT"}"#);
        let e = check(&v, &format!("{none}.{forged}.")).await.expect_err("alg none");
        assert!(e.contains("malformed"), "{e}");
        assert!(check(&v, "not-a-jwt").await.expect_err("garbage").contains("malformed"));
        assert_eq!(v.verify_header(None).await, Err(AuthError::MissingToken));
        assert_eq!(v.verify_header(Some("Basic YTpi")).await, Err(AuthError::NotBearer));
    }

    #[tokio::test]
    async fn a_minted_token_passes_its_verifier() {
        let v = Verifier::new(rules(), Some(SECRET), None).expect("verifier");
        let g = Grants::parse(["ops:admin"]).expect("grants");
        let t = mint(SECRET, "ops-bot", &g, Duration::from_secs(60), Some("https://idp.test"), Some("weir"))
            .expect("signed");
        let p = check(&v, &t).await.expect("accepted");
        assert_eq!((p.subject.as_str(), p.grants), ("ops-bot", g));
    }

    #[test]
    fn a_short_secret_or_no_key_is_a_setting_error() {
        assert!(Verifier::new(rules(), Some(b"short"), None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
            .contains("32"));
        assert!(Verifier::new(rules(), None, None).is_err());
    }
}
