//! A DHCPv4 client for one interface: DISCOVER → OFFER → REQUEST → ACK.
//!
//! Contract: [`acquire`] talks over a UDP socket bound to the interface (`SO_BINDTODEVICE`,
//! port 68, `SO_BROADCAST`) and asks the server to broadcast its answers (the interface has no
//! address yet). Answers are accepted only with our `xid` and hardware address. A DISCOVER or
//! REQUEST without answer is resent after 1, 2, 4, 8, 8, … seconds until the deadline; a NAK
//! starts over. It returns the [`Lease`] (address, prefix, routers, DNS servers, hostname, lease
//! time) without applying it. Packets are encoded and decoded by `dhcproto`.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable};
use socket2::{Domain, Protocol, Socket, Type};

use crate::cmdline::prefix_of_mask;

/// What a DHCP server leased to an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub interface: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub routers: Vec<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub hostname: Option<String>,
    pub lease_time: Option<Duration>,
    pub server: Ipv4Addr,
}

/// Why no lease was obtained on an interface.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("DHCP on {interface}: opening the socket: {source}")]
    Socket {
        interface: String,
        #[source]
        source: io::Error,
    },
    #[error("DHCP on {interface}: {step}: {source}")]
    Io {
        interface: String,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("DHCP on {interface}: encoding the {step}: {detail}")]
    Encode {
        interface: String,
        step: &'static str,
        detail: String,
    },
    #[error("DHCP on {interface}: no lease within {waited:?} ({discovers} DISCOVERs sent, {offers} offers)")]
    Timeout {
        interface: String,
        waited: Duration,
        discovers: u32,
        offers: u32,
    },
    #[error("DHCP on {interface}: stopped, another interface got a lease first")]
    Cancelled { interface: String },
    #[error("DHCP on {interface}: the ACK from {server} has no usable subnet mask")]
    NoSubnetMask { interface: String, server: Ipv4Addr },
}

const CLIENT_PORT: u16 = 68;
const SERVER_PORT: u16 = 67;
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(8);
/// How often a waiting receive looks at the cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(200);

/// Obtains a lease on `interface` (hardware address `mac`) before `deadline`, or fails.
/// Gives up early with [`DhcpError::Cancelled`] once `cancel` is set.
pub fn acquire(
    interface: &str,
    mac: [u8; 6],
    deadline: Instant,
    cancel: &AtomicBool,
) -> Result<Lease, DhcpError> {
    let started = Instant::now();
    let socket = open_socket(interface).map_err(|source| DhcpError::Socket {
        interface: interface.to_owned(),
        source,
    })?;
    let mut client = Client {
        interface,
        mac,
        socket,
        deadline,
        cancel,
        discovers: 0,
        offers: 0,
    };
    while let Some(offer) = client.exchange(MessageType::Discover, None)? {
        client.offers += 1;
        let server = server_id(&offer);
        match client.exchange(MessageType::Request, Some((offer.yiaddr(), server)))? {
            Some(ack) if ack.opts().msg_type() == Some(MessageType::Ack) => {
                return lease_of(interface, &ack, server)
            }
            Some(_nak) => continue,
            None => break,
        }
    }
    Err(DhcpError::Timeout {
        interface: interface.to_owned(),
        waited: started.elapsed(),
        discovers: client.discovers,
        offers: client.offers,
    })
}

fn open_socket(interface: &str) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_broadcast(true)?;
    socket.bind_device(Some(interface.as_bytes()))?;
    socket.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT).into())?;
    Ok(socket.into())
}

struct Client<'a> {
    interface: &'a str,
    mac: [u8; 6],
    socket: UdpSocket,
    deadline: Instant,
    cancel: &'a AtomicBool,
    discovers: u32,
    offers: u32,
}

impl Client<'_> {
    /// Sends a DISCOVER (or a REQUEST for `requested` from `server`) until an answer with the
    /// same xid comes (OFFER, or ACK/NAK); `None` once the deadline passed.
    fn exchange(
        &mut self,
        kind: MessageType,
        requested: Option<(Ipv4Addr, Ipv4Addr)>,
    ) -> Result<Option<Message>, DhcpError> {
        let step = if kind == MessageType::Discover {
            "DISCOVER"
        } else {
            "REQUEST"
        };
        let request = self.message(kind, requested);
        let bytes = request.to_vec().map_err(|error| DhcpError::Encode {
            interface: self.interface.to_owned(),
            step,
            detail: error.to_string(),
        })?;
        let mut wait = FIRST_RETRY;
        while Instant::now() < self.deadline {
            self.socket
                .send_to(&bytes, SocketAddrV4::new(Ipv4Addr::BROADCAST, SERVER_PORT))
                .map_err(|source| self.io_error(step, source))?;
            if kind == MessageType::Discover {
                self.discovers += 1;
            }
            let resend_at = (Instant::now() + wait).min(self.deadline);
            if let Some(answer) = self.receive(request.xid(), kind, resend_at)? {
                return Ok(Some(answer));
            }
            wait = (wait * 2).min(MAX_RETRY);
        }
        Ok(None)
    }

    fn message(&self, kind: MessageType, requested: Option<(Ipv4Addr, Ipv4Addr)>) -> Message {
        let unspecified = Ipv4Addr::UNSPECIFIED;
        let mut message = Message::new(
            unspecified,
            unspecified,
            unspecified,
            unspecified,
            &self.mac,
        );
        message.set_flags(Flags::default().set_broadcast());
        let options = message.opts_mut();
        options.insert(DhcpOption::MessageType(kind));
        options.insert(DhcpOption::ParameterRequestList(vec![
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::DomainNameServer,
            OptionCode::Hostname,
            OptionCode::AddressLeaseTime,
        ]));
        if let Some((address, server)) = requested {
            options.insert(DhcpOption::RequestedIpAddress(address));
            options.insert(DhcpOption::ServerIdentifier(server));
        }
        message
    }

    /// Waits until `until` for a reply to `xid` of the kind that answers `sent`.
    fn receive(
        &self,
        xid: u32,
        sent: MessageType,
        until: Instant,
    ) -> Result<Option<Message>, DhcpError> {
        let mut buffer = [0u8; 1500];
        loop {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(DhcpError::Cancelled {
                    interface: self.interface.to_owned(),
                });
            }
            let now = Instant::now();
            if now >= until {
                return Ok(None);
            }
            let slice = (until - now).min(CANCEL_POLL).max(Duration::from_millis(1));
            self.socket
                .set_read_timeout(Some(slice))
                .map_err(|source| self.io_error("setting the receive timeout", source))?;
            let length = match self.socket.recv(&mut buffer) {
                Ok(length) => length,
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(source) => return Err(self.io_error("receiving", source)),
            };
            // Anything undecodable or not for us is some other client's traffic: ignore it.
            let Ok(answer) = Message::from_bytes(&buffer[..length]) else {
                continue;
            };
            if answer.opcode() != Opcode::BootReply
                || answer.xid() != xid
                || answer.chaddr().get(..6) != Some(&self.mac[..])
            {
                continue;
            }
            let expected: &[MessageType] = if sent == MessageType::Discover {
                &[MessageType::Offer]
            } else {
                &[MessageType::Ack, MessageType::Nak]
            };
            if answer
                .opts()
                .msg_type()
                .is_some_and(|kind| expected.contains(&kind))
            {
                return Ok(Some(answer));
            }
        }
    }

    fn io_error(&self, step: &'static str, source: io::Error) -> DhcpError {
        DhcpError::Io {
            interface: self.interface.to_owned(),
            step,
            source,
        }
    }
}

fn server_id(message: &Message) -> Ipv4Addr {
    match message.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(server)) => *server,
        _ => message.siaddr(),
    }
}

fn lease_of(interface: &str, ack: &Message, server: Ipv4Addr) -> Result<Lease, DhcpError> {
    let options = ack.opts();
    let prefix_len = match options.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(mask)) => prefix_of_mask(*mask),
        _ => None,
    }
    .ok_or_else(|| DhcpError::NoSubnetMask {
        interface: interface.to_owned(),
        server,
    })?;
    let addresses = |code| match options.get(code) {
        Some(DhcpOption::Router(list)) | Some(DhcpOption::DomainNameServer(list)) => list.clone(),
        _ => Vec::new(),
    };
    Ok(Lease {
        interface: interface.to_owned(),
        address: ack.yiaddr(),
        prefix_len,
        routers: addresses(OptionCode::Router),
        dns: addresses(OptionCode::DomainNameServer),
        hostname: match options.get(OptionCode::Hostname) {
            Some(DhcpOption::Hostname(name)) => Some(name.clone()),
            _ => None,
        },
        lease_time: match options.get(OptionCode::AddressLeaseTime) {
            Some(DhcpOption::AddressLeaseTime(seconds)) => {
                Some(Duration::from_secs(u64::from(*seconds)))
            }
            _ => None,
        },
        server,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(options: Vec<DhcpOption>) -> Message {
        let mut message = Message::default();
        message.set_opcode(Opcode::BootReply);
        message.set_yiaddr(Ipv4Addr::new(10, 9, 0, 7));
        for option in options {
            message.opts_mut().insert(option);
        }
        // Round-trip through the wire format, as a real answer would arrive.
        Message::from_bytes(&message.to_vec().unwrap()).unwrap()
    }

    #[test]
    fn lease_reads_every_requested_option() {
        let message = ack(vec![
            DhcpOption::MessageType(MessageType::Ack),
            DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)),
            DhcpOption::Router(vec![Ipv4Addr::new(10, 9, 0, 1)]),
            DhcpOption::DomainNameServer(vec![Ipv4Addr::new(10, 9, 0, 53)]),
            DhcpOption::Hostname("node7".into()),
            DhcpOption::AddressLeaseTime(3600),
            DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 9, 0, 2)),
        ]);
        let lease = lease_of("eth0", &message, server_id(&message)).unwrap();
        assert_eq!(
            lease,
            Lease {
                interface: "eth0".into(),
                address: Ipv4Addr::new(10, 9, 0, 7),
                prefix_len: 24,
                routers: vec![Ipv4Addr::new(10, 9, 0, 1)],
                dns: vec![Ipv4Addr::new(10, 9, 0, 53)],
                hostname: Some("node7".into()),
                lease_time: Some(Duration::from_secs(3600)),
                server: Ipv4Addr::new(10, 9, 0, 2),
            }
        );
    }

    #[test]
    fn ack_without_subnet_mask_is_refused() {
        let message = ack(vec![DhcpOption::MessageType(MessageType::Ack)]);
        let error = lease_of("eth1", &message, Ipv4Addr::new(10, 9, 0, 2)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "DHCP on eth1: the ACK from 10.9.0.2 has no usable subnet mask"
        );
    }
}
