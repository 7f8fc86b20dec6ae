//! User-facing filters: validated, turned into the kernel's `Filter`, and
//! applied in userspace to sock_diag results (which have no owner process).

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;
use tracer_common::{Filter, AF_INET, AF_INET6, TASK_COMM_LEN};

use crate::host::diag::DiagSocket;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FilterSpec {
    /// Owner process id (tgid).
    pub pid: Option<u32>,
    /// Owner command name (exact, as in /proc/PID/comm, at most 15 bytes).
    pub comm: Option<String>,
    /// Local or remote port.
    pub port: Option<u16>,
    pub lport: Option<u16>,
    pub rport: Option<u16>,
    /// Remote address prefix.
    pub addr: Option<IpNet>,
    pub family: Option<Family>,
    /// Network namespace (inode), resolved from `--netns`.
    pub netns: Option<u32>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("--comm {0:?} is longer than the kernel's 15-byte command name")]
    CommTooLong(String),
    #[error("--comm must not be empty")]
    CommEmpty,
    #[error("port 0 cannot be filtered on")]
    PortZero,
    #[error("--addr {0} is an {1} prefix but the family filter asks for {2}")]
    FamilyConflict(IpNet, &'static str, &'static str),
}

fn fam_name(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "IPv4",
        Family::Ipv6 => "IPv6",
    }
}

impl FilterSpec {
    pub fn validate(&self) -> Result<(), FilterError> {
        if let Some(c) = &self.comm {
            if c.is_empty() {
                return Err(FilterError::CommEmpty);
            }
            if c.len() >= TASK_COMM_LEN {
                return Err(FilterError::CommTooLong(c.clone()));
            }
        }
        if [self.port, self.lport, self.rport].contains(&Some(0)) {
            return Err(FilterError::PortZero);
        }
        if let (Some(net), Some(f)) = (self.addr, self.family) {
            let net_f = match net {
                IpNet::V4(_) => Family::Ipv4,
                IpNet::V6(_) => Family::Ipv6,
            };
            // An IPv4 prefix may match v4-mapped addresses of IPv6 sockets; only
            // an IPv6 prefix with -4 can never match.
            if net_f == Family::Ipv6 && f == Family::Ipv4 {
                return Err(FilterError::FamilyConflict(
                    net,
                    fam_name(net_f),
                    fam_name(f),
                ));
            }
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        *self == FilterSpec::default()
    }

    /// The kernel's form (call `validate` first).
    pub fn to_kernel(&self) -> Filter {
        let mut f = Filter {
            tgid: self.pid.unwrap_or(0),
            port: self.port.unwrap_or(0),
            lport: self.lport.unwrap_or(0),
            rport: self.rport.unwrap_or(0),
            family: match self.family {
                None => 0,
                Some(Family::Ipv4) => AF_INET,
                Some(Family::Ipv6) => AF_INET6,
            },
            any: (!self.is_empty()) as u8,
            ..Default::default()
        };
        // The kernel filters transitions by namespace; the population side
        // reads only that namespace.
        f.netns = self.netns.unwrap_or(0);
        if let Some(c) = &self.comm {
            f.has_comm = 1;
            f.comm[..c.len()].copy_from_slice(c.as_bytes());
        }
        match self.addr {
            Some(IpNet::V4(n)) => {
                f.addr[..4].copy_from_slice(&n.network().octets());
                f.addr_family = AF_INET;
                f.addr_prefix_len = n.prefix_len();
            }
            Some(IpNet::V6(n)) => {
                f.addr = n.network().octets();
                f.addr_family = AF_INET6;
                f.addr_prefix_len = n.prefix_len();
            }
            None => {}
        }
        f
    }

    /// Does a socket from sock_diag match? Process filters cannot apply
    /// (TIME_WAIT sockets have no owner) and are ignored here.
    pub fn matches_socket(&self, s: &DiagSocket) -> bool {
        let unmap = |ip: IpAddr| match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let dst = unmap(s.dst);
        if let Some(f) = self.family {
            let is_v6 = matches!(s.src, IpAddr::V6(_));
            if (f == Family::Ipv6) != is_v6 {
                return false;
            }
        }
        if self.port.is_some_and(|p| p != s.sport && p != s.dport) {
            return false;
        }
        if self.lport.is_some_and(|p| p != s.sport) || self.rport.is_some_and(|p| p != s.dport) {
            return false;
        }
        if let Some(net) = self.addr {
            if !net.contains(&dst) {
                return false;
            }
        }
        true
    }

    /// Human-readable description ("all TCP" when empty).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(p) = self.pid {
            parts.push(format!("pid {p}"));
        }
        if let Some(c) = &self.comm {
            parts.push(format!("comm {c}"));
        }
        if let Some(p) = self.port {
            parts.push(format!("port {p}"));
        }
        if let Some(p) = self.lport {
            parts.push(format!("local port {p}"));
        }
        if let Some(p) = self.rport {
            parts.push(format!("remote port {p}"));
        }
        if let Some(a) = self.addr {
            parts.push(format!("remote {a}"));
        }
        if let Some(f) = self.family {
            parts.push(fam_name(f).to_string());
        }
        if let Some(n) = self.netns {
            parts.push(format!("netns {n}"));
        }
        if parts.is_empty() {
            "all TCP".into()
        } else {
            parts.join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(src: &str, sport: u16, dst: &str, dport: u16) -> DiagSocket {
        DiagSocket::test(6, src, sport, dst, dport)
    }

    #[test]
    fn kernel_form() {
        let f = FilterSpec {
            pid: Some(42),
            comm: Some("curl".into()),
            port: Some(443),
            addr: Some("10.0.0.0/8".parse().unwrap()),
            family: Some(Family::Ipv4),
            netns: Some(4026531840),
            ..Default::default()
        };
        f.validate().unwrap();
        let k = f.to_kernel();
        assert_eq!(k.netns, 4026531840);
        assert_eq!(k.tgid, 42);
        assert_eq!(&k.comm[..5], b"curl\0");
        assert_eq!(k.has_comm, 1);
        assert_eq!(k.port, 443);
        assert_eq!(&k.addr[..4], &[10, 0, 0, 0]);
        assert_eq!(k.addr_prefix_len, 8);
        assert_eq!(k.addr_family, AF_INET);
        assert_eq!(k.family, AF_INET);
        assert_eq!(k.any, 1);
        assert_eq!(FilterSpec::default().to_kernel().any, 0);
    }

    #[test]
    fn bad_input_is_rejected() {
        let long = FilterSpec {
            comm: Some("a-very-long-command".into()),
            ..Default::default()
        };
        assert!(matches!(long.validate(), Err(FilterError::CommTooLong(_))));
        let zero = FilterSpec {
            lport: Some(0),
            ..Default::default()
        };
        assert_eq!(zero.validate(), Err(FilterError::PortZero));
        let conflict = FilterSpec {
            addr: Some("::1/128".parse().unwrap()),
            family: Some(Family::Ipv4),
            ..Default::default()
        };
        assert!(matches!(
            conflict.validate(),
            Err(FilterError::FamilyConflict(..))
        ));
    }

    #[test]
    fn socket_matching() {
        let f = FilterSpec {
            port: Some(80),
            addr: Some("127.0.0.0/8".parse().unwrap()),
            ..Default::default()
        };
        assert!(f.matches_socket(&sock("127.0.0.1", 40000, "127.0.0.1", 80)));
        assert!(f.matches_socket(&sock("127.0.0.1", 80, "127.0.0.2", 40000)));
        assert!(!f.matches_socket(&sock("127.0.0.1", 40000, "127.0.0.1", 81)));
        assert!(!f.matches_socket(&sock("10.0.0.1", 40000, "10.0.0.2", 80)));
        // v4-mapped IPv6 peers match IPv4 prefixes.
        assert!(f.matches_socket(&sock("::ffff:127.0.0.1", 80, "::ffff:127.0.0.9", 5000)));
        let v6 = FilterSpec {
            family: Some(Family::Ipv6),
            ..Default::default()
        };
        assert!(v6.matches_socket(&sock("::1", 1, "::1", 2)));
        assert!(!v6.matches_socket(&sock("127.0.0.1", 1, "127.0.0.1", 2)));
    }
}
