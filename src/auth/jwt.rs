//! JWT verification. Each key has one algorithm and a token is checked
//! only against a key of the algorithm its header names: `alg: none`, an
//! algorithm no key has, and HS/RS confusion are refused with
//! `algorithm_not_allowed` before any key is touched. The key is chosen by
//! the header's `kid` ([`KeyRing::select`]): a cache lookup, never the
//! network.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::config::{AuthConfig, PermissionsConfig};
use super::keys::{ALGORITHMS, KeyRing, algorithm_named};
use super::{ClientType, Permission, Permissions, TypePolicy};
use crate::channels::{NameLimits, Pattern};
use crate::error::{AuthError, ConfigError};

/// Claims that mean something else — the JWT registered claims and the
/// ones [`Verifier::verify`] reads below — so none can carry the client
/// type (`auth.client_type_claim`): with `sub`, every token minted by the
/// hub would name the client type as its subject. Checked by
/// `Config::validate`.
#[cfg(feature = "server")]
pub(crate) const OTHER_CLAIMS: [&str; 14] = [
    "sub",
    "exp",
    "nbf",
    "iat",
    "jti",
    "aud",
    "iss",
    "channels",
    "publish",
    "capabilities",
    "call",
    "serve",
    "max_slots",
    "permissions",
];

/// The longest `auth.leeway`: clock skew is seconds or minutes, and the
/// check computes `now - leeway`, which a leeway past the current Unix
/// time would take below zero. Checked by `Config::validate`.
#[cfg(feature = "server")]
pub(crate) const MAX_LEEWAY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// A verified token: who the client is and what it may do.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The token's subject.
    pub sub: String,
    /// The token's client type.
    pub client_type: ClientType,
    /// `exp`, seconds since the Unix epoch.
    pub expires_at: u64,
    /// The client type's permissions narrowed by the token.
    pub permissions: Permissions,
    /// The `capabilities` claim: patterns a worker may register (each
    /// registered capability must be covered by one); `None` = any.
    pub capabilities: Option<Vec<Pattern>>,
    /// The `max_slots` claim: most slots a worker may register.
    pub max_slots: Option<u32>,
}

/// Verifies tokens against the configured keys.
pub struct Verifier {
    /// The keys, and which one checks a token.
    pub(crate) keys: KeyRing,
    /// exp/nbf/aud/iss rules, one per algorithm (jsonwebtoken checks the
    /// token's `alg` against its list).
    validations: Vec<(Algorithm, Validation)>,
    /// Name of the client type claim.
    type_claim: String,
    /// The same name split at `.`, for a claim nested in objects; empty
    /// when the name has no dot.
    type_claim_path: Vec<String>,
    /// Longest token accepted.
    max_token_bytes: usize,
    /// Grammar limits for the narrowing claims.
    limits: NameLimits,
    /// Each client type's configured policy, shared by its connections.
    policies: HashMap<ClientType, Arc<TypePolicy>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("type_claim", &self.type_claim)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Builds a verifier from the `[auth]` and `[permissions]` settings.
    /// The `[auth]` key's HS256 secret comes from `auth` or `data_dir`
    /// (created on first use). A JWKS (`auth.jwks_url`) starts empty; the
    /// server fetches it ([`Verifier::start`]).
    pub fn new(
        auth: &AuthConfig,
        permissions: &PermissionsConfig,
        limits: NameLimits,
        data_dir: &Path,
    ) -> Result<Verifier, ConfigError> {
        let keys = KeyRing::from_config(auth, data_dir)?;
        let mut template = Validation::new(Algorithm::HS256);
        template.leeway = auth.leeway.as_secs();
        template.validate_nbf = true;
        // jsonwebtoken checks `aud`/`iss` only when present unless they are
        // required, so a configured audience or issuer is required too.
        let mut required = vec!["exp", "sub"];
        match &auth.audience {
            Some(aud) => {
                template.set_audience(&[aud]);
                required.push("aud");
            }
            None => template.validate_aud = false,
        }
        if let Some(iss) = &auth.issuer {
            template.set_issuer(&[iss]);
            required.push("iss");
        }
        template.set_required_spec_claims(&required);
        let validations = ALGORITHMS
            .iter()
            .map(|&(_, alg)| {
                let mut validation = template.clone();
                validation.algorithms = vec![alg];
                (alg, validation)
            })
            .collect();
        let policies = ClientType::ALL
            .into_iter()
            .map(|ty| {
                let policy = TypePolicy::from_config(permissions.for_type(ty), &limits);
                (ty, Arc::new(policy))
            })
            .collect();
        let type_claim_path = if auth.client_type_claim.contains('.') {
            auth.client_type_claim
                .split('.')
                .map(String::from)
                .collect()
        } else {
            Vec::new()
        };
        Ok(Verifier {
            keys,
            validations,
            type_claim: auth.client_type_claim.clone(),
            type_claim_path,
            max_token_bytes: auth.max_token_bytes,
            limits,
            policies,
        })
    }

    /// Checks a token and returns who it names, or why it was refused.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::MissingToken);
        }
        if token.len() > self.max_token_bytes {
            return Err(AuthError::TokenTooLarge);
        }
        let (algorithm, kid) = self.read_header(token)?;
        let key = self
            .keys
            .select(kid.as_deref())
            .ok_or(AuthError::UnknownKey)?;
        if key.algorithm != algorithm {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        let validation = self
            .validations
            .iter()
            .find(|(alg, _)| *alg == algorithm)
            .map(|(_, v)| v)
            .ok_or(AuthError::AlgorithmNotAllowed)?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidAudience => AuthError::InvalidAudience,
                ErrorKind::InvalidIssuer => AuthError::InvalidIssuer,
                ErrorKind::InvalidAlgorithm => AuthError::AlgorithmNotAllowed,
                ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => {
                    AuthError::InvalidAudience
                }
                ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => {
                    AuthError::InvalidIssuer
                }
                ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => {
                    AuthError::MissingClaim
                }
                _ => AuthError::MalformedToken,
            })?;
        let claims = data.claims;
        let sub = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(AuthError::MissingClaim),
        };
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(AuthError::MissingClaim)?;
        let client_type = self.client_type(&claims)?;
        let narrowing = self.patterns(&claims, "channels")?;
        let publish = self.patterns(&claims, "publish")?;
        let capabilities = self.patterns(&claims, "capabilities")?;
        let call = self.patterns(&claims, "call")?;
        let serve = self.patterns(&claims, "serve")?;
        let max_slots = match claims.get("max_slots") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or(AuthError::InvalidClaim)?,
            ),
        };
        let granted = match claims.get("permissions") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                serde_json::from_value::<Vec<Permission>>(v.clone())
                    .map_err(|_| AuthError::InvalidClaim)?,
            ),
        };
        let policy = self
            .policies
            .get(&client_type)
            .cloned()
            .ok_or(AuthError::UnknownClientType)?;
        Ok(Identity {
            sub,
            client_type,
            expires_at,
            permissions: Permissions::new(policy, granted.as_deref(), narrowing, publish)
                .with_methods(call, serve),
            capabilities,
            max_slots,
        })
    }

    /// The header's algorithm and `kid`. An algorithm no configured key
    /// has is refused here, before any key is looked up or fetched.
    pub(super) fn read_header(
        &self,
        token: &str,
    ) -> Result<(Algorithm, Option<String>), AuthError> {
        let header_b64 = token.split('.').next().ok_or(AuthError::MalformedToken)?;
        let header = URL_SAFE_NO_PAD
            .decode(header_b64.trim_end_matches('='))
            .map_err(|_| AuthError::MalformedToken)?;
        #[derive(Deserialize)]
        struct AlgAndKid {
            alg: String,
            #[serde(default)]
            kid: Option<String>,
        }
        let header: AlgAndKid =
            serde_json::from_slice(&header).map_err(|_| AuthError::MalformedToken)?;
        let algorithm = algorithm_named(&header.alg)
            .filter(|alg| self.keys.accepts(*alg))
            .ok_or(AuthError::AlgorithmNotAllowed)?;
        if token.split('.').count() != 3 {
            return Err(AuthError::MalformedToken);
        }
        Ok((algorithm, header.kid))
    }

    /// The client type from the configured claim: a top-level claim of that
    /// exact name (`role`, `https://example.com/client_type`), else, for a
    /// dotted name, the value at that path in nested objects
    /// (`chanhub.client_type`). A string, or an array of strings of which
    /// exactly one names a client type (a `roles` claim; other roles are
    /// ignored).
    fn client_type(&self, claims: &Map<String, Value>) -> Result<ClientType, AuthError> {
        let value = claims.get(&self.type_claim).or_else(|| {
            let (first, rest) = self.type_claim_path.split_first()?;
            rest.iter()
                .try_fold(claims.get(first)?, |v, part| v.as_object()?.get(part))
        });
        match value {
            None | Some(Value::Null) => Err(AuthError::MissingClientType),
            Some(Value::String(s)) => s
                .parse::<ClientType>()
                .map_err(|_| AuthError::UnknownClientType),
            Some(Value::Array(roles)) => {
                let mut found = roles
                    .iter()
                    .filter_map(|v| v.as_str()?.parse::<ClientType>().ok());
                match found.next() {
                    None => Err(AuthError::MissingClientType),
                    Some(first) if found.all(|ty| ty == first) => Ok(first),
                    Some(_) => Err(AuthError::UnknownClientType),
                }
            }
            Some(_) => Err(AuthError::UnknownClientType),
        }
    }

    fn patterns(
        &self,
        claims: &Map<String, Value>,
        name: &str,
    ) -> Result<Option<Vec<Pattern>>, AuthError> {
        let list = match claims.get(name) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Array(list)) => list,
            Some(_) => return Err(AuthError::InvalidClaim),
        };
        list.iter()
            .map(|v| {
                v.as_str()
                    .and_then(|s| Pattern::parse(s, &self.limits).ok())
                    .ok_or(AuthError::InvalidClaim)
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::mint;
    use crate::config::Config;
    use jsonwebtoken::EncodingKey;

    fn config() -> Config {
        let mut config = Config::default();
        config.auth.secret = Some("s3cret".into());
        config
    }

    fn token(claims: Value) -> String {
        mint(
            &claims,
            Algorithm::HS256,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .expect("mints")
    }

    fn future(secs: u64) -> u64 {
        crate::protocol::now_ms() / 1000 + secs
    }

    #[test]
    fn accepts_a_good_token() {
        let v = Verifier::from_config(&config()).expect("verifier");
        let id = v
            .verify(&token(serde_json::json!({
                "sub": "ui-1", "exp": future(60), "client_type": "browser",
                "channels": ["session:**"]
            })))
            .expect("valid");
        assert_eq!(id.sub, "ui-1");
        assert_eq!(id.client_type, ClientType::Browser);
        assert_eq!(id.permissions.subscribe_patterns(), vec!["session:**"]);
    }

    #[test]
    fn refusals_have_reasons() {
        let v = Verifier::from_config(&config()).expect("verifier");
        let exp = future(60);
        let cases = [
            (
                serde_json::json!({"sub":"a","exp":exp}),
                AuthError::MissingClientType,
            ),
            (
                serde_json::json!({"sub":"a","exp":exp,"client_type":"admin"}),
                AuthError::UnknownClientType,
            ),
            (
                serde_json::json!({"exp":exp,"client_type":"hub"}),
                AuthError::MissingClaim,
            ),
            (
                serde_json::json!({"sub":"a","exp":future(0) - 10,"client_type":"hub"}),
                AuthError::Expired,
            ),
            (
                serde_json::json!({"sub":"a","exp":exp,"nbf":exp,"client_type":"hub"}),
                AuthError::NotYetValid,
            ),
            (
                serde_json::json!({"sub":"a","exp":exp,"client_type":"hub","channels":"x"}),
                AuthError::InvalidClaim,
            ),
        ];
        for (claims, expected) in cases {
            assert_eq!(
                v.verify(&token(claims.clone())).unwrap_err(),
                expected,
                "{claims}"
            );
        }
        let other = mint(
            &serde_json::json!({"sub":"a","exp":exp,"client_type":"hub"}),
            Algorithm::HS256,
            &EncodingKey::from_secret(b"other"),
        )
        .expect("mints");
        assert_eq!(v.verify(&other).unwrap_err(), AuthError::BadSignature);
        assert_eq!(v.verify("garbage").unwrap_err(), AuthError::MalformedToken);
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(br#"{"sub":"a","exp":99999999999,"client_type":"hub"}"#)
        );
        assert_eq!(v.verify(&none).unwrap_err(), AuthError::AlgorithmNotAllowed);
    }

    #[test]
    fn generated_secret_is_persisted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config {
            data_dir: Some(dir.path().to_path_buf()),
            ..Config::default()
        };
        let first = config.token_secret().expect("created");
        let second = config.token_secret().expect("read back");
        assert_eq!(first, second);
        assert_eq!(first.len(), 64);
    }
}
