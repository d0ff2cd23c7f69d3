//! The kernel's (and dracut's) `ip=` argument.
//!
//! Accepted forms: `dhcp` / `on` / `any` (DHCP on every link with a carrier), `<dev>:dhcp`,
//! `off` / `none`, and the static form
//! `<client-ip>:<peer>:<gateway>:<netmask>:<hostname>:<dev>:<autoconf>:<dns0>:<dns1>`, where the
//! netmask is dotted (`255.255.255.0`) or a prefix length (`24`), empty fields are unset and an
//! `<autoconf>` of `dhcp` makes it DHCP on `<dev>`. Several `ip=` arguments may be given.

use std::net::Ipv4Addr;

use crate::NetError;

/// One `ip=` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpArg {
    /// DHCP, on one interface or on all with a carrier.
    Dhcp {
        /// The interface, if one is named.
        device: Option<String>,
    },
    /// No network from this argument.
    Off,
    /// A static address.
    Static(Static),
}

/// A static configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Static {
    /// The argument as given, for messages.
    pub text: String,
    /// The address.
    pub address: Ipv4Addr,
    /// Prefix length (from the netmask; 24 when none is given).
    pub prefix_len: u8,
    /// Default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Hostname.
    pub hostname: Option<String>,
    /// Interface (the first link when unset).
    pub device: Option<String>,
    /// DNS servers.
    pub dns: Vec<Ipv4Addr>,
}

/// Parses one `ip=` value.
pub fn parse(value: &str) -> Result<IpArg, NetError> {
    let bad = |reason: String| NetError::BadIpArg {
        value: value.to_string(),
        reason,
    };
    match value {
        "dhcp" | "on" | "any" => return Ok(IpArg::Dhcp { device: None }),
        "off" | "none" => return Ok(IpArg::Off),
        _ => {}
    }
    let fields: Vec<&str> = value.split(':').collect();
    if fields.len() == 2 && matches!(fields[1], "dhcp" | "on" | "any") {
        return Ok(IpArg::Dhcp {
            device: Some(fields[0].to_string()).filter(|d| !d.is_empty()),
        });
    }
    let field = |i: usize| fields.get(i).copied().filter(|f| !f.is_empty());
    let ip = |i: usize, name: &str| -> Result<Option<Ipv4Addr>, NetError> {
        field(i)
            .map(|f| {
                f.parse::<Ipv4Addr>()
                    .map_err(|_| bad(format!("{name} {f:?} is not an IPv4 address")))
            })
            .transpose()
    };
    let device = field(5).map(str::to_string);
    if matches!(field(6), Some("dhcp" | "on" | "any")) {
        return Ok(IpArg::Dhcp { device });
    }
    let address = ip(0, "client address")?
        .ok_or_else(|| bad("expected dhcp, off, <dev>:dhcp or <client-ip>:...".into()))?;
    let prefix_len = match field(3) {
        None => 24,
        Some(mask) => match mask.parse::<u8>() {
            Ok(n) if n <= 32 => n,
            Ok(_) => return Err(bad(format!("prefix length {mask} is above 32"))),
            Err(_) => {
                let m: Ipv4Addr = mask
                    .parse()
                    .map_err(|_| bad(format!("netmask {mask:?} is neither dotted nor a length")))?;
                let bits = u32::from(m);
                if bits.leading_ones() + bits.trailing_zeros() != 32 {
                    return Err(bad(format!("netmask {mask} is not contiguous")));
                }
                bits.leading_ones() as u8
            }
        },
    };
    let dns = [ip(7, "dns0")?, ip(8, "dns1")?]
        .into_iter()
        .flatten()
        .collect();
    Ok(IpArg::Static(Static {
        text: value.to_string(),
        address,
        prefix_len,
        gateway: ip(2, "gateway")?,
        hostname: field(4).map(str::to_string),
        device,
        dns,
    }))
}

/// Every `ip=` of a command line (already split into words), in order.
pub fn from_cmdline_words<'a>(
    words: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<IpArg>, NetError> {
    words
        .into_iter()
        .filter_map(|w| w.strip_prefix("ip="))
        .map(parse)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dhcp_off_and_device_forms() {
        assert_eq!(parse("dhcp").unwrap(), IpArg::Dhcp { device: None });
        assert_eq!(parse("off").unwrap(), IpArg::Off);
        assert_eq!(
            parse("eth1:dhcp").unwrap(),
            IpArg::Dhcp {
                device: Some("eth1".into())
            }
        );
        assert_eq!(
            parse(":::::ens3:dhcp").unwrap(),
            IpArg::Dhcp {
                device: Some("ens3".into())
            }
        );
    }

    #[test]
    fn static_form_with_dotted_and_length_masks() {
        let IpArg::Static(s) =
            parse("10.0.0.5::10.0.0.1:255.255.255.0:node1:eth0:none:10.0.0.53:1.1.1.1").unwrap()
        else {
            panic!("not static")
        };
        assert_eq!(s.address, Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(s.prefix_len, 24);
        assert_eq!(s.gateway, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(s.hostname.as_deref(), Some("node1"));
        assert_eq!(s.device.as_deref(), Some("eth0"));
        assert_eq!(
            s.dns,
            [Ipv4Addr::new(10, 0, 0, 53), Ipv4Addr::new(1, 1, 1, 1)]
        );
        let IpArg::Static(s) = parse("192.168.1.9:::20").unwrap() else {
            panic!("not static")
        };
        assert_eq!((s.prefix_len, s.gateway, s.device), (20, None, None));
    }

    #[test]
    fn bad_values_name_the_field() {
        for (value, needle) in [
            ("10.0.0.300", "client address"),
            ("10.0.0.5::gw", "gateway"),
            ("10.0.0.5:::255.0.255.0", "not contiguous"),
            ("10.0.0.5:::33", "above 32"),
            ("bogus", "client address \"bogus\""),
        ] {
            let err = parse(value).unwrap_err().to_string();
            assert!(err.contains(needle) && err.contains(value), "{err}");
        }
        let words = ["root=LABEL=ROOT", "ip=dhcp", "ip=off"];
        assert_eq!(from_cmdline_words(words).unwrap().len(), 2);
    }
}
