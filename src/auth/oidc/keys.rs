//! The provider's signing keys: discovery, the JWKS, and a refetch when a token names a key we
//! have not seen (the provider rotated its keys).

use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey};
use openidconnect::core::{CoreJsonWebKeySet, CoreProviderMetadata};
use openidconnect::{AsyncHttpClient, HttpRequest, HttpResponse, IssuerUrl, JsonWebKeySetUrl};

/// Discovery documents and key sets are small; a provider (or whatever answers in its place)
/// must not make us buffer more than this.
const MAX_DOCUMENT: usize = 1024 * 1024;

/// The reqwest 0.13 client, as the HTTP client openidconnect asks for (its own reqwest
/// integration is for reqwest 0.12).
#[derive(Debug, Clone)]
pub struct ProviderHttp(pub reqwest::Client);

/// Why a request to the provider failed (never with a token or a URL query in it).
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0}")]
    Request(#[from] reqwest::Error),
    #[error("the document is larger than {MAX_DOCUMENT} bytes")]
    TooLarge,
}

type HttpFuture<'c> = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

impl<'c> AsyncHttpClient<'c> for ProviderHttp {
    type Error = HttpError;
    type Future = HttpFuture<'c>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let mut response = self
                .0
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await?;
            let mut out = http::Response::builder().status(response.status());
            if let Some(headers) = out.headers_mut() {
                *headers = std::mem::take(response.headers_mut());
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                if body.len() + chunk.len() > MAX_DOCUMENT {
                    return Err(HttpError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(out
                .body(body)
                .expect("status and headers come from a valid response"))
        })
    }
}

/// One verification key of the JWKS.
#[derive(Debug)]
pub struct Key {
    kid: Option<String>,
    /// The algorithm the JWK restricts itself to, if it says.
    alg: Option<Algorithm>,
    pub decoding: DecodingKey,
}

impl Key {
    fn from_jwk(jwk: &serde_json::Value) -> Option<Self> {
        let jwk: Jwk = serde_json::from_value(jwk.clone()).ok()?;
        let for_signatures = !matches!(
            jwk.common.public_key_use,
            Some(ref u) if *u != jsonwebtoken::jwk::PublicKeyUse::Signature
        );
        let alg = match &jwk.common.key_algorithm {
            Some(a) => Some(Algorithm::from_str(&a.to_string()).ok()?),
            None => None,
        };
        let decoding = DecodingKey::from_jwk(&jwk).ok()?;
        // A symmetric JWK would let anyone holding the "public" key set mint tokens.
        let asymmetric = decoding.family() != jsonwebtoken::AlgorithmFamily::Hmac;
        (for_signatures && asymmetric).then(|| Key {
            kid: jwk.common.key_id,
            alg,
            decoding,
        })
    }

    fn fits(&self, kid: Option<&str>, alg: Algorithm) -> bool {
        (kid.is_none() || self.kid.as_deref() == kid)
            && self.decoding.family() == alg.family()
            && self.alg.is_none_or(|a| a == alg)
    }
}

/// What discovery taught us: where the keys are, which algorithms to accept, the keys.
#[derive(Debug)]
pub struct Provider {
    jwks_uri: JsonWebKeySetUrl,
    /// The announced ID-token algorithms that are asymmetric (never `none`, never HS*).
    pub algorithms: Vec<Algorithm>,
    keys: Vec<Arc<Key>>,
    /// Bumped at every successful fetch, so that requests that waited for a refetch know one
    /// happened.
    generation: u64,
}

impl Provider {
    /// The key for a token's `kid` and `alg`. Without a `kid` only an unambiguous key will do.
    pub fn key(&self, kid: Option<&str>, alg: Algorithm) -> Option<Arc<Key>> {
        let mut fitting = self.keys.iter().filter(|k| k.fits(kid, alg));
        let key = fitting.next()?;
        (kid.is_some() || fitting.next().is_none()).then(|| key.clone())
    }

    /// How many verification keys the provider publishes, for the log.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }
}

/// The key cache of one provider.
#[derive(Debug)]
pub struct Keys {
    issuer: IssuerUrl,
    http: ProviderHttp,
    current: ArcSwapOption<Provider>,
    generations: AtomicU64,
    /// When the last refetch for an unknown `kid` started; the lock makes refetches single-flight.
    last_refetch: tokio::sync::Mutex<Option<Instant>>,
    refetch_interval: Duration,
}

impl Keys {
    /// An empty key cache for `issuer`; an unknown `kid` refetches the JWKS at most once per
    /// `refetch_interval`.
    pub fn new(issuer: IssuerUrl, http: ProviderHttp, refetch_interval: Duration) -> Self {
        Self {
            issuer,
            http,
            current: ArcSwapOption::empty(),
            generations: AtomicU64::new(0),
            last_refetch: tokio::sync::Mutex::new(None),
            refetch_interval,
        }
    }

    /// The issuer URL, for logs.
    pub fn issuer(&self) -> &str {
        self.issuer.as_str()
    }

    /// Takes over the keys of the configuration being replaced, when it trusted the same issuer:
    /// a reload must not make ucgate unready while it discovers the provider again.
    pub fn adopt(&self, old: &Keys) {
        if self.issuer != old.issuer {
            return;
        }
        if let Some(provider) = old.current() {
            self.generations
                .store(old.generations.load(Ordering::Relaxed), Ordering::Relaxed);
            self.current.store(Some(provider));
        }
    }

    /// The provider as last discovered; `None` before the first discovery succeeds.
    pub fn current(&self) -> Option<Arc<Provider>> {
        self.current.load_full()
    }

    /// Discovery (which also fetches the JWKS, and checks that the document names our issuer).
    pub async fn discover(&self) -> Result<Arc<Provider>, String> {
        let metadata = CoreProviderMetadata::discover_async(self.issuer.clone(), &self.http)
            .await
            .map_err(|e| error_chain(&e))?;
        let algorithms = asymmetric_algorithms(&metadata);
        if algorithms.is_empty() {
            return Err("the provider announces no asymmetric ID token algorithm".into());
        }
        let provider = self.store(metadata.jwks_uri().clone(), algorithms, metadata.jwks());
        Ok(provider)
    }

    /// After a token named a key we do not have: fetch the JWKS again, at most once per
    /// `refetch_interval`, one fetch for all the requests that wait. `seen` is the generation the
    /// caller looked in. On failure the keys we have keep serving.
    pub async fn refetch(&self, seen: &Provider) -> Option<Arc<Provider>> {
        let mut last = self.last_refetch.lock().await;
        let current = self.current()?;
        if current.generation != seen.generation {
            return Some(current);
        }
        if last.is_some_and(|t| t.elapsed() < self.refetch_interval) {
            tracing::debug!(
                issuer = self.issuer(),
                "unknown key id; refetch rate-limited"
            );
            return None;
        }
        *last = Some(Instant::now());
        tracing::info!(
            issuer = self.issuer(),
            jwks_uri = current.jwks_uri.as_str(),
            "unknown key id; fetching the provider's keys again"
        );
        match CoreJsonWebKeySet::fetch_async(&current.jwks_uri, &self.http).await {
            Ok(jwks) => {
                let provider =
                    self.store(current.jwks_uri.clone(), current.algorithms.clone(), &jwks);
                tracing::info!(
                    issuer = self.issuer(),
                    keys = provider.key_count(),
                    "provider keys refreshed"
                );
                Some(provider)
            }
            Err(e) => {
                tracing::warn!(
                    issuer = self.issuer(),
                    error = %error_chain(&e),
                    "cannot fetch the provider's keys; the previous ones keep serving"
                );
                None
            }
        }
    }

    fn store(
        &self,
        jwks_uri: JsonWebKeySetUrl,
        algorithms: Vec<Algorithm>,
        jwks: &CoreJsonWebKeySet,
    ) -> Arc<Provider> {
        let provider = Arc::new(Provider {
            jwks_uri,
            algorithms,
            keys: usable_keys(jwks),
            generation: self.generations.fetch_add(1, Ordering::Relaxed) + 1,
        });
        self.current.store(Some(provider.clone()));
        provider
    }
}

fn asymmetric_algorithms(metadata: &CoreProviderMetadata) -> Vec<Algorithm> {
    metadata
        .id_token_signing_alg_values_supported()
        .iter()
        .filter_map(|a| serde_json::to_value(a).ok())
        .filter_map(|v| Algorithm::from_str(v.as_str()?).ok())
        .filter(|a| a.family() != jsonwebtoken::AlgorithmFamily::Hmac)
        .collect()
}

/// The keys jsonwebtoken can use; others (encryption keys, unknown types) are skipped, as
/// RFC 7517 asks.
fn usable_keys(jwks: &CoreJsonWebKeySet) -> Vec<Arc<Key>> {
    jwks.keys()
        .iter()
        .filter_map(|k| serde_json::to_value(k).ok())
        .filter_map(|k| Key::from_jwk(&k))
        .map(Arc::new)
        .collect()
}

/// An error with its causes, for logs ("connection refused" is usually in a source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        // Some errors already print their source in their own text.
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwks(keys: serde_json::Value) -> CoreJsonWebKeySet {
        serde_json::from_value(serde_json::json!({ "keys": keys })).unwrap()
    }

    const N: &str = "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw";

    #[test]
    fn keeps_asymmetric_signature_keys_only() {
        let set = jwks(serde_json::json!([
            { "kty": "RSA", "kid": "sig", "use": "sig", "alg": "RS256", "n": N, "e": "AQAB" },
            { "kty": "RSA", "kid": "enc", "use": "enc", "n": N, "e": "AQAB" },
            { "kty": "oct", "kid": "hmac", "k": "c2VjcmV0" },
            { "kty": "weird", "kid": "unknown" },
        ]));
        let keys = usable_keys(&set);
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("sig"));
        assert!(keys[0].fits(Some("sig"), Algorithm::RS256));
        assert!(
            !keys[0].fits(Some("sig"), Algorithm::RS384),
            "the JWK's alg binds"
        );
        assert!(!keys[0].fits(Some("sig"), Algorithm::HS256));
        assert!(!keys[0].fits(Some("other"), Algorithm::RS256));
    }

    #[test]
    fn a_token_without_kid_needs_an_unambiguous_key() {
        let one = jwks(serde_json::json!([{ "kty": "RSA", "kid": "a", "n": N, "e": "AQAB" }]));
        let two = jwks(serde_json::json!([
            { "kty": "RSA", "kid": "a", "n": N, "e": "AQAB" },
            { "kty": "RSA", "kid": "b", "n": N, "e": "AQAB" },
        ]));
        let provider = |set: &CoreJsonWebKeySet| Provider {
            jwks_uri: JsonWebKeySetUrl::new("https://idp.test/jwks".into()).unwrap(),
            algorithms: vec![Algorithm::RS256],
            keys: usable_keys(set),
            generation: 1,
        };
        assert!(provider(&one).key(None, Algorithm::RS256).is_some());
        assert!(provider(&two).key(None, Algorithm::RS256).is_none());
        assert!(provider(&two).key(Some("b"), Algorithm::RS256).is_some());
        assert!(provider(&two).key(Some("b"), Algorithm::ES256).is_none());
    }
}
