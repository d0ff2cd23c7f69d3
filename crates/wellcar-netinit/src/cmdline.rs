//! The kernel's and dracut's network arguments, parsed into a [`NetConfig`].
//!
//! Contract (pure, no I/O):
//! - `ip=dhcp` (also `on`, `any`, `both`, `bootp`): DHCPv4 on every interface with a link;
//! - `ip=<device>:dhcp`: DHCPv4 on that device only;
//! - `ip=<client-IP>:<peer>:<gateway-IP>:<netmask>:<hostname>:<device>:<autoconf>[:<dns0>[:<dns1>]]`
//!   (kernel `nfsroot.txt` / dracut form): with autoconf `off`/`none`/empty a static address
//!   (netmask dotted or a prefix length; an empty device means "the only interface with a
//!   link"); with autoconf `dhcp`/`on`/`any` DHCP on that device;
//! - `ip=off` / `ip=none`: no network from this argument;
//! - several `ip=` arguments add up; `nameserver=<IPv4>` (repeatable) adds DNS servers;
//! - no `ip=` at all means `ip=dhcp` (Ignition's default once the network is needed).
//!
//! IPv4 only: an IPv6 address or `dhcp6` is refused with an error naming the argument. Every
//! error names the whole argument that failed and the field in it.

use std::net::Ipv4Addr;

/// What the command line asks of the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// One entry per `ip=` argument, in command-line order.
    pub interfaces: Vec<IpConfig>,
    /// From `nameserver=`, in order; written before any per-interface DNS server.
    pub nameservers: Vec<Ipv4Addr>,
}

/// One `ip=` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpConfig {
    /// DHCPv4 on `device`, or on every interface with a link when `None`.
    Dhcp {
        device: Option<String>,
        /// The hostname field of the long form, if given.
        hostname: Option<String>,
    },
    Static(StaticConfig),
}

/// A static IPv4 configuration from the long `ip=` form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticConfig {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub hostname: Option<String>,
    /// `None`: the only interface with a link.
    pub device: Option<String>,
    pub dns: Vec<Ipv4Addr>,
}

/// A network argument the kernel command line got wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    #[error("kernel argument `{argument}`: {field} `{value}` is not an IPv4 address")]
    BadAddress {
        argument: String,
        field: &'static str,
        value: String,
    },
    #[error("kernel argument `{argument}`: netmask `{value}` is neither a dotted netmask nor a prefix length 0-32")]
    BadNetmask { argument: String, value: String },
    #[error("kernel argument `{argument}`: autoconf method `{value}` is not supported (use dhcp, on, any, off or none; IPv6 is not supported)")]
    BadAutoconf { argument: String, value: String },
    #[error("kernel argument `{argument}`: {field} is required for a static address")]
    Missing {
        argument: String,
        field: &'static str,
    },
    #[error("kernel argument `{argument}`: {count} fields, at most 9 are understood")]
    TooManyFields { argument: String, count: usize },
}

impl NetConfig {
    /// Parses the network arguments out of a whole kernel command line (`/proc/cmdline`),
    /// ignoring every other argument.
    pub fn from_cmdline(cmdline: &str) -> Result<NetConfig, CmdlineError> {
        let mut interfaces = Vec::new();
        let mut nameservers = Vec::new();
        let mut saw_ip = false;
        for argument in cmdline.split_whitespace() {
            if let Some(value) = argument.strip_prefix("ip=") {
                saw_ip = true;
                if let Some(config) = parse_ip(argument, value)? {
                    interfaces.push(config);
                }
            } else if let Some(value) = argument.strip_prefix("nameserver=") {
                nameservers.push(parse_addr(argument, "nameserver", value)?);
            }
        }
        if !saw_ip {
            interfaces.push(IpConfig::Dhcp {
                device: None,
                hostname: None,
            });
        }
        Ok(NetConfig {
            interfaces,
            nameservers,
        })
    }
}

/// Autoconf values that mean DHCPv4.
const DHCP_WORDS: &[&str] = &["dhcp", "on", "any", "both", "bootp"];
/// Autoconf values that mean a static configuration (or nothing).
const OFF_WORDS: &[&str] = &["off", "none", ""];

fn parse_ip(argument: &str, value: &str) -> Result<Option<IpConfig>, CmdlineError> {
    if value.starts_with('[') {
        return Err(CmdlineError::BadAddress {
            argument: argument.to_owned(),
            field: "client-IP",
            value: value.to_owned(),
        });
    }
    let fields: Vec<&str> = value.split(':').collect();
    match fields.as_slice() {
        [word] if DHCP_WORDS.contains(word) => {
            return Ok(Some(IpConfig::Dhcp {
                device: None,
                hostname: None,
            }))
        }
        [word] if OFF_WORDS.contains(word) => return Ok(None),
        [word] => {
            return Err(CmdlineError::BadAutoconf {
                argument: argument.to_owned(),
                value: (*word).to_owned(),
            })
        }
        [device, method] => {
            return if DHCP_WORDS.contains(method) {
                Ok(Some(IpConfig::Dhcp {
                    device: non_empty(device),
                    hostname: None,
                }))
            } else {
                Err(CmdlineError::BadAutoconf {
                    argument: argument.to_owned(),
                    value: (*method).to_owned(),
                })
            };
        }
        _ => {}
    }
    if fields.len() > 9 {
        return Err(CmdlineError::TooManyFields {
            argument: argument.to_owned(),
            count: fields.len(),
        });
    }
    let field = |i: usize| fields.get(i).copied().unwrap_or("");
    let hostname = non_empty(field(4));
    let device = non_empty(field(5));
    let autoconf = field(6);
    if DHCP_WORDS.contains(&autoconf) {
        return Ok(Some(IpConfig::Dhcp { device, hostname }));
    }
    if !OFF_WORDS.contains(&autoconf) {
        return Err(CmdlineError::BadAutoconf {
            argument: argument.to_owned(),
            value: autoconf.to_owned(),
        });
    }
    let required = |i: usize, name: &'static str| match field(i) {
        "" => Err(CmdlineError::Missing {
            argument: argument.to_owned(),
            field: name,
        }),
        text => parse_addr(argument, name, text),
    };
    let optional = |i: usize, name: &'static str| match field(i) {
        "" => Ok(None),
        text => parse_addr(argument, name, text).map(Some),
    };
    let address = required(0, "client-IP")?;
    optional(1, "peer")?;
    let gateway = optional(2, "gateway-IP")?;
    let prefix_len = match field(3) {
        "" => {
            return Err(CmdlineError::Missing {
                argument: argument.to_owned(),
                field: "netmask",
            })
        }
        text => parse_netmask(argument, text)?,
    };
    let dns = [optional(7, "dns0")?, optional(8, "dns1")?]
        .into_iter()
        .flatten()
        .collect();
    Ok(Some(IpConfig::Static(StaticConfig {
        address,
        prefix_len,
        gateway,
        hostname,
        device,
        dns,
    })))
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

fn parse_addr(argument: &str, field: &'static str, value: &str) -> Result<Ipv4Addr, CmdlineError> {
    value.parse().map_err(|_| CmdlineError::BadAddress {
        argument: argument.to_owned(),
        field,
        value: value.to_owned(),
    })
}

/// A dotted netmask with contiguous ones (`255.255.255.0`) or a prefix length (`24`).
fn parse_netmask(argument: &str, value: &str) -> Result<u8, CmdlineError> {
    let bad = || CmdlineError::BadNetmask {
        argument: argument.to_owned(),
        value: value.to_owned(),
    };
    if let Ok(prefix) = value.parse::<u8>() {
        return if prefix <= 32 { Ok(prefix) } else { Err(bad()) };
    }
    let mask: Ipv4Addr = value.parse().map_err(|_| bad())?;
    prefix_of_mask(mask).ok_or_else(bad)
}

/// The prefix length of a contiguous netmask, `None` for a mask like `255.0.255.0`.
pub fn prefix_of_mask(mask: Ipv4Addr) -> Option<u8> {
    let bits = u32::from(mask);
    let ones = bits.leading_ones();
    (bits.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dhcp(device: Option<&str>) -> IpConfig {
        IpConfig::Dhcp {
            device: device.map(str::to_owned),
            hostname: None,
        }
    }

    #[test]
    fn no_ip_argument_means_dhcp_everywhere() {
        let config = NetConfig::from_cmdline("root=/dev/vda quiet").unwrap();
        assert_eq!(config.interfaces, vec![dhcp(None)]);
        assert!(config.nameservers.is_empty());
    }

    #[test]
    fn short_forms() {
        let config =
            NetConfig::from_cmdline("ip=dhcp ip=eth1:dhcp ip=eth2:on nameserver=9.9.9.9").unwrap();
        assert_eq!(
            config.interfaces,
            vec![dhcp(None), dhcp(Some("eth1")), dhcp(Some("eth2"))]
        );
        assert_eq!(config.nameservers, vec![Ipv4Addr::new(9, 9, 9, 9)]);
        assert!(NetConfig::from_cmdline("ip=off")
            .unwrap()
            .interfaces
            .is_empty());
    }

    #[test]
    fn long_static_form_with_dns() {
        let config = NetConfig::from_cmdline(
            "ip=10.0.0.5::10.0.0.1:255.255.255.0:node1:eth0:none:10.0.0.53:10.0.0.54",
        )
        .unwrap();
        assert_eq!(
            config.interfaces,
            vec![IpConfig::Static(StaticConfig {
                address: Ipv4Addr::new(10, 0, 0, 5),
                prefix_len: 24,
                gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
                hostname: Some("node1".into()),
                device: Some("eth0".into()),
                dns: vec![Ipv4Addr::new(10, 0, 0, 53), Ipv4Addr::new(10, 0, 0, 54)],
            })]
        );
    }

    #[test]
    fn long_form_prefix_length_and_no_gateway() {
        let config = NetConfig::from_cmdline("ip=192.168.1.2:::16::eth0:off").unwrap();
        let IpConfig::Static(config) = &config.interfaces[0] else {
            panic!("not static: {config:?}")
        };
        assert_eq!(config.prefix_len, 16);
        assert_eq!(config.gateway, None);
        assert_eq!(config.hostname, None);
    }

    #[test]
    fn long_form_with_dhcp_autoconf() {
        let config = NetConfig::from_cmdline("ip=::::node2:eth3:dhcp").unwrap();
        assert_eq!(
            config.interfaces,
            vec![IpConfig::Dhcp {
                device: Some("eth3".into()),
                hostname: Some("node2".into())
            }]
        );
    }

    #[test]
    fn errors_name_the_argument_and_field() {
        let err =
            NetConfig::from_cmdline("quiet ip=10.0.0.300::10.0.0.1:24::eth0:none").unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel argument `ip=10.0.0.300::10.0.0.1:24::eth0:none`: client-IP `10.0.0.300` is not an IPv4 address"
        );
        let err =
            NetConfig::from_cmdline("ip=10.0.0.3::10.0.0.1:255.0.255.0::eth0:none").unwrap_err();
        assert!(
            matches!(err, CmdlineError::BadNetmask { ref value, .. } if value == "255.0.255.0")
        );
        let err = NetConfig::from_cmdline("ip=10.0.0.3::10.0.0.1:33::eth0:none").unwrap_err();
        assert!(matches!(err, CmdlineError::BadNetmask { .. }));
        let err = NetConfig::from_cmdline("ip=eth0:dhcp6").unwrap_err();
        assert!(err.to_string().contains("`ip=eth0:dhcp6`"), "{err}");
        let err = NetConfig::from_cmdline("ip=10.0.0.3::::::none").unwrap_err();
        assert_eq!(
            err,
            CmdlineError::Missing {
                argument: "ip=10.0.0.3::::::none".into(),
                field: "netmask"
            }
        );
        let err = NetConfig::from_cmdline("nameserver=dns.example").unwrap_err();
        assert!(
            err.to_string().contains("nameserver `dns.example`"),
            "{err}"
        );
        let err = NetConfig::from_cmdline("ip=[fd00::2]::[fd00::1]:64::eth0:none").unwrap_err();
        assert!(matches!(
            err,
            CmdlineError::BadAddress {
                field: "client-IP",
                ..
            }
        ));
        let err =
            NetConfig::from_cmdline("ip=1.2.3.4:::24::eth0:none:1.1.1.1:2.2.2.2:x").unwrap_err();
        assert!(matches!(err, CmdlineError::TooManyFields { count: 10, .. }));
    }

    #[test]
    fn netmask_prefixes() {
        assert_eq!(prefix_of_mask(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(prefix_of_mask(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
        assert_eq!(prefix_of_mask(Ipv4Addr::new(255, 255, 240, 0)), Some(20));
        assert_eq!(prefix_of_mask(Ipv4Addr::new(255, 0, 255, 0)), None);
    }
}
