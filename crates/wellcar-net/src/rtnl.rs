//! The rtnetlink requests the initramfs needs: list links, set a link up or down, add an IPv4
//! address, add a default route, remove a link's IPv4 addresses.
//!
//! Contract: every request is sent with `NLM_F_ACK` and waits for the kernel's answer; an
//! error answer is [`NetError::Netlink`] naming the request and carrying the errno.

use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::NetError;

/// A network link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Hardware address.
    pub mac: Vec<u8>,
    /// Administratively up.
    pub up: bool,
    /// Has a carrier (`IFF_LOWER_UP`).
    pub carrier: bool,
    /// The loopback link.
    pub loopback: bool,
}

/// An IPv4 address on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    /// Interface index.
    pub index: u32,
    /// The address.
    pub address: Ipv4Addr,
    /// Prefix length.
    pub prefix_len: u8,
}

/// An rtnetlink socket.
pub struct Rtnl {
    socket: Socket,
    sequence: u32,
}

fn netlink_err(what: &str, source: std::io::Error) -> NetError {
    NetError::Netlink {
        what: what.to_string(),
        source,
    }
}

impl Rtnl {
    /// Opens the socket.
    pub fn open() -> Result<Rtnl, NetError> {
        let mut socket =
            Socket::new(NETLINK_ROUTE).map_err(|e| netlink_err("opening a socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| netlink_err("binding the socket", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| netlink_err("connecting the socket", e))?;
        Ok(Rtnl {
            socket,
            sequence: 0,
        })
    }

    /// Sends `message` with `flags`; returns the data messages of the answer (for dumps),
    /// after the ACK or `NLMSG_DONE`.
    fn request(
        &mut self,
        what: &str,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NetError> {
        self.sequence += 1;
        let mut packet = NetlinkMessage::from(message);
        packet.header.flags = flags;
        packet.header.sequence_number = self.sequence;
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket
            .send(&buf, 0)
            .map_err(|e| netlink_err(what, e))?;
        let mut answers = Vec::new();
        let mut receive = Vec::with_capacity(64 * 1024);
        loop {
            receive.clear();
            let size = self
                .socket
                .recv(&mut receive, 0)
                .map_err(|e| netlink_err(what, e))?;
            let mut offset = 0;
            while offset < size {
                let reply: NetlinkMessage<RouteNetlinkMessage> =
                    NetlinkMessage::deserialize(&receive[offset..size]).map_err(|e| {
                        netlink_err(what, std::io::Error::other(format!("bad answer: {e}")))
                    })?;
                let length = reply.header.length as usize;
                if reply.header.sequence_number == self.sequence {
                    match reply.payload {
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                None => Ok(answers),
                                Some(_) => Err(netlink_err(what, e.to_io())),
                            }
                        }
                        NetlinkPayload::Done(_) => return Ok(answers),
                        NetlinkPayload::InnerMessage(m) => answers.push(m),
                        _ => {}
                    }
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
        }
    }

    /// Every link.
    pub fn links(&mut self) -> Result<Vec<Link>, NetError> {
        let answers = self.request(
            "listing links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_REQUEST | NLM_F_DUMP,
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(link),
                _ => None,
            })
            .map(|link| {
                let mut name = String::new();
                let mut mac = Vec::new();
                for attribute in &link.attributes {
                    match attribute {
                        LinkAttribute::IfName(n) => name = n.clone(),
                        LinkAttribute::Address(a) => mac = a.clone(),
                        _ => {}
                    }
                }
                let flags = link.header.flags;
                Link {
                    index: link.header.index,
                    name,
                    mac,
                    up: flags.contains(LinkFlags::Up),
                    carrier: flags.contains(LinkFlags::LowerUp),
                    loopback: flags.contains(LinkFlags::Loopback),
                }
            })
            .collect())
    }

    /// Sets link `index` (named `name`, for messages) up or down.
    pub fn set_up(&mut self, index: u32, name: &str, up: bool) -> Result<(), NetError> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.header.flags = if up {
            LinkFlags::Up
        } else {
            LinkFlags::empty()
        };
        link.header.change_mask = LinkFlags::Up;
        let what = format!("setting {name} {}", if up { "up" } else { "down" });
        self.request(
            &what,
            RouteNetlinkMessage::SetLink(link),
            NLM_F_REQUEST | NLM_F_ACK,
        )?;
        Ok(())
    }

    /// Adds `address/prefix_len` to link `index`.
    pub fn add_address(
        &mut self,
        index: u32,
        name: &str,
        address: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), NetError> {
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.prefix_len = prefix_len;
        message.header.index = index;
        let host_bits = u32::MAX.checked_shr(u32::from(prefix_len)).unwrap_or(0);
        let broadcast = Ipv4Addr::from(u32::from(address) | host_bits);
        message.attributes = vec![
            AddressAttribute::Local(IpAddr::V4(address)),
            AddressAttribute::Address(IpAddr::V4(address)),
            AddressAttribute::Broadcast(broadcast),
        ];
        self.request(
            &format!("adding {address}/{prefix_len} to {name}"),
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// Adds a default route through `gateway` on link `index`.
    pub fn add_default_route(
        &mut self,
        index: u32,
        name: &str,
        gateway: Ipv4Addr,
    ) -> Result<(), NetError> {
        let mut message = RouteMessage::default();
        message.header.address_family = AddressFamily::Inet;
        message.header.table = RouteHeader::RT_TABLE_MAIN;
        message.header.protocol = RouteProtocol::Dhcp;
        message.header.scope = RouteScope::Universe;
        message.header.kind = RouteType::Unicast;
        message.header.destination_prefix_length = 0;
        message.attributes = vec![
            RouteAttribute::Gateway(RouteAddress::Inet(gateway)),
            RouteAttribute::Oif(index),
        ];
        self.request(
            &format!("adding default route via {gateway} on {name}"),
            RouteNetlinkMessage::NewRoute(message),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// Every IPv4 address.
    pub fn addresses(&mut self) -> Result<Vec<Address>, NetError> {
        let mut query = AddressMessage::default();
        query.header.family = AddressFamily::Inet;
        let answers = self.request(
            "listing addresses",
            RouteNetlinkMessage::GetAddress(query),
            NLM_F_REQUEST | NLM_F_DUMP,
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => Some(a),
                _ => None,
            })
            .filter_map(|a| {
                let address = a.attributes.iter().find_map(|attr| match attr {
                    AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                })?;
                Some(Address {
                    index: a.header.index,
                    address,
                    prefix_len: a.header.prefix_len,
                })
            })
            .collect())
    }

    /// Removes every IPv4 address of link `index` (their routes go with them).
    pub fn flush_addresses(&mut self, index: u32, name: &str) -> Result<(), NetError> {
        for a in self.addresses()?.into_iter().filter(|a| a.index == index) {
            let mut message = AddressMessage::default();
            message.header.family = AddressFamily::Inet;
            message.header.prefix_len = a.prefix_len;
            message.header.index = index;
            message.attributes = vec![AddressAttribute::Local(IpAddr::V4(a.address))];
            self.request(
                &format!("removing {}/{} from {name}", a.address, a.prefix_len),
                RouteNetlinkMessage::DelAddress(message),
                NLM_F_REQUEST | NLM_F_ACK,
            )?;
        }
        Ok(())
    }
}
