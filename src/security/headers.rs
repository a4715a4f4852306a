//! Headers a tenant may not set: they would break the request framing, change where it goes, or forge
//! hookrelay's own identity and signature headers. Such sends are dead-lettered with the header named.

/// Hop-by-hop and framing headers (RFC 9110 §7.6.1), routing, and hookrelay's own signature headers.
const FORBIDDEN: [&str; 14] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// Why a header name is refused, if it is.
pub fn refused(name: &str) -> Option<&'static str> {
    let n = name.to_ascii_lowercase();
    if !FORBIDDEN.contains(&n.as_str()) {
        None
    } else if n.starts_with("webhook-") {
        Some("is set by hookrelay itself (id and signature) and cannot be supplied")
    } else if n == "host" {
        Some("would redirect the request to another virtual host")
    } else {
        Some("is a hop-by-hop or framing header that hookrelay controls")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_framing_routing_and_signature_headers_in_any_case() {
        for h in [
            "Host",
            "CONTENT-LENGTH",
            "Transfer-Encoding",
            "connection",
            "Upgrade",
            "TE",
            "Webhook-Signature",
        ] {
            assert!(refused(h).is_some(), "{h}");
        }
        for h in [
            "content-type",
            "authorization",
            "x-request-id",
            "user-agent",
        ] {
            assert!(refused(h).is_none(), "{h}");
        }
    }
}
