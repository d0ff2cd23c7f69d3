//! Networking in the initramfs, for fetching a remote Ignition config before switch root.
//!
//! Contract:
//! - [`NetConfig::from_cmdline`] reads `ip=` / `nameserver=` from the kernel command line
//!   (no `ip=`: DHCP on every interface with a link).
//! - [`bring_up`] applies it: sets the interfaces up, waits (bounded) for a carrier, runs DHCPv4
//!   on every candidate interface with a link at once (first lease wins, the others stop), or
//!   adds the static address; adds the address with its prefix and the default route via the
//!   gateway; writes resolv.conf. It returns a [`NetworkState`] describing everything it did
//!   (the caller prints it). On any error everything already applied is undone first.
//! - [`NetworkState::teardown`] removes the addresses and routes it added and sets every link
//!   it set up back down, so systemd-networkd starts from clean interfaces after switch root.
//!
//! Nothing here prints; errors name the interfaces, addresses and arguments involved. Runs in
//! the calling thread's network namespace.

pub mod cmdline;
pub mod dhcp;
pub mod resolv;
pub mod rtnl;

#[cfg(test)]
mod netns_tests;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use cmdline::{CmdlineError, IpConfig, NetConfig, StaticConfig};
pub use dhcp::{DhcpError, Lease};
pub use resolv::ResolvConfError;
pub use rtnl::{Ipv4Net, Link, Rtnl, RtnlError};

/// Bounds and paths for [`bring_up`].
#[derive(Debug, Clone)]
pub struct BringUpOptions {
    /// How long to wait for a carrier on the candidate interfaces.
    pub carrier_timeout: Duration,
    /// How long DHCP may take in total (all interfaces run at once).
    pub dhcp_timeout: Duration,
    /// Where resolv.conf goes (`/etc/resolv.conf` in the initramfs).
    pub resolv_conf: PathBuf,
}

impl Default for BringUpOptions {
    fn default() -> Self {
        BringUpOptions {
            carrier_timeout: Duration::from_secs(10),
            dhcp_timeout: Duration::from_secs(30),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
        }
    }
}

/// Why the network could not be brought up (or torn down).
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Rtnl(#[from] RtnlError),
    #[error("no network interface besides lo")]
    NoInterfaces,
    #[error("interface {name} (from ip=) does not exist; interfaces: {}", known.join(", "))]
    NoSuchInterface { name: String, known: Vec<String> },
    #[error("no carrier within {waited:?} on {}", interfaces.join(", "))]
    NoCarrier {
        interfaces: Vec<String>,
        waited: Duration,
    },
    #[error("static ip= names no device and several interfaces have a link: {}", interfaces.join(", "))]
    AmbiguousDevice { interfaces: Vec<String> },
    #[error("interface {name} has no hardware address, DHCP needs one")]
    NoMac { name: String },
    #[error("DHCP failed on every interface tried ({}): {}", interfaces.join(", "), errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Dhcp {
        interfaces: Vec<String>,
        errors: Vec<DhcpError>,
    },
    #[error(transparent)]
    ResolvConf(#[from] ResolvConfError),
    #[error("tearing down the network: {}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Teardown { errors: Vec<RtnlError> },
}

/// Where an interface's configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Static,
    Dhcp {
        server: Ipv4Addr,
        lease_time: Option<Duration>,
    },
}

/// One configured interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configured {
    pub link: Link,
    pub address: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub hostname: Option<String>,
    pub source: Source,
}

impl std::fmt::Display for Configured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.link.name, self.address)?;
        if let Some(gateway) = self.gateway {
            write!(f, " via {gateway}")?;
        }
        match &self.source {
            Source::Static => write!(f, " (static)"),
            Source::Dhcp { server, .. } => write!(f, " (DHCP from {server})"),
        }
    }
}

/// Everything [`bring_up`] changed, to report and to undo.
#[derive(Debug, Default)]
#[must_use = "the network must be torn down before switch root"]
pub struct NetworkState {
    /// Links this crate set up (they are set down again on teardown).
    pub links_set_up: Vec<Link>,
    pub configured: Vec<Configured>,
    /// The resolv.conf written, if any server was known.
    pub resolv_conf: Option<PathBuf>,
}

impl NetworkState {
    /// The first hostname given by `ip=` or DHCP.
    pub fn hostname(&self) -> Option<&str> {
        self.configured
            .iter()
            .find_map(|configured| configured.hostname.as_deref())
    }

    /// Removes the routes and addresses added and sets the links down again. Carries on past
    /// failures and reports them all at the end.
    pub fn teardown(self) -> Result<(), NetError> {
        let mut rtnl = Rtnl::open()?;
        let mut errors = Vec::new();
        for configured in &self.configured {
            if let Some(gateway) = configured.gateway {
                // The kernel already dropped the route if the link lost its address or went down.
                if let Err(error) = rtnl.del_default_route(&configured.link, gateway) {
                    if !is_errno(&error, ESRCH) {
                        errors.push(error);
                    }
                }
            }
            if let Err(error) = rtnl.del_address(&configured.link, configured.address) {
                errors.push(error);
            }
        }
        for link in &self.links_set_up {
            if let Err(error) = rtnl.set_link_up(link, false) {
                errors.push(error);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(NetError::Teardown { errors })
        }
    }
}

/// `ESRCH`: the kernel's answer when the route to delete is already gone.
const ESRCH: i32 = 3;

fn is_errno(error: &RtnlError, errno: i32) -> bool {
    matches!(error, RtnlError::Request { source, .. } if source.raw_os_error() == Some(errno))
}

/// Brings the network up as `config` says. On error, whatever was applied is torn down again.
pub fn bring_up(config: &NetConfig, options: &BringUpOptions) -> Result<NetworkState, NetError> {
    let mut state = NetworkState::default();
    match apply(config, options, &mut state) {
        Ok(()) => Ok(state),
        Err(error) => {
            // The original error is the one worth reporting; teardown is best effort here.
            let _ = state.teardown();
            Err(error)
        }
    }
}

fn apply(
    config: &NetConfig,
    options: &BringUpOptions,
    state: &mut NetworkState,
) -> Result<(), NetError> {
    let mut rtnl = Rtnl::open()?;
    let links: Vec<Link> = rtnl
        .links()?
        .into_iter()
        .filter(|link| !link.loopback)
        .collect();
    if links.is_empty() {
        return Err(NetError::NoInterfaces);
    }
    let mut dns = config.nameservers.clone();
    for interface in &config.interfaces {
        let (device, hostname) = match interface {
            IpConfig::Dhcp { device, hostname } => (device, hostname),
            IpConfig::Static(config) => (&config.device, &config.hostname),
        };
        let candidates = match device {
            Some(name) => vec![find_link(&links, name)?],
            None => links.clone(),
        };
        let with_carrier = set_up_and_wait(&mut rtnl, &candidates, options, state)?;
        let configured = match interface {
            IpConfig::Static(config) => {
                let link = match with_carrier.as_slice() {
                    [link] => link.clone(),
                    _ if device.is_some() => with_carrier[0].clone(),
                    _ => {
                        return Err(NetError::AmbiguousDevice {
                            interfaces: names(&with_carrier),
                        })
                    }
                };
                Configured {
                    link,
                    address: Ipv4Net {
                        address: config.address,
                        prefix_len: config.prefix_len,
                    },
                    gateway: config.gateway,
                    dns: config.dns.clone(),
                    hostname: hostname.clone(),
                    source: Source::Static,
                }
            }
            IpConfig::Dhcp { .. } => {
                let lease = first_lease(&with_carrier, options.dhcp_timeout)?;
                let link = with_carrier
                    .iter()
                    .find(|link| link.name == lease.interface)
                    .cloned()
                    .unwrap_or_else(|| with_carrier[0].clone());
                Configured {
                    link,
                    address: Ipv4Net {
                        address: lease.address,
                        prefix_len: lease.prefix_len,
                    },
                    gateway: lease.routers.first().copied(),
                    dns: lease.dns,
                    hostname: hostname.clone().or(lease.hostname),
                    source: Source::Dhcp {
                        server: lease.server,
                        lease_time: lease.lease_time,
                    },
                }
            }
        };
        rtnl.add_address(&configured.link, configured.address)?;
        let gateway = configured.gateway;
        let link = configured.link.clone();
        dns.extend(configured.dns.iter().copied());
        // Recorded before the route, so a failing route still gets the address removed.
        state.configured.push(Configured {
            gateway: None,
            ..configured
        });
        if let Some(gateway) = gateway {
            rtnl.add_default_route(&link, gateway)?;
            if let Some(last) = state.configured.last_mut() {
                last.gateway = Some(gateway);
            }
        }
    }
    if resolv::write_resolv_conf(&options.resolv_conf, &dns)? {
        state.resolv_conf = Some(options.resolv_conf.clone());
    }
    Ok(())
}

fn names(links: &[Link]) -> Vec<String> {
    links.iter().map(|link| link.name.clone()).collect()
}

fn find_link(links: &[Link], name: &str) -> Result<Link, NetError> {
    links
        .iter()
        .find(|link| link.name == name)
        .cloned()
        .ok_or_else(|| NetError::NoSuchInterface {
            name: name.to_owned(),
            known: names(links),
        })
}

/// Sets `candidates` up (recording those that were down) and waits until at least one has a
/// carrier; returns those that have one then.
fn set_up_and_wait(
    rtnl: &mut Rtnl,
    candidates: &[Link],
    options: &BringUpOptions,
    state: &mut NetworkState,
) -> Result<Vec<Link>, NetError> {
    for link in candidates {
        if !link.up && !state.links_set_up.iter().any(|up| up.index == link.index) {
            rtnl.set_link_up(link, true)?;
            state.links_set_up.push(link.clone());
        }
    }
    let started = Instant::now();
    loop {
        let with_carrier: Vec<Link> = rtnl
            .links()?
            .into_iter()
            .filter(|link| link.carrier && candidates.iter().any(|c| c.index == link.index))
            .collect();
        if !with_carrier.is_empty() {
            return Ok(with_carrier);
        }
        if started.elapsed() >= options.carrier_timeout {
            return Err(NetError::NoCarrier {
                interfaces: names(candidates),
                waited: started.elapsed(),
            });
        }
        // Carrier comes from hardware; polling the link list is the simple bounded wait.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs DHCP on every link at once; the first lease wins and stops the others.
fn first_lease(links: &[Link], timeout: Duration) -> Result<Lease, NetError> {
    let deadline = Instant::now() + timeout;
    let cancel = AtomicBool::new(false);
    let mut macs = Vec::new();
    for link in links {
        let mac = link.mac.ok_or_else(|| NetError::NoMac {
            name: link.name.clone(),
        })?;
        macs.push((link.name.as_str(), mac));
    }
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        for &(name, mac) in &macs {
            let sender = sender.clone();
            let cancel = &cancel;
            scope.spawn(move || {
                // The receiver outlives every sender: it is dropped only after the scope.
                let _ = sender.send(dhcp::acquire(name, mac, deadline, cancel));
            });
        }
        drop(sender);
        let mut errors = Vec::new();
        for result in receiver.iter() {
            match result {
                Ok(lease) => {
                    cancel.store(true, Ordering::Relaxed);
                    return Ok(lease);
                }
                Err(error) => errors.push(error),
            }
        }
        Err(NetError::Dhcp {
            interfaces: macs.iter().map(|(name, _)| (*name).to_owned()).collect(),
            errors,
        })
    })
}
