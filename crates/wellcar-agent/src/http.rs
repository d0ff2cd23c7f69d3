//! HTTP for the agent: Omaha POSTs and ranged payload GETs (blocking, ureq).
//!
//! Contract: an Omaha answer is read only from a 200 response, at most
//! [`wellcar_omaha::MAX_RESPONSE_BYTES`] of body (a longer one is an error, never truncated),
//! together with its [`RESPONSE_SIGNATURE`] header; checking that signature is the caller's
//! job ([`crate::agent`]).

use std::io::Read;

use wellcar_omaha::headers::RESPONSE_SIGNATURE;

/// An HTTP failure, naming the URL.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Connection, TLS, protocol or body read failure.
    #[error("{method} {url}: {reason}")]
    Transport {
        /// `GET`/`POST`.
        method: &'static str,
        /// The URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// A non-success status.
    #[error("{method} {url}: HTTP status {status}")]
    Status {
        /// `GET`/`POST`.
        method: &'static str,
        /// The URL.
        url: String,
        /// The status.
        status: u16,
    },
}

impl HttpError {
    /// The HTTP status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            Self::Transport { .. } => None,
        }
    }
}

/// A reusable HTTP client.
#[derive(Debug, Clone)]
pub struct Http {
    agent: ureq::Agent,
    /// `Authorization` value for payload downloads (update.conf's `DOWNLOAD_USER` and
    /// `DOWNLOAD_PASSWORD`, HTTP basic auth), never for Omaha requests.
    download_auth: Option<String>,
}

impl Default for Http {
    fn default() -> Self {
        Self::new()
    }
}

/// A 200 answer to an Omaha POST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OmahaReply {
    /// The body, exactly as received.
    pub body: Vec<u8>,
    /// The [`RESPONSE_SIGNATURE`] header, if present and text.
    pub signature: Option<String>,
}

impl Http {
    /// The workspace's client ([`wellcar_http`]) with its connect and response-head timeouts
    /// (15 s, 60 s; no total timeout: payloads are large), trusting the system's CA store
    /// (`/etc/ssl/certs`, where Ignition can add a private CA for a private update server).
    pub fn new() -> Self {
        let options = wellcar_http::ClientOptions::new(concat!(
            "wellcar-update-agent/",
            env!("CARGO_PKG_VERSION")
        ));
        Self {
            agent: wellcar_http::system_client(&options),
            download_auth: None,
        }
    }

    /// Sends HTTP basic auth with every payload download from now on (`None`: none).
    pub fn set_download_credentials(&mut self, credentials: Option<(&str, &str)>) {
        use base64::Engine as _;
        self.download_auth = credentials.map(|(user, password)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            )
        });
    }

    /// POSTs an Omaha request with `headers` added; returns a 200 answer.
    pub fn post_omaha(
        &self,
        url: &str,
        xml: &str,
        headers: &[(&str, &str)],
    ) -> Result<OmahaReply, HttpError> {
        let transport = |reason: String| HttpError::Transport {
            method: "POST",
            url: url.to_owned(),
            reason,
        };
        let mut request = self.agent.post(url).header("Content-Type", "text/xml");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send(xml).map_err(|e| transport(e.to_string()))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(HttpError::Status {
                method: "POST",
                url: url.to_owned(),
                status,
            });
        }
        let signature = response
            .headers()
            .get(RESPONSE_SIGNATURE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .into_body()
            .into_with_config()
            .limit(wellcar_omaha::MAX_RESPONSE_BYTES as u64)
            .read_to_vec()
            .map_err(|e| {
                transport(format!(
                    "reading the answer (at most {} bytes): {e}",
                    wellcar_omaha::MAX_RESPONSE_BYTES
                ))
            })?;
        Ok(OmahaReply { body, signature })
    }

    /// GETs `url` from byte `start`; a `file://` URL (a local payload, [`crate::pin`]) is
    /// read from the file instead (to `end`, inclusive, if given). A server that ignores
    /// the range and answers 200 is handled by skipping the first `start` bytes.
    pub fn get_range(
        &self,
        url: &str,
        start: u64,
        end: Option<u64>,
    ) -> Result<Box<dyn Read + Send>, HttpError> {
        let transport = |reason: String| HttpError::Transport {
            method: "GET",
            url: url.to_owned(),
            reason,
        };
        if let Some(path) = url.strip_prefix("file://") {
            return read_file_range(std::path::Path::new(path), start, end)
                .map_err(|e| transport(e.to_string()));
        }
        let mut request = self.agent.get(url);
        if let Some(auth) = &self.download_auth {
            request = request.header("Authorization", auth);
        }
        if start > 0 || end.is_some() {
            let range = match end {
                Some(end) => format!("bytes={start}-{end}"),
                None => format!("bytes={start}-"),
            };
            request = request.header("Range", range);
        }
        let response = request.call().map_err(|e| transport(e.to_string()))?;
        let status = response.status().as_u16();
        let mut reader: Box<dyn Read + Send> = Box::new(
            response
                .into_body()
                .into_with_config()
                .limit(u64::MAX)
                .reader(),
        );
        match status {
            206 => Ok(reader),
            200 => {
                if start > 0 {
                    let skipped =
                        std::io::copy(&mut (&mut reader).take(start), &mut std::io::sink())
                            .map_err(|e| transport(e.to_string()))?;
                    if skipped != start {
                        return Err(transport(format!(
                            "body ended after {skipped} bytes, before the requested start {start}"
                        )));
                    }
                }
                Ok(match end {
                    Some(end) => Box::new(reader.take(end + 1 - start)),
                    None => reader,
                })
            }
            other => Err(HttpError::Status {
                method: "GET",
                url: url.to_owned(),
                status: other,
            }),
        }
    }
}

/// Bytes `start..=end` (or to the end) of a local file.
fn read_file_range(
    path: &std::path::Path,
    start: u64,
    end: Option<u64>,
) -> std::io::Result<Box<dyn Read + Send>> {
    use std::io::{Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(start))?;
    Ok(match end {
        Some(end) => Box::new(file.take((end + 1).saturating_sub(start))),
        None => Box::new(std::io::BufReader::with_capacity(1 << 20, file)),
    })
}

#[cfg(test)]
mod download_auth_tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    use super::*;

    /// A loopback server answering each GET with 200 and the body only when the request
    /// carries `Authorization: Basic <fleet:s3cret>`, 401 otherwise; returns its URL.
    fn server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/payload", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut authorized = false;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                        break;
                    }
                    // base64("fleet:s3cret")
                    if line.eq_ignore_ascii_case("authorization: Basic ZmxlZXQ6czNjcmV0\r\n") {
                        authorized = true;
                    }
                }
                let reply = if authorized {
                    "HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\npayload"
                } else {
                    "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                };
                stream.write_all(reply.as_bytes()).unwrap();
            }
        });
        url
    }

    #[test]
    fn payload_downloads_send_download_user_and_password() {
        let url = server();
        let mut http = Http::new();
        let err = http.get_range(&url, 0, None).err().unwrap();
        assert_eq!(err.status(), Some(401));
        http.set_download_credentials(Some(("fleet", "s3cret")));
        let mut body = String::new();
        http.get_range(&url, 0, None)
            .unwrap()
            .read_to_string(&mut body)
            .unwrap();
        assert_eq!(body, "payload");
        http.set_download_credentials(None);
        assert_eq!(
            http.get_range(&url, 0, None).err().unwrap().status(),
            Some(401)
        );
    }
}
