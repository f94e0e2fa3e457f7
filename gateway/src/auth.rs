//! Tokens: HS256 JWTs issued by `POST /api/login` and checked on every proxied request.
//!
//! Only HS256 is accepted: a token whose header names any other algorithm (`none`, `RS256`,
//! `HS384`, …) is refused before its signature is looked at, so an attacker cannot pick the
//! verification method. `exp`, `sub` and `iss` are required; there is no leeway on `exp`
//! (the gateway both issues and checks, so there is no clock skew to forgive).
//!
//! A buyer sends the same token with every request, so verified tokens are remembered (a
//! bounded map, [`VERIFIED_CACHE_ENTRIES`]): a repeat costs one hash look-up and an expiry
//! check instead of base64, JSON and HMAC. Only tokens whose signature and claims verified are
//! kept, so garbage cannot fill the map; `exp` is checked on every hit; the map belongs to the
//! keys, so a new secret (a configuration reload) starts with an empty one.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, header};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::Secret;
use crate::idp::IdpKeys;

/// Verified tokens remembered by one [`TokenKeys`]; beyond it the least used are forgotten
/// (and verified again when they come back).
pub const VERIFIED_CACHE_ENTRIES: usize = 100_000;

/// Shortest accepted HS256 secret, in bytes (RFC 7518 §3.2: a key of at least the hash size).
pub const MIN_SECRET_BYTES: usize = 32;

/// A caller's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A buyer.
    User,
    /// May use admin routes (stock writes).
    Admin,
}

impl Role {
    /// The role's name, as sent to upstreams in `x-user-role`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }
}

/// The claims of a gateway token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// The role.
    pub role: Role,
    /// Issuer.
    pub iss: String,
    /// Issued at (seconds since the epoch).
    pub iat: u64,
    /// Expiry (seconds since the epoch).
    pub exp: u64,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id (the token's `sub`).
    pub user: String,
    /// The role.
    pub role: Role,
}

/// Why a bearer token was refused (each is a 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// No `Authorization` header.
    #[error("a bearer token is required")]
    Missing,
    /// The header is not `Bearer <token>`, or the token is not a JWT.
    #[error("malformed token")]
    Malformed,
    /// The token names an algorithm other than HS256.
    #[error("token algorithm not accepted")]
    WrongAlgorithm,
    /// The signature does not verify.
    #[error("invalid token signature")]
    BadSignature,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// A required claim is missing or wrong (issuer, role, subject).
    #[error("invalid token claims")]
    BadClaims,
}

/// Errors creating a [`TokenKeys`] or a token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// No secret configured.
    #[error("no JWT secret: set JWT_SECRET or auth.jwt_secret")]
    NoSecret,
    /// The secret is too short.
    #[error("the JWT secret must be at least {MIN_SECRET_BYTES} bytes")]
    ShortSecret,
    /// Signing failed.
    #[error("cannot sign the token")]
    Sign(#[source] jsonwebtoken::errors::Error),
}

/// The gateway's own HS256 keys (the demo login's tokens).
struct OwnKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

/// Signing and verification keys with the validation rules: the gateway's own HS256 key (when
/// the demo login is on) and an identity provider's public keys (when configured).
pub struct TokenKeys {
    own: Option<OwnKeys>,
    idp: Option<IdpKeys>,
    issuer: String,
    ttl_secs: u64,
    /// Tokens that verified, with who they name and until when they may be used.
    verified: quick_cache::sync::Cache<String, (Identity, u64)>,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("issuer", &self.issuer)
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

impl TokenKeys {
    /// Keys for `secret`, issuing tokens from `issuer` valid for `ttl_secs`.
    pub fn new(secret: Option<&Secret>, issuer: &str, ttl_secs: u64) -> Result<Self, KeyError> {
        let secret = secret.ok_or(KeyError::NoSecret)?;
        Self::with_provider(Some(secret), None, issuer, ttl_secs)
    }

    /// Keys for `secret` (the demo login's; `None` when it is off) and the identity provider
    /// `idp`; at least one of them.
    pub fn with_provider(
        secret: Option<&Secret>,
        idp: Option<IdpKeys>,
        issuer: &str,
        ttl_secs: u64,
    ) -> Result<Self, KeyError> {
        if secret.is_none() && idp.is_none() {
            return Err(KeyError::NoSecret);
        }
        let own = secret.map(|s| own_keys(s, issuer)).transpose()?;
        Ok(Self {
            own,
            idp,
            issuer: issuer.to_owned(),
            ttl_secs,
            verified: quick_cache::sync::Cache::new(VERIFIED_CACHE_ENTRIES),
        })
    }

    /// Token lifetime in seconds.
    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// Issues a token for `user` with `role` (the demo login's; [`KeyError::NoSecret`] when
    /// the gateway has no key of its own).
    pub fn issue(&self, user: &str, role: Role) -> Result<String, KeyError> {
        let own = self.own.as_ref().ok_or(KeyError::NoSecret)?;
        let now = now_secs();
        let claims = Claims {
            sub: user.to_owned(),
            role,
            iss: self.issuer.clone(),
            iat: now,
            exp: now.saturating_add(self.ttl_secs),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &own.encoding)
            .map_err(KeyError::Sign)
    }

    /// Verifies `token` and returns who it names: from the cache of verified tokens while it
    /// has not expired, else by checking its signature and claims.
    pub fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        if let Some((identity, until)) = self.verified.get(token) {
            // jsonwebtoken's rule: expired once `exp` (plus the leeway, for a provider's
            // token) is in the past.
            return if until < now_secs() {
                self.verified.remove(token);
                Err(TokenError::Expired)
            } else {
                Ok(identity)
            };
        }
        let (identity, until) = self.check(token)?;
        self.verified
            .insert(token.to_owned(), (identity.clone(), until));
        Ok(identity)
    }

    /// Checks `token`'s signature and claims with the key its header names; who it names and
    /// until when it may be used.
    fn check(&self, token: &str) -> Result<(Identity, u64), TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| token_error(&e))?;
        match (header.alg, &self.own, &self.idp) {
            (Algorithm::HS256, Some(own), _) => check_own(own, token),
            (Algorithm::RS256 | Algorithm::ES256, _, Some(idp)) => idp.verify(token, &header),
            _ => Err(TokenError::WrongAlgorithm),
        }
    }

    /// The identity in the request's `Authorization: Bearer` header: `Ok(None)` without the
    /// header, an error for anything else that is not a valid token.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Option<Identity>, TokenError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Ok(None);
        };
        let value = value.to_str().map_err(|_| TokenError::Malformed)?;
        let (scheme, token) = value.trim().split_once(' ').ok_or(TokenError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(TokenError::Malformed);
        }
        self.verify(token.trim()).map(Some)
    }
}

/// Whether `user` is an acceptable user id: 1–64 characters of `A-Z a-z 0-9 . _ - @` (what
/// the order-service accepts in `x-user-id`).
pub fn is_valid_user_id(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 64
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
}

/// Compares two secrets in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn own_keys(secret: &Secret, issuer: &str) -> Result<OwnKeys, KeyError> {
    let secret = secret.expose().as_bytes();
    if secret.len() < MIN_SECRET_BYTES {
        return Err(KeyError::ShortSecret);
    }
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp", "sub", "iss"]);
    validation.set_issuer(&[issuer]);
    Ok(OwnKeys {
        encoding: EncodingKey::from_secret(secret),
        decoding: DecodingKey::from_secret(secret),
        validation,
    })
}

/// An HS256 token of the gateway's own.
fn check_own(own: &OwnKeys, token: &str) -> Result<(Identity, u64), TokenError> {
    let claims = jsonwebtoken::decode::<Claims>(token, &own.decoding, &own.validation)
        .map_err(|e| token_error(&e))?
        .claims;
    if !is_valid_user_id(&claims.sub) {
        return Err(TokenError::BadClaims);
    }
    let identity = Identity {
        user: claims.sub,
        role: claims.role,
    };
    Ok((identity, claims.exp))
}

/// The refusal for a token jsonwebtoken did not accept.
pub(crate) fn token_error(e: &jsonwebtoken::errors::Error) -> TokenError {
    match e.kind() {
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::MissingAlgorithm => TokenError::WrongAlgorithm,
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::MissingRequiredClaim(_)
        | ErrorKind::InvalidClaimFormat(_)
        | ErrorKind::InvalidIssuer
        | ErrorKind::InvalidAudience
        | ErrorKind::InvalidSubject
        | ErrorKind::ImmatureSignature => TokenError::BadClaims,
        _ => TokenError::Malformed,
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn keys() -> TokenKeys {
        TokenKeys::new(Some(&Secret::new(SECRET)), "iss", 60).unwrap()
    }

    fn sign(alg: Algorithm, secret: &str, claims: &Claims) -> String {
        jsonwebtoken::encode(
            &Header::new(alg),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn claims(exp_offset: i64) -> Claims {
        let now = now_secs();
        Claims {
            sub: "alice".into(),
            role: Role::User,
            iss: "iss".into(),
            iat: now,
            exp: now.saturating_add_signed(exp_offset),
        }
    }

    #[test]
    fn issued_tokens_verify() {
        let k = keys();
        let token = k.issue("alice", Role::Admin).unwrap();
        assert_eq!(
            k.verify(&token).unwrap(),
            Identity {
                user: "alice".into(),
                role: Role::Admin
            }
        );
    }

    #[test]
    fn a_remembered_token_still_expires_and_other_keys_do_not_share_it() {
        let k = keys();
        // Expires at the end of the next second: verified (and remembered) now, refused then.
        let token = sign(Algorithm::HS256, SECRET, &claims(1));
        assert!(k.verify(&token).is_ok());
        assert!(
            k.verify(&token).is_ok(),
            "the second look-up is a cache hit"
        );
        std::thread::sleep(std::time::Duration::from_millis(2100));
        assert_eq!(k.verify(&token), Err(TokenError::Expired));
        assert_eq!(k.verify(&token), Err(TokenError::Expired));
        // Keys with another secret (a reload) have their own, empty memory.
        let fresh = sign(Algorithm::HS256, SECRET, &claims(60));
        assert!(k.verify(&fresh).is_ok());
        let other = TokenKeys::new(
            Some(&Secret::new("another-secret-another-secret-xx")),
            "iss",
            60,
        )
        .unwrap();
        assert_eq!(other.verify(&fresh), Err(TokenError::BadSignature));
    }

    #[test]
    fn every_kind_of_bad_token_is_refused() {
        let k = keys();
        assert_eq!(
            k.verify(&sign(Algorithm::HS256, SECRET, &claims(-10))),
            Err(TokenError::Expired)
        );
        assert_eq!(
            k.verify(&sign(
                Algorithm::HS256,
                "another-secret-another-secret-xx",
                &claims(60)
            )),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            k.verify(&sign(Algorithm::HS384, SECRET, &claims(60))),
            Err(TokenError::WrongAlgorithm)
        );
        assert_eq!(k.verify("not-a-token"), Err(TokenError::Malformed));
        let mut wrong_issuer = claims(60);
        wrong_issuer.iss = "someone".into();
        assert_eq!(
            k.verify(&sign(Algorithm::HS256, SECRET, &wrong_issuer)),
            Err(TokenError::BadClaims)
        );
    }

    #[test]
    fn short_or_missing_secrets_are_refused() {
        assert!(matches!(
            TokenKeys::new(None, "i", 1),
            Err(KeyError::NoSecret)
        ));
        assert!(matches!(
            TokenKeys::new(Some(&Secret::new("short")), "i", 1),
            Err(KeyError::ShortSecret)
        ));
    }

    #[test]
    fn user_ids_and_secret_comparison() {
        assert!(is_valid_user_id("alice.b-c_d@x"));
        assert!(!is_valid_user_id(""));
        assert!(!is_valid_user_id("a b"));
        assert!(!is_valid_user_id(&"a".repeat(65)));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
