//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256(secret, "id.timestamp.body")>`,
//! one space-separated entry per active secret so receivers keep verifying while secrets rotate.

use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::SigningConfig;

/// Parsed signing keys per workspace.
#[derive(Default)]
pub struct Signer {
    keys: HashMap<String, Vec<Vec<u8>>>,
}

/// Decodes `whsec_<base64>` (the prefix is optional, as in the reference libraries).
pub fn parse_secret(secret: &str) -> Result<Vec<u8>, String> {
    if secret == crate::config::REDACTED {
        return Err("was redacted by check-config: put the secret back".into());
    }
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
    match STANDARD.decode(b64) {
        Ok(key) if !key.is_empty() => Ok(key),
        Ok(_) => Err("is empty".into()),
        Err(e) => Err(format!("is not whsec_<base64>: {e}")),
    }
}

impl Signer {
    /// Reads inline secrets and the secrets file; every problem is reported (without the secret itself).
    pub fn from_config(cfg: &SigningConfig) -> Result<Self, Vec<String>> {
        let mut all = cfg.secrets.clone();
        let mut problems = Vec::new();
        if let Some(path) = &cfg.secrets_file {
            match std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|t| {
                    toml::from_str::<HashMap<String, Vec<String>>>(&t).map_err(|e| e.to_string())
                }) {
                Ok(file) => {
                    for (ws, secrets) in file {
                        all.entry(ws).or_default().extend(secrets);
                    }
                }
                Err(e) => problems.push(format!("signing.secrets_file {}: {e}", path.display())),
            }
        }
        let mut keys = HashMap::new();
        for (ws, secrets) in all {
            let mut parsed = Vec::new();
            for (i, s) in secrets.iter().enumerate() {
                match parse_secret(s) {
                    Ok(k) => parsed.push(k),
                    Err(why) => problems.push(format!(
                        "signing secret #{} of workspace {ws:?} {why}",
                        i + 1
                    )),
                }
            }
            if !parsed.is_empty() {
                keys.insert(ws, parsed);
            }
        }
        if problems.is_empty() {
            Ok(Self { keys })
        } else {
            Err(problems)
        }
    }

    /// Whether no workspace has a secret (nothing is signed).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The `webhook-signature` value for a workspace, or `None` when it has no secret (unsigned).
    pub fn signature(
        &self,
        workspace: &str,
        id: &str,
        timestamp: i64,
        body: &[u8],
    ) -> Option<String> {
        let keys = self.keys.get(workspace)?;
        let sigs: Vec<String> = keys.iter().map(|k| sign(k, id, timestamp, body)).collect();
        Some(sigs.join(" "))
    }
}

/// One `v1,<base64>` signature.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example published with the Standard Webhooks specification (and used by its reference libraries).
    #[test]
    fn matches_the_published_standard_webhooks_example() {
        let key = parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn signs_with_every_secret_during_rotation() {
        let cfg = SigningConfig {
            secrets: [(
                "ws".to_string(),
                vec![
                    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string(),
                    "whsec_c2Vjb25kLXNlY3JldA==".to_string(),
                ],
            )]
            .into(),
            secrets_file: None,
        };
        let signer = Signer::from_config(&cfg).unwrap();
        let header = signer
            .signature(
                "ws",
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#,
            )
            .unwrap();
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert_eq!(
            parts[1],
            sign(
                b"second-secret",
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            )
        );
        assert!(
            signer.signature("other", "x", 1, b"").is_none(),
            "workspaces without a secret are unsigned"
        );
    }

    #[test]
    fn bad_secrets_are_reported_without_their_value() {
        let cfg = SigningConfig {
            secrets: [("ws".to_string(), vec!["whsec_!!!not-base64".to_string()])].into(),
            secrets_file: None,
        };
        let problems = Signer::from_config(&cfg).err().unwrap();
        assert_eq!(problems.len(), 1);
        assert!(!problems[0].contains("not-base64"), "{problems:?}");
        assert!(
            !format!("{cfg:?}").contains("whsec_"),
            "Debug redacts secrets"
        );
    }
}
