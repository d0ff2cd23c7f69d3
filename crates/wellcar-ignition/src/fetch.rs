//! Fetching resource contents: `data:` URLs (RFC 2397, base64 or percent-encoded), optional
//! gzip decompression, and sha256/sha512 verification of the *decompressed* bytes.
//!
//! Remote schemes (`http`, `https`, `tftp`, `s3`, `arn`, `gs`) are recognised but not fetched:
//! this stage runs without a network, so they fail with [`FetchError::RemoteUnavailable`]
//! naming the URL. Nothing here touches the filesystem.

use std::io::Read;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use sha2::{Digest, Sha256, Sha512};

use crate::model::Resource;

/// Why a resource could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// A network scheme; this stage has no network.
    #[error("cannot fetch {url}: remote fetches are not available at this stage (no network); embed the data as a data: URL")]
    RemoteUnavailable {
        /// The URL (shortened when long).
        url: String,
    },
    /// A scheme Ignition does not know.
    #[error("cannot fetch {url}: unsupported source scheme")]
    UnsupportedScheme {
        /// The URL (shortened when long).
        url: String,
    },
    /// A malformed `data:` URL.
    #[error("invalid data url {url}: {reason}")]
    DataUrl {
        /// The URL (shortened).
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// Compression other than gzip, or corrupt gzip data.
    #[error("cannot decompress {url} ({compression})")]
    Decompress {
        /// The URL (shortened).
        url: String,
        /// The configured compression.
        compression: String,
        /// The decoder error.
        #[source]
        source: std::io::Error,
    },
    /// The configured hash is malformed or names an unknown function.
    #[error("bad verification hash {hash:?} for {url}")]
    BadHash {
        /// The URL (shortened).
        url: String,
        /// The configured hash.
        hash: String,
    },
    /// The decompressed bytes do not match the configured hash.
    #[error("hash mismatch for {url}: calculated {algorithm}-{calculated}, expected {algorithm}-{expected}")]
    HashMismatch {
        /// The URL (shortened).
        url: String,
        /// `sha256` or `sha512`.
        algorithm: String,
        /// Hex digest from the config.
        expected: String,
        /// Hex digest of the data.
        calculated: String,
    },
}

/// Shortens long (data:) URLs for messages.
pub(crate) fn short_url(url: &str) -> String {
    const MAX: usize = 80;
    if url.len() <= MAX {
        return url.to_string();
    }
    let mut end = MAX;
    while !url.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &url[..end], url.len())
}

fn base64_engine() -> GeneralPurpose {
    GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    )
}

/// Decodes an RFC 2397 `data:` URL into its bytes.
pub fn decode_data_url(url: &str) -> Result<Vec<u8>, FetchError> {
    let bad = |reason: &str| FetchError::DataUrl {
        url: short_url(url),
        reason: reason.to_string(),
    };
    let rest = url
        .get(..5)
        .filter(|p| p.eq_ignore_ascii_case("data:"))
        .map(|_| &url[5..])
        .ok_or_else(|| bad("not a data: URL"))?;
    let (meta, data) = rest
        .split_once(',')
        .ok_or_else(|| bad("missing ',' before the data"))?;
    let is_base64 = meta
        .rsplit(';')
        .next()
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("base64"));
    let unescaped: Vec<u8> = percent_encoding::percent_decode_str(data).collect();
    if is_base64 {
        let compact: Vec<u8> = unescaped
            .into_iter()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        base64_engine()
            .decode(compact)
            .map_err(|e| bad(&format!("bad base64: {e}")))
    } else {
        Ok(unescaped)
    }
}

/// Fetches a resource's bytes: `Ok(None)` when it has no source, the decompressed and verified
/// bytes otherwise (an empty source yields no bytes).
pub fn fetch(resource: &Resource) -> Result<Option<Vec<u8>>, FetchError> {
    let Some(url) = resource.source.as_deref() else {
        return Ok(None);
    };
    let raw = match crate::validate::url_scheme(url) {
        _ if url.is_empty() => Vec::new(),
        Some(s) if s.eq_ignore_ascii_case("data") => decode_data_url(url)?,
        Some("http" | "https" | "tftp" | "s3" | "arn" | "gs") => {
            return Err(FetchError::RemoteUnavailable {
                url: short_url(url),
            })
        }
        _ => {
            return Err(FetchError::UnsupportedScheme {
                url: short_url(url),
            })
        }
    };
    let data = match resource.compression.as_deref() {
        None | Some("") => raw,
        Some("gzip") => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(raw.as_slice())
                .read_to_end(&mut out)
                .map_err(|source| FetchError::Decompress {
                    url: short_url(url),
                    compression: "gzip".into(),
                    source,
                })?;
            out
        }
        Some(other) => {
            return Err(FetchError::Decompress {
                url: short_url(url),
                compression: other.to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "unknown compression",
                ),
            })
        }
    };
    if let Some(hash) = resource.verification.hash.as_deref() {
        verify(url, hash, &data)?;
    }
    Ok(Some(data))
}

/// Checks `data` against an Ignition hash specifier (`sha512-<hex>` / `sha256-<hex>`).
pub fn verify(url: &str, hash: &str, data: &[u8]) -> Result<(), FetchError> {
    let bad = || FetchError::BadHash {
        url: short_url(url),
        hash: hash.to_string(),
    };
    let (algorithm, expected) = hash.split_once('-').ok_or_else(bad)?;
    let calculated = match algorithm {
        "sha512" => hex_lower(&Sha512::digest(data)),
        "sha256" => hex_lower(&Sha256::digest(data)),
        _ => return Err(bad()),
    };
    if calculated.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(FetchError::HashMismatch {
            url: short_url(url),
            algorithm: algorithm.to_string(),
            expected: expected.to_string(),
            calculated,
        })
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(source: &str) -> Resource {
        Resource {
            source: Some(source.to_string()),
            ..Default::default()
        }
    }

    #[test]
    fn data_urls_percent_and_base64() {
        assert_eq!(
            decode_data_url("data:,example%20file%0A").unwrap(),
            b"example file\n"
        );
        assert_eq!(
            decode_data_url("data:text/plain;charset=utf-8;base64,aGVsbG8=").unwrap(),
            b"hello"
        );
        assert_eq!(decode_data_url("data:;base64,aGVsbG8").unwrap(), b"hello");
        assert!(decode_data_url("data:;base64,!!!").is_err());
        assert!(decode_data_url("data:no-comma").is_err());
    }

    #[test]
    fn gzip_then_hash_of_decompressed_bytes() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut enc, b"example file\n").unwrap();
        let gz = enc.finish().unwrap();
        let url = format!(
            "data:;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(&gz)
        );
        let digest = hex_lower(&Sha256::digest(b"example file\n"));
        let mut r = res(&url);
        r.compression = Some("gzip".into());
        r.verification.hash = Some(format!("sha256-{digest}"));
        assert_eq!(fetch(&r).unwrap().unwrap(), b"example file\n");
        r.verification.hash = Some(format!("sha256-{}", "0".repeat(64)));
        assert!(matches!(fetch(&r), Err(FetchError::HashMismatch { .. })));
    }

    #[test]
    fn remote_sources_name_the_url() {
        let err = fetch(&res("https://example.com/x")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("https://example.com/x")
                && msg.contains("remote fetches are not available"),
            "{msg}"
        );
        assert_eq!(fetch(&Resource::default()).unwrap(), None);
        assert_eq!(fetch(&res("")).unwrap().unwrap(), b"");
    }
}
