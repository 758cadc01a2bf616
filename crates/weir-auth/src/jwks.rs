//! Signing keys from JWKS URLs (an identity provider's `/.well-known/jwks.json`), kept by
//! `kid`. They are fetched at start, again every refresh interval, and at once when a
//! token names a `kid` not yet seen (at most once per [`Jwks::min_interval`]), so a
//! provider's rotated key is accepted without a restart and a flood of made-up key ids
//! does not become a flood of fetches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::AuthError;

/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// The keys of one or more JWKS URLs.
pub struct Jwks {
    urls: Vec<String>,
    http: reqwest::Client,
    keys: RwLock<HashMap<String, (DecodingKey, Algorithm)>>,
    /// The key set as fetched (each key's JSON, sorted): a key replaced under the same
    /// `kid` (a compromised key revoked) is a change too.
    fingerprint: RwLock<Vec<String>>,
    /// Grows each time the key set changes (verified tokens are then checked afresh).
    generation: AtomicU64,
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    min_interval: Duration,
}

impl Jwks {
    /// Key sets of `urls`; nothing is fetched until [`Jwks::refresh`].
    pub fn new(urls: Vec<String>, min_interval: Duration) -> Result<Jwks, AuthError> {
        if urls.is_empty() {
            return Err(AuthError::Config("no JWKS URL given".into()));
        }
        for u in &urls {
            if !(u.starts_with("https://") || u.starts_with("http://")) {
                return Err(AuthError::Config(format!("JWKS URL {u:?} must be http:// or https://")));
            }
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| AuthError::Config(format!("HTTP client: {e}")))?;
        Ok(Jwks {
            urls,
            http,
            keys: RwLock::new(HashMap::new()),
            fingerprint: RwLock::new(Vec::new()),
            generation: AtomicU64::new(0),
            last_fetch: tokio::sync::Mutex::new(None),
            min_interval,
        })
    }

    /// The shortest time between two fetches caused by unknown key ids.
    pub fn min_interval(&self) -> Duration {
        self.min_interval
    }

    /// Changes each time the key set does.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Fetches every URL and replaces the key set; returns how many keys it holds. On a
    /// failure the old keys stay.
    pub async fn refresh(&self) -> Result<usize, AuthError> {
        let mut last = self.last_fetch.lock().await;
        self.fetch_now(&mut last).await
    }

    async fn fetch_now(&self, last: &mut Option<Instant>) -> Result<usize, AuthError> {
        *last = Some(Instant::now());
        let mut keys = HashMap::new();
        let mut fingerprint = Vec::new();
        for url in &self.urls {
            let err = |reason: String| AuthError::Jwks { url: url.clone(), reason };
            let resp = self.http.get(url).send().await.map_err(|e| err(e.to_string()))?;
            if !resp.status().is_success() {
                return Err(err(format!("HTTP {}", resp.status())));
            }
            let body = resp.bytes().await.map_err(|e| err(e.to_string()))?;
            if body.len() > MAX_JWKS_BYTES {
                return Err(err(format!("the key set is over {MAX_JWKS_BYTES} bytes")));
            }
            let set: JwkSet = serde_json::from_slice(&body).map_err(|e| err(format!("not a JWKS document: {e}")))?;
            for jwk in &set.keys {
                if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                    continue;
                }
                let Some(alg) = algorithm(jwk) else { continue };
                let key = DecodingKey::from_jwk(jwk).map_err(|e| err(format!("key {:?}: {e}", jwk.common.key_id)))?;
                fingerprint.push(serde_json::to_string(jwk).unwrap_or_default());
                keys.insert(jwk.common.key_id.clone().unwrap_or_default(), (key, alg));
            }
        }
        let n = keys.len();
        fingerprint.sort();
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
        let changed = {
            let mut held = self.fingerprint.write().unwrap_or_else(|p| p.into_inner());
            let changed = *held != fingerprint;
            *held = fingerprint;
            changed
        };
        if changed {
            self.generation.fetch_add(1, Ordering::AcqRel);
            tracing::info!(keys = n, "JWKS key set changed");
        }
        Ok(n)
    }

    /// The key a token's `kid` names (a token without one may use the only key of a
    /// one-key set), fetching the set again if the id is new and the last fetch is older
    /// than the minimum interval.
    pub async fn key(&self, kid: Option<&str>) -> Result<(DecodingKey, Algorithm), AuthError> {
        if let Some(k) = self.lookup(kid) {
            return Ok(k);
        }
        {
            let mut last = self.last_fetch.lock().await;
            // Someone else may have fetched while this call waited for the lock.
            if let Some(k) = self.lookup(kid) {
                return Ok(k);
            }
            if last.is_none_or(|t| t.elapsed() >= self.min_interval) {
                if let Err(e) = self.fetch_now(&mut last).await {
                    tracing::warn!(error = %e, "JWKS refresh for an unknown key id failed");
                }
            }
        }
        self.lookup(kid).ok_or_else(|| AuthError::UnknownKey(kid.unwrap_or_default().to_string()))
    }

    fn lookup(&self, kid: Option<&str>) -> Option<(DecodingKey, Algorithm)> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        match kid {
            Some(k) => keys.get(k).cloned(),
            None if keys.len() == 1 => keys.values().next().cloned(),
            None => None,
        }
    }

    /// Refreshes every `every` in the background until the key set is dropped.
    pub fn spawn_refresh(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Jwks> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(jwks) = weak.upgrade() else { return };
                if let Err(e) = jwks.refresh().await {
                    tracing::warn!(error = %e, "JWKS refresh failed; the keys held are kept");
                }
            }
        })
    }
}

/// The algorithm a key signs with: its `alg`, or what its type implies.
fn algorithm(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Algorithm> {
    if let Some(a) = jwk.common.key_algorithm {
        return match a {
            KeyAlgorithm::RS256 => Some(Algorithm::RS256),
            KeyAlgorithm::RS384 => Some(Algorithm::RS384),
            KeyAlgorithm::RS512 => Some(Algorithm::RS512),
            KeyAlgorithm::PS256 => Some(Algorithm::PS256),
            KeyAlgorithm::PS384 => Some(Algorithm::PS384),
            KeyAlgorithm::PS512 => Some(Algorithm::PS512),
            KeyAlgorithm::ES256 => Some(Algorithm::ES256),
            KeyAlgorithm::ES384 => Some(Algorithm::ES384),
            KeyAlgorithm::EdDSA => Some(Algorithm::EdDSA),
            // Symmetric keys and encryption algorithms do not sign Weir's tokens.
            _ => None,
        };
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => None,
        },
        AlgorithmParameters::OctetKeyPair(_) => Some(Algorithm::EdDSA),
        AlgorithmParameters::OctetKey(_) => None,
    }
}
