//! A DHCPv4 client for one interface: DISCOVER, OFFER, REQUEST, ACK (RFC 2131), packets
//! encoded and decoded by `dhcproto`.
//!
//! Contract: [`lease`] uses a UDP socket on port 68 bound to the interface (`SO_BINDTODEVICE`)
//! with the BOOTP broadcast flag set, so the server broadcasts its answers and the interface
//! needs no address yet. DISCOVER is sent again after 1, 2, 4, … s (at most 8 s) until an
//! OFFER with our transaction id and hardware address arrives; then REQUEST, again until ACK.
//! A NAK, or nothing before the timeout, is [`NetError::Dhcp`] naming the interface. The
//! lease is not renewed: provisioning is done long before any lease ends, and the link is torn
//! down before switch root.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use dhcproto::v4::{
    Decodable, DhcpOption, Encodable, Flags, Message, MessageType, Opcode, OptionCode,
};

use crate::NetError;

/// What the server granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Our address.
    pub address: Ipv4Addr,
    /// Prefix length (from the subnet mask; 24 when the server sends none).
    pub prefix_len: u8,
    /// First router.
    pub router: Option<Ipv4Addr>,
    /// DNS servers.
    pub dns: Vec<Ipv4Addr>,
    /// Domain name.
    pub domain: Option<String>,
    /// The server that granted it.
    pub server: Ipv4Addr,
    /// Lease time in seconds.
    pub lease_secs: Option<u32>,
}

/// Options asked for.
const WANTED: [OptionCode; 5] = [
    OptionCode::SubnetMask,
    OptionCode::Router,
    OptionCode::DomainNameServer,
    OptionCode::DomainName,
    OptionCode::AddressLeaseTime,
];

fn transaction_id(mac: &[u8]) -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    mac.iter().fold(nanos ^ std::process::id(), |h, b| {
        h.rotate_left(5) ^ u32::from(*b)
    })
}

fn request_message(
    xid: u32,
    mac: &[u8],
    kind: MessageType,
    offer: Option<(Ipv4Addr, Ipv4Addr)>,
) -> Message {
    let unspecified = Ipv4Addr::UNSPECIFIED;
    let mut msg =
        Message::new_with_id(xid, unspecified, unspecified, unspecified, unspecified, mac);
    msg.set_flags(Flags::default().set_broadcast());
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ParameterRequestList(WANTED.to_vec()));
    if let Some((address, server)) = offer {
        opts.insert(DhcpOption::RequestedIpAddress(address));
        opts.insert(DhcpOption::ServerIdentifier(server));
    }
    msg
}

/// Sends `msg` and waits for a reply of one of `kinds` matching `xid`/`mac`, resending with
/// back-off until `deadline`.
fn exchange(
    socket: &UdpSocket,
    interface: &str,
    msg: &Message,
    mac: &[u8],
    kinds: &[MessageType],
    deadline: Instant,
) -> Result<Message, NetError> {
    let err = |reason: String| NetError::Dhcp {
        interface: interface.to_string(),
        reason,
    };
    let bytes = msg.to_vec().map_err(|e| err(format!("encoding: {e}")))?;
    let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let mut wait = Duration::from_secs(1);
    let mut buf = vec![0u8; 1500];
    loop {
        socket
            .send_to(&bytes, to)
            .map_err(|e| err(format!("sending {:?}: {e}", kinds)))?;
        let resend_at = (Instant::now() + wait).min(deadline);
        loop {
            let now = Instant::now();
            if now >= resend_at {
                break;
            }
            socket
                .set_read_timeout(Some(resend_at - now))
                .map_err(|e| err(e.to_string()))?;
            let n = match socket.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) => return Err(err(format!("receiving: {e}"))),
            };
            let Ok(reply) = Message::from_bytes(&buf[..n]) else {
                continue;
            };
            if reply.opcode() != Opcode::BootReply
                || reply.xid() != msg.xid()
                || reply.chaddr().get(..mac.len()) != Some(mac)
            {
                continue;
            }
            match reply.opts().msg_type() {
                Some(MessageType::Nak) => {
                    return Err(err(format!(
                        "server answered NAK{}",
                        match reply.opts().get(OptionCode::Message) {
                            Some(DhcpOption::Message(m)) => format!(": {m}"),
                            _ => String::new(),
                        }
                    )))
                }
                Some(t) if kinds.contains(&t) => return Ok(reply),
                _ => continue,
            }
        }
        if Instant::now() >= deadline {
            return Err(err(format!("no {kinds:?} before the timeout")));
        }
        wait = (wait * 2).min(Duration::from_secs(8));
    }
}

/// Gets a lease on `interface` (hardware address `mac`) within `timeout`.
pub fn lease(interface: &str, mac: &[u8], timeout: Duration) -> Result<Lease, NetError> {
    let err = |reason: String| NetError::Dhcp {
        interface: interface.to_string(),
        reason,
    };
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 68))
        .map_err(|e| err(format!("binding UDP port 68: {e}")))?;
    crate::sockopt::bind_to_device(&socket, interface)
        .map_err(|e| err(format!("binding the socket to the interface: {e}")))?;
    socket
        .set_broadcast(true)
        .map_err(|e| err(format!("enabling broadcast: {e}")))?;
    let deadline = Instant::now() + timeout;
    let xid = transaction_id(mac);
    let discover = request_message(xid, mac, MessageType::Discover, None);
    let offer = exchange(
        &socket,
        interface,
        &discover,
        mac,
        &[MessageType::Offer],
        deadline,
    )?;
    let server = match offer.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => *s,
        _ => offer.siaddr(),
    };
    let request = request_message(
        xid,
        mac,
        MessageType::Request,
        Some((offer.yiaddr(), server)),
    );
    let ack = exchange(
        &socket,
        interface,
        &request,
        mac,
        &[MessageType::Ack],
        deadline,
    )?;
    Ok(lease_of(&ack, server))
}

/// The lease an ACK describes.
pub fn lease_of(ack: &Message, server: Ipv4Addr) -> Lease {
    let opts = ack.opts();
    let prefix_len = match opts.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(m)) => u32::from(*m).leading_ones() as u8,
        _ => 24,
    };
    let router = match opts.get(OptionCode::Router) {
        Some(DhcpOption::Router(r)) => r.first().copied(),
        _ => None,
    };
    let dns = match opts.get(OptionCode::DomainNameServer) {
        Some(DhcpOption::DomainNameServer(d)) => d.clone(),
        _ => Vec::new(),
    };
    let domain = match opts.get(OptionCode::DomainName) {
        Some(DhcpOption::DomainName(d)) => Some(d.clone()),
        _ => None,
    };
    let lease_secs = match opts.get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(t)) => Some(*t),
        _ => None,
    };
    Lease {
        address: ack.yiaddr(),
        prefix_len,
        router,
        dns,
        domain,
        server,
        lease_secs,
    }
}
