//! Permissions: the configured table for a client type ([`TypePolicy`]),
//! narrowed by a token ([`Permissions`]). Channel allow-lists use the same
//! pattern grammar as subscriptions, so a wildcard means one thing everywhere.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::config::TypePermissions;
use crate::channels::{ChannelName, NameLimits, Pattern};
use crate::error::RequestError;

/// One permission of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Permission {
    /// Subscribe to channels.
    #[serde(rename = "subscribe")]
    Subscribe,
    /// Publish (broadcast) events.
    #[serde(rename = "publish")]
    Publish,
    /// Submit tasks.
    #[serde(rename = "task:submit")]
    TaskSubmit,
    /// Register as a worker and receive tasks.
    #[serde(rename = "task:receive")]
    TaskReceive,
    /// Report task progress and results.
    #[serde(rename = "task:complete")]
    TaskComplete,
    /// Link as a peer hub.
    #[serde(rename = "federate")]
    Federate,
    /// Call methods served by other connections.
    #[serde(rename = "call")]
    Call,
    /// Answer calls (serve methods).
    #[serde(rename = "serve")]
    Serve,
}

impl Permission {
    /// Every permission, in table order.
    pub const ALL: [Permission; 8] = [
        Permission::Subscribe,
        Permission::Publish,
        Permission::TaskSubmit,
        Permission::TaskReceive,
        Permission::TaskComplete,
        Permission::Federate,
        Permission::Call,
        Permission::Serve,
    ];

    /// The permission a client message of `type` needs, if one does
    /// (`auth`, `ping` and the queries need none beyond authenticating).
    pub fn for_message(message_type: &str) -> Option<Permission> {
        Some(match message_type {
            "subscribe" => Permission::Subscribe,
            "publish" => Permission::Publish,
            "task:submit" | "task:cancel" => Permission::TaskSubmit,
            "register" | "drain" => Permission::TaskReceive,
            "task:progress" | "task:complete" | "task:error" => Permission::TaskComplete,
            "hub:hello" => Permission::Federate,
            "call" | "call:cancel" => Permission::Call,
            "serve" | "unserve" | "call:reply" => Permission::Serve,
            _ => return None,
        })
    }

    /// The wire name, e.g. `task:submit`.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Subscribe => "subscribe",
            Permission::Publish => "publish",
            Permission::TaskSubmit => "task:submit",
            Permission::TaskReceive => "task:receive",
            Permission::TaskComplete => "task:complete",
            Permission::Federate => "federate",
            Permission::Call => "call",
            Permission::Serve => "serve",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// The configured permissions of one client type, with patterns parsed once.
#[derive(Debug)]
pub struct TypePolicy {
    /// Granted permissions as a bit set.
    allowed: u8,
    /// Patterns this type may subscribe to.
    subscribe: Vec<Pattern>,
    /// Patterns of channels this type may publish to.
    publish: Vec<Pattern>,
    /// Patterns of methods this type may call.
    call: Vec<Pattern>,
    /// Patterns of methods this type may serve.
    serve: Vec<Pattern>,
}

impl TypePolicy {
    /// Builds the policy from config (already validated, so patterns parse).
    pub fn from_config(config: &TypePermissions, limits: &NameLimits) -> TypePolicy {
        let flags = [
            (Permission::Subscribe, config.subscribe),
            (Permission::Publish, config.publish),
            (Permission::TaskSubmit, config.task_submit),
            (Permission::TaskReceive, config.task_receive),
            (Permission::TaskComplete, config.task_complete),
            (Permission::Federate, config.federate),
            (Permission::Call, config.call),
            (Permission::Serve, config.serve),
        ];
        let allowed = flags
            .iter()
            .filter(|(_, on)| *on)
            .fold(0, |acc, (p, _)| acc | p.bit());
        let parse = |list: &[String]| {
            list.iter()
                .filter_map(|p| Pattern::parse(p, limits).ok())
                .collect()
        };
        TypePolicy {
            allowed,
            subscribe: parse(&config.subscribe_channels),
            publish: parse(&config.publish_channels),
            call: parse(&config.call_methods),
            serve: parse(&config.serve_methods),
        }
    }
}

/// What one connection may do: its type's policy narrowed by its token.
#[derive(Debug, Clone)]
pub struct Permissions {
    /// The client type's configured table.
    policy: Arc<TypePolicy>,
    /// Granted permissions after narrowing.
    allowed: u8,
    /// The token's `permissions` claim as a bit set (all bits without one):
    /// still applies where a namespace widens the type's table.
    narrowed: u8,
    /// The token's `channels` claim, when present.
    subscribe: Option<Vec<Pattern>>,
    /// The token's `publish` claim, when present.
    publish: Option<Vec<Pattern>>,
    /// The token's `call` claim, when present.
    call: Option<Arc<[Pattern]>>,
    /// The token's `serve` claim, when present.
    serve: Option<Arc<[Pattern]>>,
}

impl Permissions {
    /// The policy narrowed by a token's optional claims.
    pub fn new(
        policy: Arc<TypePolicy>,
        permissions: Option<&[Permission]>,
        subscribe: Option<Vec<Pattern>>,
        publish: Option<Vec<Pattern>>,
    ) -> Permissions {
        let narrowed = match permissions {
            Some(list) => list.iter().fold(0, |acc, p| acc | p.bit()),
            None => u8::MAX,
        };
        Permissions {
            allowed: policy.allowed & narrowed,
            narrowed,
            policy,
            subscribe,
            publish,
            call: None,
            serve: None,
        }
    }

    /// Narrows calling and serving by a token's `call` and `serve` claims.
    pub fn with_methods(mut self, call: Option<Vec<Pattern>>, serve: Option<Vec<Pattern>>) -> Self {
        self.call = call.map(Arc::from);
        self.serve = serve.map(Arc::from);
        self
    }

    /// May this connection call `method`? One pattern of the type's
    /// `call_methods`, and one of the token's `call` claim if present, must
    /// match it.
    pub fn check_call(&self, method: &ChannelName) -> Result<(), RequestError> {
        self.require(Permission::Call)?;
        let matched = |list: &[Pattern]| list.iter().any(|allow| allow.matches(method));
        if !matched(&self.policy.call) || !self.call.as_deref().is_none_or(matched) {
            return Err(RequestError::forbidden(format!(
                "calling {:?} is not allowed for this token",
                method.as_str()
            )));
        }
        Ok(())
    }

    /// May this connection serve `pattern`? Like subscribing: every method
    /// the pattern can match must be allowed by `serve_methods` and the
    /// token's `serve` claim.
    pub fn check_serve(&self, pattern: &Pattern) -> Result<(), RequestError> {
        self.require(Permission::Serve)?;
        let covered = |list: &[Pattern]| list.iter().any(|allow| allow.covers(pattern));
        if !covered(&self.policy.serve) || !self.serve.as_deref().is_none_or(covered) {
            return Err(RequestError::forbidden(format!(
                "serving {:?} is not allowed for this token",
                pattern.as_str()
            )));
        }
        Ok(())
    }

    /// Whether the connection has `permission`.
    pub fn has(&self, permission: Permission) -> bool {
        self.allowed & permission.bit() != 0
    }

    /// The granted permissions, in table order.
    pub fn list(&self) -> Vec<Permission> {
        Permission::ALL
            .into_iter()
            .filter(|p| self.has(*p))
            .collect()
    }

    /// `Ok` when the connection has `permission`, else a `forbidden` error.
    pub fn require(&self, permission: Permission) -> Result<(), RequestError> {
        if self.has(permission) {
            Ok(())
        } else {
            Err(RequestError::forbidden(format!(
                "this connection lacks the {:?} permission",
                permission.as_str()
            )))
        }
    }

    /// May this connection subscribe to `pattern`? Allowed only when every
    /// channel the pattern can match is allowed: one pattern of the type's
    /// list, and one of the token's `channels` claim if present, must each
    /// cover it (see [`Pattern::covers`]).
    pub fn check_subscribe(&self, pattern: &Pattern) -> Result<(), RequestError> {
        self.require(Permission::Subscribe)?;
        let covered = |list: &[Pattern]| list.iter().any(|allow| allow.covers(pattern));
        if !covered(&self.policy.subscribe) || !self.subscribe.as_deref().is_none_or(covered) {
            return Err(RequestError::forbidden(format!(
                "subscribing to {:?} is not allowed for this token",
                pattern.as_str()
            )));
        }
        Ok(())
    }

    /// May this connection publish to `channel`?
    pub fn check_publish(&self, channel: &ChannelName) -> Result<(), RequestError> {
        self.require(Permission::Publish)?;
        let matched = |list: &[Pattern]| list.iter().any(|allow| allow.matches(channel));
        if !matched(&self.policy.publish) || !self.publish.as_deref().is_none_or(matched) {
            return Err(RequestError::forbidden(format!(
                "publishing to {:?} is not allowed for this token",
                channel.as_str()
            )));
        }
        Ok(())
    }

    /// Like [`Permissions::check_publish`], but when `granted` (a namespace
    /// lets this client type publish to `channel`) the type's table is
    /// skipped; the token's `permissions` and `publish` claims still narrow.
    pub fn check_publish_granted(
        &self,
        channel: &ChannelName,
        granted: bool,
    ) -> Result<(), RequestError> {
        if !granted {
            return self.check_publish(channel);
        }
        let claim_allows = self.narrowed & Permission::Publish.bit() != 0
            && self
                .publish
                .as_deref()
                .is_none_or(|list| list.iter().any(|allow| allow.matches(channel)));
        if !claim_allows {
            return Err(RequestError::forbidden(format!(
                "publishing to {:?} is not allowed for this token",
                channel.as_str()
            )));
        }
        Ok(())
    }

    /// The effective subscribe allow-list, for `auth:success`.
    pub fn subscribe_patterns(&self) -> Vec<String> {
        self.effective(&self.policy.subscribe, self.subscribe.as_deref())
    }

    /// The effective publish allow-list, for `auth:success`.
    pub fn publish_patterns(&self) -> Vec<String> {
        if !self.has(Permission::Publish) {
            return Vec::new();
        }
        self.effective(&self.policy.publish, self.publish.as_deref())
    }

    fn effective(&self, policy: &[Pattern], token: Option<&[Pattern]>) -> Vec<String> {
        // The token's list when present (each entry is additionally checked
        // against the type's list at use), else the type's list.
        token
            .unwrap_or(policy)
            .iter()
            .map(|p| p.as_str().to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ClientType;

    fn limits() -> NameLimits {
        NameLimits::default()
    }

    fn pattern(s: &str) -> Pattern {
        Pattern::parse(s, &limits()).expect("valid pattern")
    }

    fn perms(ty: ClientType, channels: Option<&[&str]>) -> Permissions {
        let policy = Arc::new(TypePolicy::from_config(
            &TypePermissions::default_for(ty),
            &limits(),
        ));
        Permissions::new(
            policy,
            None,
            channels.map(|c| c.iter().map(|s| pattern(s)).collect()),
            None,
        )
    }

    #[test]
    fn token_channels_narrow_subscriptions() {
        let p = perms(ClientType::Browser, Some(&["session:**"]));
        assert!(p.check_subscribe(&pattern("session:*")).is_ok());
        assert!(p.check_subscribe(&pattern("session:42:log")).is_ok());
        for bad in ["task:*", "**", "*:**", "{session,task}:*"] {
            assert!(p.check_subscribe(&pattern(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn browser_cannot_publish_hub_can() {
        let channel = ChannelName::parse("session:1", &limits()).expect("valid");
        assert!(
            perms(ClientType::Browser, None)
                .check_publish(&channel)
                .is_err()
        );
        assert!(perms(ClientType::Hub, None).check_publish(&channel).is_ok());
    }

    #[test]
    fn a_namespace_grant_widens_the_table_but_not_the_token() {
        let channel = ChannelName::parse("room:1", &limits()).expect("valid");
        let browser = perms(ClientType::Browser, None);
        assert!(browser.check_publish_granted(&channel, false).is_err());
        assert!(browser.check_publish_granted(&channel, true).is_ok());
        let policy = Arc::new(TypePolicy::from_config(
            &TypePermissions::default_for(ClientType::Browser),
            &limits(),
        ));
        let no_publish = Permissions::new(
            Arc::clone(&policy),
            Some(&[Permission::Subscribe]),
            None,
            None,
        );
        assert!(no_publish.check_publish_granted(&channel, true).is_err());
        let elsewhere = Permissions::new(policy, None, None, Some(vec![pattern("chat:*")]));
        assert!(elsewhere.check_publish_granted(&channel, true).is_err());
    }

    #[test]
    fn permissions_claim_only_narrows() {
        let policy = Arc::new(TypePolicy::from_config(
            &TypePermissions::default_for(ClientType::Browser),
            &limits(),
        ));
        let p = Permissions::new(
            policy,
            Some(&[Permission::Subscribe, Permission::Publish]),
            None,
            None,
        );
        assert!(p.has(Permission::Subscribe));
        assert!(!p.has(Permission::Publish), "a token cannot widen");
        assert_eq!(p.list(), vec![Permission::Subscribe]);
    }

    #[test]
    fn call_and_serve_defaults_and_claims() {
        let name = |s: &str| ChannelName::parse(s, &limits()).expect("valid");
        let browser = perms(ClientType::Browser, None);
        assert!(browser.check_call(&name("admin.x")).is_ok());
        assert!(
            browser.check_serve(&pattern("ui.*")).is_err(),
            "browsers may not serve"
        );
        let worker = perms(ClientType::Worker, None);
        assert!(worker.check_serve(&pattern("**")).is_ok());

        let narrowed = perms(ClientType::Worker, None)
            .with_methods(Some(vec![pattern("ui.*")]), Some(vec![pattern("node:**")]));
        assert!(narrowed.check_call(&name("ui.open")).is_ok());
        assert!(narrowed.check_call(&name("admin.x")).is_err());
        assert!(narrowed.check_serve(&pattern("node:*")).is_ok());
        assert!(
            narrowed.check_serve(&pattern("**")).is_err(),
            "a claim narrows"
        );
        assert!(narrowed.check_serve(&pattern("fs.read")).is_err());
    }
}
