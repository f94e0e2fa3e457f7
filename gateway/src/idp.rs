//! Tokens of a real identity provider: RS256 or ES256 JWTs checked against the provider's
//! public keys (a JWKS document, RFC 7517), its issuer and this API's audience.
//!
//! The key is chosen by the token's `kid` and must be one the document lists for the
//! algorithm the token names (an RSA key never verifies an ES256 token, and no token picks
//! HS256 with a public key as the secret). `role` is optional: only `"admin"` grants the admin
//! role; anything else, or none, is a buyer.

use std::collections::HashMap;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde::Deserialize;

use crate::auth::{Identity, Role, TokenError, is_valid_user_id, token_error};

/// Why a JWKS document cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// Not a JWKS document.
    #[error("not a JWKS document: {0}")]
    Parse(#[from] serde_json::Error),
    /// No key in it is an RS256 or ES256 (P-256) key with a `kid`.
    #[error("the JWKS document has no RS256 or ES256 key with a kid")]
    NoUsableKey,
}

/// The provider's keys and what its tokens must carry.
pub struct IdpKeys {
    /// Verification key and its algorithm, by `kid`.
    keys: HashMap<String, (DecodingKey, Algorithm)>,
    issuer: String,
    audience: String,
    leeway_secs: u64,
}

impl std::fmt::Debug for IdpKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdpKeys")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// The claims read from a provider's token (`exp`, `iss` and `aud` are checked by the
/// validation).
#[derive(Debug, Deserialize)]
struct ProviderClaims {
    sub: String,
    exp: u64,
    #[serde(default)]
    role: Option<String>,
}

impl IdpKeys {
    /// The RS256 and ES256 (P-256) keys with a `kid` in the JWKS document `jwks`; other keys
    /// (encryption keys, other curves and algorithms) are left out.
    pub fn from_jwks(
        jwks: &str,
        issuer: &str,
        audience: &str,
        leeway_secs: u64,
    ) -> Result<Self, JwksError> {
        let set: JwkSet = serde_json::from_str(jwks)?;
        let keys: HashMap<_, _> =
            set.keys
                .iter()
                .filter_map(|jwk| {
                    let kid = jwk.common.key_id.clone()?;
                    let algorithm = match (&jwk.algorithm, jwk.common.key_algorithm) {
                        (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => {
                            Algorithm::RS256
                        }
                        (
                            AlgorithmParameters::EllipticCurve(ec),
                            None | Some(KeyAlgorithm::ES256),
                        ) if ec.curve == EllipticCurve::P256 => Algorithm::ES256,
                        _ => return None,
                    };
                    let key = DecodingKey::from_jwk(jwk).ok()?;
                    Some((kid, (key, algorithm)))
                })
                .collect();
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey);
        }
        Ok(Self {
            keys,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            leeway_secs,
        })
    }

    /// Who `token` (with the already decoded `header`) names, and until when (seconds since
    /// the epoch, the leeway included) it may be used.
    pub fn verify(&self, token: &str, header: &Header) -> Result<(Identity, u64), TokenError> {
        let kid = header.kid.as_deref().ok_or(TokenError::BadSignature)?;
        let (key, algorithm) = self.keys.get(kid).ok_or(TokenError::BadSignature)?;
        if *algorithm != header.alg {
            return Err(TokenError::WrongAlgorithm);
        }
        let mut validation = Validation::new(*algorithm);
        validation.leeway = self.leeway_secs;
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        let claims = jsonwebtoken::decode::<ProviderClaims>(token, key, &validation)
            .map_err(|e| token_error(&e))?
            .claims;
        if !is_valid_user_id(&claims.sub) {
            return Err(TokenError::BadClaims);
        }
        let role = match claims.role.as_deref() {
            Some("admin") => Role::Admin,
            _ => Role::User,
        };
        let identity = Identity {
            user: claims.sub,
            role,
        };
        Ok((identity, claims.exp.saturating_add(self.leeway_secs)))
    }
}
