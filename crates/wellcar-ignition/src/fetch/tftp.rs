//! A read-only TFTP client (RFC 1350): `tftp://host[:port]/path`, octet mode, 512-byte blocks,
//! lock-step acknowledgements, as [`TftpReader`] (a [`Read`]).
//!
//! Written here because crates.io has no maintained blocking TFTP *client* (the TFTP crates
//! there are servers, or async). The protocol part used is small: a read request, DATA blocks
//! each acknowledged, an ERROR packet, and retransmission of the last packet on a timeout.
//!
//! Contract:
//! - The file name is the URL's path without its leading `/`, percent-decoded.
//! - The server's transfer port (TID) is the source of its first DATA packet; packets from
//!   other addresses get ERROR 5 (unknown transfer ID) and are ignored.
//! - Each wait for a packet is bounded by `httpResponseHeaders` (at most 5 s, default 5 s);
//!   after [`RETRANSMITS`] unanswered retransmissions the transfer fails naming the URL. A
//!   transfer also ends within `httpTotal` when that is set.
//! - Block numbers wrap after 65535 (as most servers do), so files above 32 MiB work with
//!   servers that wrap.

use std::io::{self, Read};
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

use super::{short_url, FetchError, Timeouts};

/// Retransmissions of an unanswered packet before the transfer fails.
pub const RETRANSMITS: u32 = 5;
const BLOCK: usize = 512;
const OP_RRQ: u16 = 1;
const OP_DATA: u16 = 3;
const OP_ACK: u16 = 4;
const OP_ERROR: u16 = 5;

/// A TFTP download in progress; reading it drives the transfer.
pub struct TftpReader {
    socket: UdpSocket,
    server: SocketAddr,
    tid: Option<SocketAddr>,
    /// The packet to retransmit on a timeout (the request, then the last ACK).
    last_sent: Vec<u8>,
    next_block: u16,
    buffer: Vec<u8>,
    position: usize,
    finished: bool,
    deadline: Option<Instant>,
}

fn parse_url(url: &str) -> Result<(String, u16, String), String> {
    let rest = url
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("tftp://"))
        .map(|_| &url[7..])
        .ok_or("not a tftp:// URL")?;
    let (authority, path) = rest.split_once('/').ok_or("no file path in the URL")?;
    let path = path.split(['?', '#']).next().unwrap_or("");
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or("unclosed '[' in the host")?;
        (host.to_string(), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    let port = match port {
        None | Some("") => 69,
        Some(p) => p.parse().map_err(|_| format!("bad port {p:?}"))?,
    };
    let file = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .map_err(|_| "file path is not UTF-8")?
        .into_owned();
    if host.is_empty() || file.is_empty() || file.contains('\0') {
        return Err("empty host or file path".into());
    }
    Ok((host, port, file))
}

impl TftpReader {
    /// Sends the read request for `url`.
    pub fn open(url: &str, timeouts: &Timeouts) -> Result<Self, FetchError> {
        let fail = |reason: String| FetchError::Tftp {
            url: short_url(url),
            reason,
        };
        let (host, port, file) = parse_url(url).map_err(|r| FetchError::BadUrl {
            url: short_url(url),
            reason: r,
        })?;
        let server = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| fail(format!("resolving {host}: {e}")))?
            .next()
            .ok_or_else(|| fail(format!("{host} has no address")))?;
        let bind: SocketAddr = if server.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket =
            UdpSocket::bind(bind).map_err(|e| fail(format!("binding a UDP socket: {e}")))?;
        let wait = timeouts
            .response_headers
            .unwrap_or(Duration::from_secs(5))
            .clamp(Duration::from_millis(100), Duration::from_secs(5));
        socket
            .set_read_timeout(Some(wait))
            .map_err(|e| fail(format!("setting the socket timeout: {e}")))?;
        let mut request = OP_RRQ.to_be_bytes().to_vec();
        request.extend_from_slice(file.as_bytes());
        request.push(0);
        request.extend_from_slice(b"octet\0");
        let mut reader = Self {
            socket,
            server,
            tid: None,
            last_sent: request,
            next_block: 1,
            buffer: Vec::new(),
            position: 0,
            finished: false,
            deadline: timeouts.total.map(|t| Instant::now() + t),
        };
        reader
            .send_last()
            .map_err(|e| fail(format!("sending the request: {e}")))?;
        // The first block (or the server's error) arrives before this returns.
        reader.next_block().map_err(|e| fail(e.to_string()))?;
        Ok(reader)
    }

    fn send_last(&self) -> io::Result<()> {
        self.socket
            .send_to(&self.last_sent, self.tid.unwrap_or(self.server))
            .map(drop)
    }

    fn error(&self, reason: String) -> io::Error {
        io::Error::other(reason)
    }

    /// Receives the next DATA block into the buffer (empty at the end of the file).
    fn next_block(&mut self) -> io::Result<()> {
        let mut packet = [0_u8; 4 + BLOCK + 1];
        let mut unanswered = 0;
        loop {
            if self.deadline.is_some_and(|d| Instant::now() > d) {
                return Err(self.error("httpTotal timeout reached".into()));
            }
            let (len, from) = match self.socket.recv_from(&mut packet) {
                Ok(r) => r,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    unanswered += 1;
                    if unanswered > RETRANSMITS {
                        return Err(self.error(format!(
                            "no answer from {} after {RETRANSMITS} retransmissions",
                            self.tid.unwrap_or(self.server)
                        )));
                    }
                    self.send_last()?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match self.tid {
                Some(tid) if tid != from => {
                    let mut err = OP_ERROR.to_be_bytes().to_vec();
                    err.extend_from_slice(&5_u16.to_be_bytes());
                    err.extend_from_slice(b"Unknown transfer ID\0");
                    let _ = self.socket.send_to(&err, from);
                    continue;
                }
                None if from.ip() != self.server.ip() => continue,
                _ => {}
            }
            if len < 4 {
                continue;
            }
            let opcode = u16::from_be_bytes([packet[0], packet[1]]);
            let number = u16::from_be_bytes([packet[2], packet[3]]);
            match opcode {
                OP_ERROR => {
                    let message = String::from_utf8_lossy(&packet[4..len]);
                    return Err(self.error(format!(
                        "server error {number}: {}",
                        message.trim_end_matches('\0')
                    )));
                }
                OP_DATA => {
                    self.tid.get_or_insert(from);
                    let mut ack = OP_ACK.to_be_bytes().to_vec();
                    ack.extend_from_slice(&number.to_be_bytes());
                    if number == self.next_block {
                        self.last_sent = ack;
                        self.send_last()?;
                        self.next_block = self.next_block.wrapping_add(1);
                        let data = &packet[4..len];
                        if data.len() > BLOCK {
                            return Err(self.error("DATA block longer than 512 bytes".into()));
                        }
                        self.finished = data.len() < BLOCK;
                        self.buffer.clear();
                        self.buffer.extend_from_slice(data);
                        self.position = 0;
                        return Ok(());
                    }
                    if number == self.next_block.wrapping_sub(1) {
                        // Our ACK was lost: the server repeats the block.
                        self.socket.send_to(&ack, from)?;
                    }
                }
                _ => {}
            }
        }
    }
}

impl Read for TftpReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.position == self.buffer.len() {
            if self.finished {
                return Ok(0);
            }
            self.next_block()?;
        }
        let n = buf.len().min(self.buffer.len() - self.position);
        buf[..n].copy_from_slice(&self.buffer[self.position..self.position + n]);
        self.position += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("tftp://10.0.0.1/pxe/config%20a.ign").unwrap(),
            ("10.0.0.1".into(), 69, "pxe/config a.ign".into())
        );
        assert_eq!(
            parse_url("tftp://[::1]:6969/c.ign").unwrap(),
            ("::1".into(), 6969, "c.ign".into())
        );
        assert!(parse_url("tftp://host").is_err());
        assert!(parse_url("tftp://host/").is_err());
        assert!(parse_url("tftp://host:x/a").is_err());
    }
}
