//! Who may ask: loopback clients only by default, plus the networks given with `--allow`.
//! A sidecar bound beyond loopback must not become an open resolver or an amplifier.

use std::net::IpAddr;

use ipnet::IpNet;

/// The clients the server answers.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// Networks allowed besides loopback.
    allowed: Vec<IpNet>,
    /// Refuse ANY queries (the amplifier's favourite), as when bound beyond loopback.
    refuse_any: bool,
}

impl Access {
    /// Loopback clients and those in `allowed`; `refuse_any` answers ANY with NOTIMP.
    pub fn new(allowed: Vec<IpNet>, refuse_any: bool) -> Self {
        Self {
            allowed,
            refuse_any,
        }
    }

    /// Whether `client` may be answered.
    #[inline]
    pub fn allows(&self, client: IpAddr) -> bool {
        let client = match client {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
            v4 => v4,
        };
        client.is_loopback() || self.allowed.iter().any(|net| net.contains(&client))
    }

    /// Whether ANY queries are refused.
    pub fn refuses_any(&self) -> bool {
        self.refuse_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_always_others_only_when_allowed() {
        let none = Access::default();
        assert!(none.allows("127.0.0.1".parse().unwrap()));
        assert!(none.allows("127.9.9.9".parse().unwrap()));
        assert!(none.allows("::1".parse().unwrap()));
        assert!(none.allows("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!none.allows("10.0.0.1".parse().unwrap()));
        let some = Access::new(vec!["10.0.0.0/8".parse().unwrap()], true);
        assert!(some.allows("10.1.2.3".parse().unwrap()));
        assert!(!some.allows("192.168.0.1".parse().unwrap()));
        assert!(some.refuses_any());
    }
}
