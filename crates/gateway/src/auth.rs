//! Authentication of client connections: a JWT on connect (`?token=` or
//! `Authorization: Bearer`), HS256 with a shared secret or RS256/ES256 with a
//! public key. The token's `sub` is the user every message is bound to.

use std::path::Path;

use axum::http::{HeaderMap, header};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Serialize;

use crate::protocol::UserId;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;

/// Shortest accepted HS256 secret: below this a secret can be brute-forced
/// from one captured token.
pub const MIN_SECRET_BYTES: usize = 16;

/// Why a token was refused (the client gets 401 / close 1008).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token in the query or the Authorization header.
    #[error("missing token (?token= or Authorization: Bearer)")]
    Missing,
    /// Signature, algorithm, expiry, issuer or audience check failed; the
    /// text is for the client (`token expired`), never the parser's own.
    #[error("{0}")]
    Invalid(String),
    /// `sub` is not a valid user id.
    #[error("token sub must match ^[A-Za-z0-9_-]{{1,64}}$")]
    BadSubject,
}

/// The auth configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// Both kinds of key were given.
    #[error("JWT_SECRET and JWT_PUBLIC_KEY are both set: choose one")]
    BothKeys,
    /// The public key file could not be read.
    #[error("cannot read JWT_PUBLIC_KEY {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The public key is neither an RSA nor an EC (P-256) PEM key.
    #[error("JWT_PUBLIC_KEY {0} is neither an RSA nor an EC P-256 public key in PEM")]
    BadKey(String),
    /// The secret is unusable.
    #[error("JWT_SECRET: {0}")]
    BadSecret(String),
    /// Production requires auth.
    #[error("GATEWAY_ENV=production requires JWT_SECRET or JWT_PUBLIC_KEY")]
    ProductionWithoutKey,
}

/// A verified token's claims, kept as JSON: jsonwebtoken checks `exp`,
/// `nbf`, `iss`, `aud` (strings or arrays), and a claim missing from a
/// fixed struct would fail as a parse error instead of by its name.
type Claims = serde_json::Map<String, serde_json::Value>;

/// Claims the gateway may require, in the order a refusal names them.
const SPEC_CLAIMS: [&str; 4] = ["exp", "sub", "iss", "aud"];

/// What `gentoken` signs.
#[derive(Debug, Serialize)]
struct NewClaims<'a> {
    sub: &'a str,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// Whether `secret` is one the gateway accepts as JWT_SECRET; `gentoken`
/// applies the same rule, so it never signs what the gateway would refuse.
pub fn check_secret(secret: &str) -> Result<(), AuthConfigError> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(AuthConfigError::BadSecret(format!("must be at least {MIN_SECRET_BYTES} bytes")));
    }
    Ok(())
}

/// What a client is told about a refused token: the claim or check that
/// failed, in words, without jsonwebtoken's internals.
fn describe(e: &jsonwebtoken::errors::Error, token: &str, required: &[&str]) -> String {
    match e.kind() {
        // jsonwebtoken checks required claims in a set's order: name the
        // first missing one in a fixed order. The signature was verified
        // before this error, so reading the claims is safe.
        ErrorKind::MissingRequiredClaim(c) => {
            let claims = jsonwebtoken::dangerous::insecure_decode_claims::<Claims>(token).ok();
            let first = claims.and_then(|cl| {
                SPEC_CLAIMS.into_iter().find(|k| required.contains(k) && cl.get(*k).is_none_or(|v| v.is_null()))
            });
            format!("token missing claim `{}`", first.unwrap_or(c))
        }
        ErrorKind::ExpiredSignature => "token expired".into(),
        ErrorKind::ImmatureSignature => "token not yet valid (`nbf` is in the future)".into(),
        ErrorKind::InvalidSignature => "token signature invalid".into(),
        ErrorKind::InvalidClaimFormat(c) => format!("token claim `{c}` has the wrong type"),
        ErrorKind::InvalidIssuer => "token issuer (`iss`) not accepted".into(),
        ErrorKind::InvalidAudience => "token audience (`aud`) not accepted".into(),
        ErrorKind::InvalidSubject => "token subject (`sub`) not accepted".into(),
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "token algorithm not accepted".into()
        }
        _ => "token malformed (not a signed JWT)".into(),
    }
}

/// Verifies tokens; `None` inside means auth is off.
#[derive(Clone)]
pub struct Authenticator {
    verify: Option<(DecodingKey, Validation)>,
    /// The claims `verify` requires (for naming a missing one).
    required: Vec<&'static str>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("enabled", &self.enabled()).finish()
    }
}

impl Authenticator {
    /// Auth off: every connection is anonymous.
    pub fn disabled() -> Self {
        Self { verify: None, required: Vec::new() }
    }

    /// Builds the verifier from the configured key (at most one).
    pub fn from_config(
        secret: Option<&str>,
        public_key: Option<&Path>,
        issuer: Option<&str>,
        audience: Option<&str>,
        production: bool,
    ) -> Result<Self, AuthConfigError> {
        let (key, alg) = match (secret, public_key) {
            (Some(_), Some(_)) => return Err(AuthConfigError::BothKeys),
            (None, None) if production => return Err(AuthConfigError::ProductionWithoutKey),
            (None, None) => return Ok(Self::disabled()),
            (Some(s), None) => {
                check_secret(s)?;
                (
                    DecodingKey::from_secret(s.as_bytes()).map_err(|e| AuthConfigError::BadSecret(e.to_string()))?,
                    Algorithm::HS256,
                )
            }
            (None, Some(path)) => {
                let shown = path.display().to_string();
                let pem =
                    std::fs::read(path).map_err(|source| AuthConfigError::Read { path: shown.clone(), source })?;
                if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                    (k, Algorithm::RS256)
                } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                    (k, Algorithm::ES256)
                } else {
                    return Err(AuthConfigError::BadKey(shown));
                }
            }
        };
        // One algorithm only: a token signed with anything else ("none", HS
        // with an RSA key's bytes) is refused.
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        // A configured issuer or audience is required, not only checked when
        // present: jsonwebtoken skips the check of an absent claim.
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Ok(Self { verify: Some((key, validation)), required })
    }

    /// Whether tokens are required.
    pub fn enabled(&self) -> bool {
        self.verify.is_some()
    }

    /// Checks a token (`Ok(None)` when auth is off) and says until when it
    /// is good: a connection lives until then (plus the leeway), unless it
    /// sends a fresh token.
    pub fn verify(&self, token: Option<&str>) -> Result<Option<Verified>, AuthError> {
        let Some((key, validation)) = &self.verify else { return Ok(None) };
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        let data = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map_err(|e| AuthError::Invalid(describe(&e, token, &self.required)))?;
        let sub = data.claims.get("sub").and_then(serde_json::Value::as_str).ok_or(AuthError::BadSubject)?;
        let user = UserId::parse(sub).map_err(|_| AuthError::BadSubject)?;
        // `exp` is a required claim, so validation saw a number here.
        let exp = data.claims.get("exp").and_then(serde_json::Value::as_u64).unwrap_or(0);
        let good_until = exp.saturating_add(validation.leeway);
        Ok(Some(Verified { user, expires_at: exp, good_until }))
    }

    /// Sets the clock skew tolerated on `exp`/`nbf` (default [`LEEWAY_SECS`]).
    #[must_use]
    pub fn with_leeway(mut self, secs: u64) -> Self {
        if let Some((_, validation)) = &mut self.verify {
            validation.leeway = secs;
        }
        self
    }
}

/// A token that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Its `sub`.
    pub user: UserId,
    /// Its `exp`, in seconds since the Unix epoch.
    pub expires_at: u64,
    /// `exp` plus the leeway: the last second the gateway accepts it.
    pub good_until: u64,
}

/// Signs an HS256 development token for `sub`, valid for `ttl_secs`.
pub fn dev_token(secret: &str, sub: &str, ttl_secs: u64) -> Result<String, AuthConfigError> {
    dev_token_for(secret, sub, ttl_secs, None, None)
}

/// Signs an HS256 development token for `sub`, valid for `ttl_secs`, with
/// the `iss` and `aud` a gateway configured with JWT_ISSUER / JWT_AUDIENCE
/// requires. Refuses a secret the gateway would refuse.
pub fn dev_token_for(
    secret: &str,
    sub: &str,
    ttl_secs: u64,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<String, AuthConfigError> {
    check_secret(secret)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let key = EncodingKey::from_secret(secret.as_bytes()).map_err(|e| AuthConfigError::BadSecret(e.to_string()))?;
    let claims = NewClaims { sub, exp: now.saturating_add(ttl_secs), iss: issuer, aud: audience };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
        .map_err(|e| AuthConfigError::BadSecret(e.to_string()))
}

/// The credential of an `Authorization: Bearer <token>` value. The scheme
/// is case-insensitive (RFC 7235 §2.1), so `bearer` and `BEARER` work too;
/// an empty token is no token.
pub fn bearer(authorization: &str) -> Option<&str> {
    let value = authorization.trim_start();
    let split = value.find([' ', '\t'])?;
    let (scheme, rest) = value.split_at(split);
    let token = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The bearer token of a request's `Authorization` header, for every
/// entry point (client JWTs, ingest, admin) alike.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer)
}

/// Finds the token in a query string (`token=`) or an Authorization header.
pub fn token_from(query: Option<&str>, authorization: Option<&str>) -> Option<String> {
    if let Some(h) = authorization.and_then(bearer) {
        return Some(h.to_owned());
    }
    query?.split('&').find_map(|pair| pair.strip_prefix("token=")).map(percent_decode)
}

/// JWTs are URL-safe base64 with dots; decode `%XX` anyway for clients that
/// escape everything.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123";

    #[test]
    fn hs256_round_trip_and_refusals() {
        let auth = Authenticator::from_config(Some(SECRET), None, None, None, false).unwrap_or_else(|e| panic!("{e}"));
        let token = dev_token(SECRET, "u1", 60).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(auth.verify(Some(&token)).ok().flatten().map(|v| v.user.to_string()), Some("u1".into()));
        assert_eq!(auth.verify(None), Err(AuthError::Missing));
        let other = dev_token("another-secret-of-16+", "u1", 60).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(auth.verify(Some(&other)), Err(AuthError::Invalid(_))));
        let bad_sub = dev_token(SECRET, "u.1", 60).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(auth.verify(Some(&bad_sub)), Err(AuthError::BadSubject));
    }

    #[test]
    fn config_rules() {
        assert!(matches!(
            Authenticator::from_config(Some(SECRET), Some(Path::new("/x")), None, None, false),
            Err(AuthConfigError::BothKeys)
        ));
        assert!(matches!(
            Authenticator::from_config(None, None, None, None, true),
            Err(AuthConfigError::ProductionWithoutKey)
        ));
        assert!(!Authenticator::from_config(None, None, None, None, false).map(|a| a.enabled()).unwrap_or(true));
    }

    #[test]
    fn token_is_found_in_query_or_header() {
        assert_eq!(token_from(Some("a=1&token=abc.def"), None).as_deref(), Some("abc.def"));
        assert_eq!(token_from(Some("token=a%2Eb"), None).as_deref(), Some("a.b"));
        assert_eq!(token_from(None, Some("Bearer xyz")).as_deref(), Some("xyz"));
        assert_eq!(token_from(None, Some("bearer xyz")).as_deref(), Some("xyz"));
        assert_eq!(token_from(Some("x=1"), None), None);
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for (value, want) in [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER  abc ", Some("abc")),
            ("Bearer\tabc", Some("abc")),
            ("Bearer ", None),
            ("Bearer", None),
            ("Basic abc", None),
            ("Bearerabc", None),
        ] {
            assert_eq!(bearer(value), want, "{value:?}");
        }
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_token(&headers), None);
        headers.insert(header::AUTHORIZATION, header::HeaderValue::from_static("bEaReR t0k"));
        assert_eq!(bearer_token(&headers), Some("t0k"));
    }

    #[test]
    fn issuer_and_audience_are_required_when_configured() {
        let auth = Authenticator::from_config(Some(SECRET), None, Some("iss1"), Some("aud1"), false)
            .unwrap_or_else(|e| panic!("{e}"));
        let ok = dev_token_for(SECRET, "u1", 60, Some("iss1"), Some("aud1")).unwrap_or_else(|e| panic!("{e}"));
        assert!(auth.verify(Some(&ok)).is_ok());
        for (iss, aud, why) in [
            (None, None, "token missing claim `iss`"),
            (Some("iss1"), None, "token missing claim `aud`"),
            (Some("other"), Some("aud1"), "token issuer (`iss`) not accepted"),
            (Some("iss1"), Some("other"), "token audience (`aud`) not accepted"),
        ] {
            let t = dev_token_for(SECRET, "u1", 60, iss, aud).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(auth.verify(Some(&t)).map_err(|e| e.to_string()), Err(why.to_owned()), "{iss:?} {aud:?}");
        }
        assert!(matches!(dev_token_for("short", "u1", 60, None, None), Err(AuthConfigError::BadSecret(_))));
    }
}
