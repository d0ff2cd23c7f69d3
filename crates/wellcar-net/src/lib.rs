//! Network for the initramfs, only when provisioning needs it (Ignition's neednet).
//!
//! Contract:
//! - [`bring_up`] follows the kernel's `ip=` arguments ([`ip_arg`]): static addresses as given,
//!   `dhcp` (or no `ip=` at all) runs DHCPv4 ([`dhcp`]) on every non-loopback link that has a
//!   carrier within the timeout, one link at a time, keeping every lease. Each configured link
//!   gets its address, a default route through its gateway, and the DNS servers go to
//!   `resolv.conf` ([`resolv`]). It returns what it configured; no link configured is
//!   [`NetError::NoLease`] naming the links tried.
//! - [`tear_down`] removes every IPv4 address of the given links (which removes their routes)
//!   and sets them down, so systemd-networkd starts from clean links after switch root.
//! - Netlink messages come from `netlink-packet-route` over `netlink-sys` ([`rtnl`]); DHCP
//!   packets from `dhcproto`. Synchronous, no runtime, nothing printed.

pub mod dhcp;
pub mod ip_arg;
pub mod resolv;
pub mod rtnl;
mod sockopt;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

pub use ip_arg::IpArg;

/// Why the network could not be brought up or torn down.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A netlink request failed.
    #[error("netlink {what}: {source}")]
    Netlink {
        /// The request (`add address 10.0.0.5/24 to eth0`, ...).
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A DHCP exchange failed on an interface.
    #[error("DHCP on {interface}: {reason}")]
    Dhcp {
        /// The interface.
        interface: String,
        /// What went wrong.
        reason: String,
    },
    /// No interface got configured.
    #[error("no network: {tried}")]
    NoLease {
        /// What was tried, per link.
        tried: String,
    },
    /// An `ip=` argument does not parse or names an unknown interface.
    #[error("kernel parameter ip={value:?}: {reason}")]
    BadIpArg {
        /// The value.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// Writing `resolv.conf` failed.
    #[error("writing {path}: {source}")]
    Resolv {
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// One configured interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configured {
    /// Interface name.
    pub interface: String,
    /// Interface index.
    pub index: u32,
    /// Its address.
    pub address: Ipv4Addr,
    /// Prefix length.
    pub prefix_len: u8,
    /// Default gateway, if any.
    pub gateway: Option<Ipv4Addr>,
    /// DNS servers.
    pub dns: Vec<Ipv4Addr>,
    /// Search domain, if any.
    pub domain: Option<String>,
    /// How: `dhcp` (with the server's address) or `static`.
    pub method: String,
}

/// How long to wait for carriers and leases.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For links to report a carrier after being set up.
    pub carrier: Duration,
    /// For one DHCP exchange (DISCOVER to ACK) on one link.
    pub dhcp: Duration,
}

impl Default for Timeouts {
    /// 10 s for carriers, 15 s per DHCP exchange.
    fn default() -> Self {
        Timeouts {
            carrier: Duration::from_secs(10),
            dhcp: Duration::from_secs(15),
        }
    }
}

/// Brings the network up as the module docs say; `resolv_conf` is where DNS goes
/// (`/etc/resolv.conf` in the initramfs).
pub fn bring_up(
    args: &[IpArg],
    timeouts: Timeouts,
    resolv_conf: &Path,
) -> Result<Vec<Configured>, NetError> {
    let mut rtnl = rtnl::Rtnl::open()?;
    let links: Vec<rtnl::Link> = rtnl.links()?.into_iter().filter(|l| !l.loopback).collect();
    let mut configured = Vec::new();
    let mut tried = Vec::new();
    let statics: Vec<&ip_arg::Static> = args
        .iter()
        .filter_map(|a| match a {
            IpArg::Static(s) => Some(s),
            _ => None,
        })
        .collect();
    for s in &statics {
        let link = match &s.device {
            Some(dev) => links.iter().find(|l| &l.name == dev),
            None => links.first(),
        }
        .ok_or_else(|| NetError::BadIpArg {
            value: s.text.clone(),
            reason: "no such interface".into(),
        })?;
        rtnl.set_up(link.index, &link.name, true)?;
        let c = Configured {
            interface: link.name.clone(),
            index: link.index,
            address: s.address,
            prefix_len: s.prefix_len,
            gateway: s.gateway,
            dns: s.dns.clone(),
            domain: None,
            method: "static".into(),
        };
        apply(&mut rtnl, &c)?;
        configured.push(c);
    }
    let want_dhcp = args.is_empty() || args.iter().any(|a| matches!(a, IpArg::Dhcp { .. }));
    if want_dhcp {
        let only: Option<&str> = args.iter().find_map(|a| match a {
            IpArg::Dhcp { device } => device.as_deref(),
            _ => None,
        });
        let candidates: Vec<&rtnl::Link> = links
            .iter()
            .filter(|l| only.is_none_or(|d| d == l.name))
            .filter(|l| !configured.iter().any(|c: &Configured| c.index == l.index))
            .collect();
        for link in &candidates {
            rtnl.set_up(link.index, &link.name, true)?;
        }
        let deadline = Instant::now() + timeouts.carrier;
        let with_carrier = loop {
            let now: Vec<rtnl::Link> = rtnl
                .links()?
                .into_iter()
                .filter(|l| candidates.iter().any(|c| c.index == l.index) && l.carrier)
                .collect();
            if now.len() == candidates.len() || Instant::now() >= deadline {
                break now;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        for link in &candidates {
            if !with_carrier.iter().any(|l| l.index == link.index) {
                tried.push(format!("{}: no carrier", link.name));
            }
        }
        for link in &with_carrier {
            match dhcp::lease(&link.name, &link.mac, timeouts.dhcp) {
                Ok(lease) => {
                    let c = Configured {
                        interface: link.name.clone(),
                        index: link.index,
                        address: lease.address,
                        prefix_len: lease.prefix_len,
                        gateway: lease.router,
                        dns: lease.dns,
                        domain: lease.domain,
                        method: format!("dhcp from {}", lease.server),
                    };
                    apply(&mut rtnl, &c)?;
                    configured.push(c);
                }
                Err(e) => tried.push(e.to_string()),
            }
        }
    }
    if configured.is_empty() {
        if tried.is_empty() {
            tried.push("no network interface".into());
        }
        return Err(NetError::NoLease {
            tried: tried.join("; "),
        });
    }
    resolv::write(resolv_conf, &configured)?;
    Ok(configured)
}

fn apply(rtnl: &mut rtnl::Rtnl, c: &Configured) -> Result<(), NetError> {
    rtnl.add_address(c.index, &c.interface, c.address, c.prefix_len)?;
    if let Some(gw) = c.gateway {
        rtnl.add_default_route(c.index, &c.interface, gw)?;
    }
    Ok(())
}

/// Removes the IPv4 addresses of `configured` links and sets them down.
pub fn tear_down(configured: &[Configured]) -> Result<(), NetError> {
    let mut rtnl = rtnl::Rtnl::open()?;
    for c in configured {
        rtnl.flush_addresses(c.index, &c.interface)?;
        rtnl.set_up(c.index, &c.interface, false)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
