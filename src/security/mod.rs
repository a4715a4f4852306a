//! What keeps a webhook dispatcher from being turned against the network it runs in or the receivers it
//! calls: the SSRF guard, Standard Webhooks signatures and hygiene of tenant-supplied headers.

pub(crate) mod headers;
pub mod signing;
pub(crate) mod ssrf;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Refuse every non-public destination address (loopback, private, link-local, CGNAT, multicast, …).
    pub ssrf_guard: bool,
    /// Address ranges allowed despite the guard, e.g. `["127.0.0.1/32"]` for local development.
    pub allow_cidrs: Vec<IpNet>,
    /// Host names whose addresses are not checked (trusted internal receivers).
    pub allow_hosts: Vec<String>,
    /// Destination ports allowed.
    pub allowed_ports: Vec<u16>,
    /// Allow every port (tests and local development only).
    pub any_port: bool,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            ssrf_guard: true,
            allow_cidrs: Vec::new(),
            allow_hosts: Vec::new(),
            allowed_ports: vec![80, 443],
            any_port: false,
        }
    }
}

/// Standard Webhooks signing secrets (`whsec_<base64>`), per workspace; several at once during rotation.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SigningConfig {
    /// Workspace id → secrets.
    pub secrets: BTreeMap<String, Vec<String>>,
    /// A TOML file of the same shape (`ws_acme = ["whsec_…"]`), read at start-up; kept out of the main config
    /// so secrets can come from a mounted Secret.
    pub secrets_file: Option<PathBuf>,
}

/// Secrets never reach a log line or a debug dump.
impl fmt::Debug for SigningConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counts: BTreeMap<&str, String> = self
            .secrets
            .iter()
            .map(|(ws, s)| (ws.as_str(), format!("<{} redacted>", s.len())))
            .collect();
        f.debug_struct("SigningConfig")
            .field("secrets", &counts)
            .field("secrets_file", &self.secrets_file)
            .finish()
    }
}
