//! The streaming pipeline every scheme feeds: source reader → (gzip decoder) → [`Sink`], which
//! hashes and counts the decompressed bytes, refuses to pass the size limit, and writes to the
//! caller's writer. Memory use is one copy buffer and the decoder's window, whatever the size.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256, Sha512};

use super::{short_url, FetchError};

/// A parsed `verification.hash`.
pub(crate) struct ExpectedHash {
    algorithm: &'static str,
    hex: String,
}

impl ExpectedHash {
    /// Parses `sha512-<hex>` / `sha256-<hex>`.
    pub(crate) fn parse(url: &str, hash: &str) -> Result<Self, FetchError> {
        let bad = || FetchError::BadHash {
            url: short_url(url),
            hash: hash.to_string(),
        };
        let (algorithm, hex) = hash.split_once('-').ok_or_else(bad)?;
        let (algorithm, len) = match algorithm {
            "sha512" => ("sha512", 128),
            "sha256" => ("sha256", 64),
            _ => return Err(bad()),
        };
        if hex.len() != len || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        Ok(Self {
            algorithm,
            hex: hex.to_ascii_lowercase(),
        })
    }

    fn hasher(&self) -> Hasher {
        match self.algorithm {
            "sha512" => Hasher::Sha512(Sha512::new()),
            _ => Hasher::Sha256(Sha256::new()),
        }
    }
}

enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    fn update(&mut self, data: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(data),
            Self::Sha512(h) => h.update(data),
        }
    }

    fn finish_hex(self) -> String {
        match self {
            Self::Sha256(h) => hex_lower(&h.finalize()),
            Self::Sha512(h) => hex_lower(&h.finalize()),
        }
    }
}

pub(crate) fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why the sink refused bytes (kept so the error names the real cause, not the io::Error the
/// copy loop saw).
enum SinkFailure {
    TooLarge,
    Write(io::Error),
}

/// Counts, hashes and bounds the decompressed stream on its way to `out`.
pub(crate) struct Sink<'w> {
    out: &'w mut dyn Write,
    limit: u64,
    written: u64,
    hasher: Option<(Hasher, ExpectedHash)>,
    failure: Option<SinkFailure>,
}

impl<'w> Sink<'w> {
    pub(crate) fn new(out: &'w mut dyn Write, limit: u64, expected: Option<ExpectedHash>) -> Self {
        Self {
            out,
            limit,
            written: 0,
            hasher: expected.map(|e| (e.hasher(), e)),
            failure: None,
        }
    }

    /// Bytes accepted so far.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// Flushes and checks the hash: the last step before a caller may use what was written.
    pub(crate) fn finish(self, url: &str) -> Result<u64, FetchError> {
        self.out.flush().map_err(|source| FetchError::Write {
            url: short_url(url),
            source,
        })?;
        if let Some((hasher, expected)) = self.hasher {
            let calculated = hasher.finish_hex();
            if calculated != expected.hex {
                return Err(FetchError::HashMismatch {
                    url: short_url(url),
                    algorithm: expected.algorithm.to_string(),
                    expected: expected.hex,
                    calculated,
                });
            }
        }
        Ok(self.written)
    }
}

impl Write for Sink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.limit - self.written;
        if buf.len() as u64 > room {
            self.failure = Some(SinkFailure::TooLarge);
            return Err(io::Error::other("size limit reached"));
        }
        if let Err(e) = self.out.write_all(buf) {
            let kind = e.kind();
            self.failure = Some(SinkFailure::Write(e));
            return Err(io::Error::new(kind, "writing the destination failed"));
        }
        if let Some((hasher, _)) = &mut self.hasher {
            hasher.update(buf);
        }
        self.written += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A reader that remembers its own failure, so a transport error (a truncated body, a timeout)
/// is told apart from a decoder error.
struct Tracked<R> {
    inner: R,
    failed: Option<io::Error>,
}

impl<R: Read> Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            let copy = io::Error::new(e.kind(), e.to_string());
            self.failed = Some(e);
            copy
        })
    }
}

/// Copies `source` (gunzipped when `gzip`) into `sink`, naming `url` in any error.
pub(crate) fn feed(
    url: &str,
    source: impl Read,
    gzip: bool,
    sink: &mut Sink<'_>,
) -> Result<(), FetchError> {
    let mut tracked = Tracked {
        inner: source,
        failed: None,
    };
    let result = if gzip {
        io::copy(&mut flate2::read::MultiGzDecoder::new(&mut tracked), sink)
    } else {
        io::copy(&mut tracked, sink)
    };
    let Err(copy_error) = result else {
        return Ok(());
    };
    let url_short = short_url(url);
    match sink.failure.take() {
        Some(SinkFailure::TooLarge) => Err(FetchError::TooLarge {
            url: url_short,
            limit: sink.limit,
        }),
        Some(SinkFailure::Write(source)) => Err(FetchError::Write {
            url: url_short,
            source,
        }),
        None => match tracked.failed {
            Some(source) => Err(FetchError::Body {
                url: url_short,
                after: sink.written(),
                source,
            }),
            None => Err(FetchError::Decompress {
                url: url_short,
                compression: "gzip".into(),
                source: copy_error,
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_stops_a_gzip_bomb_and_names_the_url() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let zeros = vec![0_u8; 1 << 20];
        for _ in 0..64 {
            enc.write_all(&zeros).unwrap();
        }
        let bomb = enc.finish().unwrap();
        let mut out = Vec::new();
        let mut sink = Sink::new(&mut out, 1 << 20, None);
        let err = feed("data:bomb", bomb.as_slice(), true, &mut sink).unwrap_err();
        assert!(matches!(err, FetchError::TooLarge { limit, .. } if limit == 1 << 20));
        assert!(err.to_string().contains("data:bomb"), "{err}");
        assert!(out.len() <= 1 << 20);
    }

    #[test]
    fn hash_is_of_the_decompressed_bytes() {
        let expected = ExpectedHash::parse(
            "u",
            &format!("sha256-{}", hex_lower(&Sha256::digest(b"abc"))),
        )
        .unwrap();
        let mut out = Vec::new();
        let mut sink = Sink::new(&mut out, 10, Some(expected));
        feed("u", &b"abc"[..], false, &mut sink).unwrap();
        assert_eq!(sink.finish("u").unwrap(), 3);
        let wrong = ExpectedHash::parse("u", &format!("sha512-{}", "0".repeat(128))).unwrap();
        let mut out = Vec::new();
        let mut sink = Sink::new(&mut out, 10, Some(wrong));
        feed("u", &b"abc"[..], false, &mut sink).unwrap();
        assert!(matches!(
            sink.finish("u"),
            Err(FetchError::HashMismatch { .. })
        ));
        assert!(ExpectedHash::parse("u", "md5-00").is_err());
        assert!(ExpectedHash::parse("u", "sha256-zz").is_err());
    }
}
