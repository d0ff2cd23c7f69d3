//! Links, IPv4 addresses and routes over rtnetlink, synchronously.
//!
//! Contract: one [`Rtnl`] is one `NETLINK_ROUTE` socket in the calling thread's network
//! namespace. Every change is a request with `NLM_F_ACK`, and returns only once the kernel
//! acknowledged it (or refused it: the error names the interface and address). Messages are
//! encoded by `netlink-packet-route`; nothing here writes wire formats by hand.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// An rtnetlink request that failed; `what` names the operation, interface and address.
#[derive(Debug, thiserror::Error)]
pub enum RtnlError {
    #[error("opening the rtnetlink socket: {0}")]
    Open(#[source] io::Error),
    #[error("rtnetlink: {what}: {source}")]
    Request {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("rtnetlink: {what}: undecodable answer: {detail}")]
    Decode { what: String, detail: String },
}

/// A network interface as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub up: bool,
    /// The lower layer is up (`IFF_LOWER_UP`: a cable, or a veth whose peer is up).
    pub carrier: bool,
    pub loopback: bool,
}

/// An IPv4 address on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
}

impl Ipv4Net {
    /// The subnet's broadcast address (`None` for /31 and /32).
    pub fn broadcast(&self) -> Option<Ipv4Addr> {
        (self.prefix_len < 31).then(|| {
            let host_bits = u32::MAX >> self.prefix_len;
            Ipv4Addr::from(u32::from(self.address) | host_bits)
        })
    }
}

impl std::fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

/// A synchronous rtnetlink connection.
pub struct Rtnl {
    socket: Socket,
    sequence: u32,
}

impl Rtnl {
    pub fn open() -> Result<Rtnl, RtnlError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(RtnlError::Open)?;
        socket.bind_auto().map_err(RtnlError::Open)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(RtnlError::Open)?;
        Ok(Rtnl {
            socket,
            sequence: 0,
        })
    }

    /// Every interface, in index order.
    pub fn links(&mut self) -> Result<Vec<Link>, RtnlError> {
        let answers = self.request(
            "listing links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut links: Vec<Link> = answers
            .into_iter()
            .filter_map(|message| match message {
                RouteNetlinkMessage::NewLink(link) => Some(link_of(link)),
                _ => None,
            })
            .collect();
        links.sort_by_key(|link| link.index);
        Ok(links)
    }

    /// Sets the interface administratively up or down.
    pub fn set_link_up(&mut self, link: &Link, up: bool) -> Result<(), RtnlError> {
        let mut message = LinkMessage::default();
        message.header.index = link.index;
        message.header.change_mask = LinkFlags::Up;
        if up {
            message.header.flags = LinkFlags::Up;
        }
        let what = format!("setting {} {}", link.name, if up { "up" } else { "down" });
        self.request(&what, RouteNetlinkMessage::SetLink(message), 0)
            .map(drop)
    }

    /// The IPv4 addresses on the interface with index `index`.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<Ipv4Net>, RtnlError> {
        let answers = self.request(
            "listing addresses",
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|message| match message {
                RouteNetlinkMessage::NewAddress(address) if address.header.index == index => {
                    address
                        .attributes
                        .iter()
                        .find_map(|attribute| match attribute {
                            AddressAttribute::Local(IpAddr::V4(local)) => Some(Ipv4Net {
                                address: *local,
                                prefix_len: address.header.prefix_len,
                            }),
                            _ => None,
                        })
                }
                _ => None,
            })
            .collect())
    }

    /// Adds `net` to the interface; fails if it is already there.
    pub fn add_address(&mut self, link: &Link, net: Ipv4Net) -> Result<(), RtnlError> {
        let what = format!("adding {net} to {}", link.name);
        let message = RouteNetlinkMessage::NewAddress(address_message(link, net));
        self.request(&what, message, NLM_F_CREATE | NLM_F_EXCL)
            .map(drop)
    }

    /// Removes `net` from the interface (and with it the kernel's prefix route).
    pub fn del_address(&mut self, link: &Link, net: Ipv4Net) -> Result<(), RtnlError> {
        let what = format!("removing {net} from {}", link.name);
        let message = RouteNetlinkMessage::DelAddress(address_message(link, net));
        self.request(&what, message, 0).map(drop)
    }

    /// Adds the default route via `gateway` out of the interface.
    pub fn add_default_route(&mut self, link: &Link, gateway: Ipv4Addr) -> Result<(), RtnlError> {
        let what = format!("adding default route via {gateway} dev {}", link.name);
        let message = RouteNetlinkMessage::NewRoute(default_route(link, gateway));
        self.request(&what, message, NLM_F_CREATE | NLM_F_EXCL)
            .map(drop)
    }

    /// Removes the default route via `gateway` out of the interface.
    pub fn del_default_route(&mut self, link: &Link, gateway: Ipv4Addr) -> Result<(), RtnlError> {
        let what = format!("removing default route via {gateway} dev {}", link.name);
        let message = RouteNetlinkMessage::DelRoute(default_route(link, gateway));
        self.request(&what, message, 0).map(drop)
    }

    /// The gateways of the IPv4 default routes in the main table out of interface `index`.
    pub fn default_routes(&mut self, index: u32) -> Result<Vec<Ipv4Addr>, RtnlError> {
        let mut query = RouteMessage::default();
        query.header.address_family = AddressFamily::Inet;
        let answers = self.request(
            "listing routes",
            RouteNetlinkMessage::GetRoute(query),
            NLM_F_DUMP,
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|message| match message {
                RouteNetlinkMessage::NewRoute(route)
                    if route.header.destination_prefix_length == 0
                        && route.header.table == RouteHeader::RT_TABLE_MAIN
                        && route.attributes.contains(&RouteAttribute::Oif(index)) =>
                {
                    route
                        .attributes
                        .iter()
                        .find_map(|attribute| match attribute {
                            RouteAttribute::Gateway(RouteAddress::Inet(gateway)) => Some(*gateway),
                            _ => None,
                        })
                }
                _ => None,
            })
            .collect())
    }

    /// Sends one request and collects the answers until the kernel's ACK or `NLMSG_DONE`.
    fn request(
        &mut self,
        what: &str,
        message: RouteNetlinkMessage,
        extra_flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, RtnlError> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | extra_flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut buffer = vec![0; packet.buffer_len()];
        packet.serialize(&mut buffer);
        let failed = |source: io::Error| RtnlError::Request {
            what: what.to_owned(),
            source,
        };
        self.socket.send(&buffer, 0).map_err(failed)?;

        let mut answers = Vec::new();
        loop {
            let (datagram, _) = self.socket.recv_from_full().map_err(failed)?;
            let mut offset = 0;
            while offset < datagram.len() {
                let answer =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[offset..])
                        .map_err(|error| RtnlError::Decode {
                            what: what.to_owned(),
                            detail: error.to_string(),
                        })?;
                let length = answer.header.length as usize;
                if length == 0 {
                    return Err(RtnlError::Decode {
                        what: what.to_owned(),
                        detail: "zero-length message".into(),
                    });
                }
                offset += (length + 3) & !3;
                if answer.header.sequence_number != self.sequence {
                    continue;
                }
                match answer.payload {
                    NetlinkPayload::InnerMessage(inner) => answers.push(inner),
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::Error(error) => {
                        return match error.code {
                            None => Ok(answers),
                            Some(_) => Err(failed(error.to_io())),
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

fn link_of(message: LinkMessage) -> Link {
    let mut name = String::new();
    let mut mac = None;
    for attribute in message.attributes {
        match attribute {
            LinkAttribute::IfName(ifname) => name = ifname,
            LinkAttribute::Address(bytes) => mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => {}
        }
    }
    let flags = message.header.flags;
    Link {
        index: message.header.index,
        name,
        mac,
        up: flags.contains(LinkFlags::Up),
        carrier: flags.contains(LinkFlags::LowerUp),
        loopback: flags.contains(LinkFlags::Loopback),
    }
}

fn address_message(link: &Link, net: Ipv4Net) -> AddressMessage {
    let mut message = AddressMessage::default();
    message.header.family = AddressFamily::Inet;
    message.header.prefix_len = net.prefix_len;
    message.header.scope = AddressScope::Universe;
    message.header.index = link.index;
    let address = IpAddr::V4(net.address);
    message.attributes.push(AddressAttribute::Local(address));
    message.attributes.push(AddressAttribute::Address(address));
    if let Some(broadcast) = net.broadcast() {
        message
            .attributes
            .push(AddressAttribute::Broadcast(broadcast));
    }
    message
}

fn default_route(link: &Link, gateway: Ipv4Addr) -> RouteMessage {
    let mut message = RouteMessage::default();
    message.header.address_family = AddressFamily::Inet;
    message.header.destination_prefix_length = 0;
    message.header.table = RouteHeader::RT_TABLE_MAIN;
    message.header.protocol = RouteProtocol::Boot;
    message.header.scope = RouteScope::Universe;
    message.header.kind = RouteType::Unicast;
    message
        .attributes
        .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
    message.attributes.push(RouteAttribute::Oif(link.index));
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_of_a_subnet() {
        let net = Ipv4Net {
            address: Ipv4Addr::new(10, 1, 2, 3),
            prefix_len: 20,
        };
        assert_eq!(net.broadcast(), Some(Ipv4Addr::new(10, 1, 15, 255)));
        let host = Ipv4Net {
            prefix_len: 32,
            ..net
        };
        assert_eq!(host.broadcast(), None);
    }
}
