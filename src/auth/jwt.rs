//! JWT verification and minting. One algorithm is configured and only that
//! one is accepted: the header's `alg` is checked before anything else, so
//! `alg: none` and HS/RS confusion are refused with `algorithm_not_allowed`.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::config::{AuthConfig, PermissionsConfig};
use super::{ClientType, Permission, Permissions, TypePolicy};
use crate::channels::{NameLimits, Pattern};
use crate::error::{AuthError, ConfigError};

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

/// Claims of a token minted by chanhub (`chanhub token`, tests, the CLI).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenClaims {
    /// Subject: who the client is.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// The client type, under the default claim name.
    pub client_type: ClientType,
    /// Narrows the subscribe allow-list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    /// Narrows the publish allow-list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Vec<String>>,
    /// Caps the capabilities a worker may register.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<String>>,
    /// Caps the slots a worker may register.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_slots: Option<u32>,
    /// Narrows the methods this client may call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<Vec<String>>,
    /// Narrows the methods this client may serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serve: Option<Vec<String>>,
}

/// Signs `claims` with an HS256 secret (or, with `algorithm`, another key).
pub fn mint<T: Serialize>(
    claims: &T,
    algorithm: Algorithm,
    key: &EncodingKey,
) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(&Header::new(algorithm), claims, key)
}

/// Verifies tokens against the configured algorithm and key.
pub struct Verifier {
    /// The one accepted algorithm.
    algorithm: Algorithm,
    /// Its verification key.
    key: DecodingKey,
    /// exp/nbf/aud/iss rules.
    validation: Validation,
    /// Name of the client type claim.
    type_claim: String,
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
            .field("algorithm", &self.algorithm)
            .field("type_claim", &self.type_claim)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Builds a verifier from the `[auth]` and `[permissions]` settings.
    /// For HS256 the secret comes from `auth` or `data_dir` (created on
    /// first use).
    pub fn new(
        auth: &AuthConfig,
        permissions: &PermissionsConfig,
        limits: NameLimits,
        data_dir: &Path,
    ) -> Result<Verifier, ConfigError> {
        let (algorithm, key) = match auth.algorithm.as_str() {
            "HS256" => (
                Algorithm::HS256,
                DecodingKey::from_secret(&load_or_create_secret(auth, data_dir)?),
            ),
            name => {
                let path = auth
                    .public_key_file
                    .as_deref()
                    .ok_or_else(|| invalid("auth.public_key_file", "required".into()))?;
                let pem = std::fs::read(path).map_err(|e| {
                    invalid("auth.public_key_file", format!("{}: {e}", path.display()))
                })?;
                let parsed = match name {
                    "RS256" => DecodingKey::from_rsa_pem(&pem).map(|k| (Algorithm::RS256, k)),
                    "ES256" => DecodingKey::from_ec_pem(&pem).map(|k| (Algorithm::ES256, k)),
                    _ => DecodingKey::from_ed_pem(&pem).map(|k| (Algorithm::EdDSA, k)),
                };
                parsed.map_err(|e| {
                    invalid(
                        "auth.public_key_file",
                        format!("not a {name} public key: {e}"),
                    )
                })?
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = auth.leeway.as_secs();
        validation.validate_nbf = true;
        // jsonwebtoken checks `aud`/`iss` only when present unless they are
        // required, so a configured audience or issuer is required too.
        let mut required = vec!["exp", "sub"];
        match &auth.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &auth.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let policies = ClientType::ALL
            .into_iter()
            .map(|ty| {
                let policy = TypePolicy::from_config(permissions.for_type(ty), &limits);
                (ty, Arc::new(policy))
            })
            .collect();
        Ok(Verifier {
            algorithm,
            key,
            validation,
            type_claim: auth.client_type_claim.clone(),
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
        self.check_algorithm(token)?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidAudience => AuthError::InvalidAudience,
            ErrorKind::InvalidIssuer => AuthError::InvalidIssuer,
            ErrorKind::InvalidAlgorithm => AuthError::AlgorithmNotAllowed,
            ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => AuthError::InvalidAudience,
            ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => AuthError::InvalidIssuer,
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
        let client_type = match claims.get(&self.type_claim) {
            None | Some(Value::Null) => return Err(AuthError::MissingClientType),
            Some(Value::String(s)) => s
                .parse::<ClientType>()
                .map_err(|_| AuthError::UnknownClientType)?,
            Some(_) => return Err(AuthError::UnknownClientType),
        };
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

    /// Refuses a token whose header names any algorithm but ours, before any
    /// key is touched.
    fn check_algorithm(&self, token: &str) -> Result<(), AuthError> {
        let header_b64 = token.split('.').next().ok_or(AuthError::MalformedToken)?;
        let header = URL_SAFE_NO_PAD
            .decode(header_b64.trim_end_matches('='))
            .map_err(|_| AuthError::MalformedToken)?;
        #[derive(Deserialize)]
        struct AlgOnly {
            alg: String,
        }
        let alg: AlgOnly =
            serde_json::from_slice(&header).map_err(|_| AuthError::MalformedToken)?;
        let expected = match self.algorithm {
            Algorithm::HS256 => "HS256",
            Algorithm::RS256 => "RS256",
            Algorithm::ES256 => "ES256",
            _ => "EdDSA",
        };
        if alg.alg != expected {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        if token.split('.').count() != 3 {
            return Err(AuthError::MalformedToken);
        }
        Ok(())
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

fn invalid(key: &str, problem: String) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem,
    }
}

/// The HS256 secret: `auth.secret`, else `auth.secret_file`, else
/// `<data_dir>/secret`, generated (32 random bytes, hex, mode 0600) the first
/// time so tokens minted by `chanhub token` keep working across restarts.
pub fn load_or_create_secret(auth: &AuthConfig, data_dir: &Path) -> Result<Vec<u8>, ConfigError> {
    if let Some(secret) = &auth.secret {
        return Ok(secret.as_bytes().to_vec());
    }
    if let Some(path) = &auth.secret_file {
        return read_secret(path, "auth.secret_file");
    }
    let dir = data_dir;
    let path = dir.join("secret");
    if path.exists() {
        return read_secret(&path, "data_dir");
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| invalid("data_dir", format!("cannot create {}: {e}", dir.display())))?;
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(&path) {
        Ok(mut file) => {
            file.write_all(hex.as_bytes())
                .map_err(|e| invalid("data_dir", format!("{}: {e}", path.display())))?;
            tracing::info!(path = %path.display(), "generated a new token secret");
            Ok(hex.into_bytes())
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_secret(&path, "data_dir"),
        Err(e) => Err(invalid("data_dir", format!("{}: {e}", path.display()))),
    }
}

fn read_secret(path: &Path, key: &str) -> Result<Vec<u8>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(invalid(key, format!("{} is empty", path.display())));
    }
    Ok(secret.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

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
