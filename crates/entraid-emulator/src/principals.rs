//! Who the token service knows: service principals (secret and/or certificate) and
//! managed identities, from defaults or a JSON file.

use openssl::pkey::{PKey, Public};
use serde_json::Value;

use crate::EmulatorError;

/// A service principal (app registration).
#[derive(Clone)]
pub struct ServicePrincipal {
    /// Application (client) id.
    pub client_id: String,
    /// Object id: the Redis username of its tokens.
    pub object_id: String,
    /// Client secret, if it may sign in with one.
    pub secret: Option<String>,
    /// Public key of its certificate, if it may sign in with a client assertion.
    pub certificate_key: Option<PKey<Public>>,
    /// Whether the cache has a data access policy assignment for its object id: without
    /// one, Entra still issues tokens, but the gateway refuses them with `WRONGPASS`, as
    /// Azure does. Default true.
    pub redis_access: bool,
}

impl std::fmt::Debug for ServicePrincipal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServicePrincipal")
            .field("client_id", &self.client_id)
            .field("object_id", &self.object_id)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("certificate", &self.certificate_key.is_some())
            .field("redis_access", &self.redis_access)
            .finish()
    }
}

/// A managed identity.
#[derive(Clone, Debug)]
pub struct ManagedIdentity {
    /// Client id (user-assigned), if any.
    pub client_id: Option<String>,
    /// Object id: the Redis username of its tokens.
    pub object_id: String,
    /// Azure resource id (user-assigned), if any.
    pub resource_id: Option<String>,
    /// Whether this is the resource's system-assigned identity.
    pub system_assigned: bool,
    /// Whether the cache has a data access policy assignment for it (see
    /// [`ServicePrincipal::redis_access`]). Default true.
    pub redis_access: bool,
}

/// Everything the token service accepts.
#[derive(Clone)]
pub struct Principals {
    /// The one tenant.
    pub tenant_id: String,
    /// Service principals; the first is the default one printed at start.
    pub service_principals: Vec<ServicePrincipal>,
    /// Managed identities; requests naming no id get the system-assigned one.
    pub managed_identities: Vec<ManagedIdentity>,
}

impl std::fmt::Debug for Principals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principals")
            .field("tenant_id", &self.tenant_id)
            .field(
                "service_principals",
                &self.service_principals.iter().map(|p| &p.client_id).collect::<Vec<_>>(),
            )
            .field("managed_identities", &self.managed_identities)
            .finish()
    }
}

/// A principal's `redis_access` in a principals file: true unless it says false.
fn redis_access(principal: &Value) -> bool {
    principal.get("redis_access").and_then(Value::as_bool).unwrap_or(true)
}

/// A random GUID-shaped id.
pub(crate) fn guid() -> String {
    let mut b = [0u8; 16];
    let _ = openssl::rand::rand_bytes(&mut b);
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
    )
}

/// A random secret in Entra's style (letters, digits, `~`, `.`).
pub(crate) fn random_secret() -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789~.";
    let mut b = [0u8; 40];
    let _ = openssl::rand::rand_bytes(&mut b);
    b.iter().map(|x| CHARS[*x as usize % CHARS.len()] as char).collect()
}

impl Principals {
    /// A tenant with one service principal (random secret) and a system-assigned managed identity.
    pub fn generate() -> Principals {
        Principals {
            tenant_id: guid(),
            service_principals: vec![ServicePrincipal {
                client_id: guid(),
                object_id: guid(),
                secret: Some(random_secret()),
                certificate_key: None,
                redis_access: true,
            }],
            managed_identities: vec![ManagedIdentity {
                client_id: None,
                object_id: guid(),
                resource_id: None,
                system_assigned: true,
                redis_access: true,
            }],
        }
    }

    /// Reads a principals file:
    ///
    /// ```json
    /// { "tenant_id": "…",
    ///   "service_principals": [ { "client_id": "…", "object_id": "…", "secret": "…",
    ///                             "certificate_pem": "-----BEGIN CERTIFICATE-----…",
    ///                             "redis_access": false } ],
    ///   "managed_identities": [ { "system_assigned": true, "object_id": "…" },
    ///                           { "client_id": "…", "object_id": "…", "resource_id": "…" } ] }
    /// ```
    /// Missing ids are generated; a missing tenant gets a random one. `redis_access`
    /// (default true) says whether the cache has a data access policy assignment for the
    /// principal.
    pub fn from_json(text: &str) -> Result<Principals, EmulatorError> {
        let bad = |m: String| EmulatorError::Principals(m);
        let value: Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let text_field = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let tenant_id = text_field(&value, "tenant_id").unwrap_or_else(guid);
        let mut service_principals = Vec::new();
        for (i, sp) in value
            .get("service_principals")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let certificate_key = match text_field(sp, "certificate_pem") {
                Some(pem) => {
                    let cert = openssl::x509::X509::from_pem(pem.as_bytes()).map_err(|e| {
                        bad(format!(
                            "service_principals[{i}].certificate_pem is not a PEM certificate: {e}"
                        ))
                    })?;
                    Some(
                        cert.public_key()
                            .map_err(|e| bad(format!("service_principals[{i}]: {e}")))?,
                    )
                }
                None => None,
            };
            let secret = text_field(sp, "secret");
            if secret.is_none() && certificate_key.is_none() {
                return Err(bad(format!(
                    "service_principals[{i}] has neither a secret nor a certificate_pem"
                )));
            }
            service_principals.push(ServicePrincipal {
                client_id: text_field(sp, "client_id").unwrap_or_else(guid),
                object_id: text_field(sp, "object_id").unwrap_or_else(guid),
                secret,
                certificate_key,
                redis_access: redis_access(sp),
            });
        }
        if service_principals.is_empty() {
            service_principals = Principals::generate().service_principals;
        }
        let mut managed_identities = Vec::new();
        for mi in value
            .get("managed_identities")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            managed_identities.push(ManagedIdentity {
                client_id: text_field(mi, "client_id"),
                object_id: text_field(mi, "object_id").unwrap_or_else(guid),
                resource_id: text_field(mi, "resource_id"),
                system_assigned: mi.get("system_assigned").and_then(Value::as_bool).unwrap_or(false),
                redis_access: redis_access(mi),
            });
        }
        if !managed_identities.iter().any(|m| m.system_assigned) {
            managed_identities.push(ManagedIdentity {
                client_id: None,
                object_id: guid(),
                resource_id: None,
                system_assigned: true,
                redis_access: true,
            });
        }
        Ok(Principals {
            tenant_id,
            service_principals,
            managed_identities,
        })
    }

    /// Whether the cache grants data access to this object id.
    pub(crate) fn has_redis_access(&self, object_id: &str) -> bool {
        let sps = self.service_principals.iter().map(|p| (&p.object_id, p.redis_access));
        let mis = self.managed_identities.iter().map(|m| (&m.object_id, m.redis_access));
        sps.chain(mis).any(|(id, access)| id == object_id && access)
    }

    pub(crate) fn service_principal(&self, client_id: &str) -> Option<&ServicePrincipal> {
        self.service_principals.iter().find(|p| p.client_id == client_id)
    }

    /// The managed identity a request names by client, object or resource id; none named:
    /// the system-assigned one.
    pub(crate) fn managed_identity(
        &self,
        client_id: Option<&str>,
        object_id: Option<&str>,
        resource_id: Option<&str>,
    ) -> Option<&ManagedIdentity> {
        self.managed_identities
            .iter()
            .find(|m| match (client_id, object_id, resource_id) {
                (Some(c), _, _) => m.client_id.as_deref() == Some(c),
                (_, Some(o), _) => !m.system_assigned && m.object_id == o,
                (_, _, Some(r)) => m.resource_id.as_deref() == Some(r),
                _ => m.system_assigned,
            })
    }

    /// The system-assigned identity's object id.
    pub fn system_assigned_object_id(&self) -> &str {
        self.managed_identities
            .iter()
            .find(|m| m.system_assigned)
            .map(|m| m.object_id.as_str())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_access_defaults_to_granted_and_can_be_withheld() {
        let principals = Principals::from_json(
            r#"{"service_principals": [
                   {"object_id": "granted", "secret": "s1"},
                   {"object_id": "withheld", "secret": "s2", "redis_access": false}],
                "managed_identities": [{"system_assigned": true, "object_id": "mi", "redis_access": false}]}"#,
        )
        .unwrap();
        assert!(principals.has_redis_access("granted"));
        assert!(!principals.has_redis_access("withheld"));
        assert!(!principals.has_redis_access("mi"));
        assert!(!principals.has_redis_access("unknown"));
        let generated = Principals::generate();
        assert!(generated.has_redis_access(&generated.service_principals[0].object_id));
        assert!(generated.has_redis_access(generated.system_assigned_object_id()));
    }
}
