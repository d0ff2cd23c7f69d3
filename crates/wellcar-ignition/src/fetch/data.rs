//! RFC 2397 `data:` URLs: base64 (padding optional, whitespace ignored) or percent-encoded.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;

use super::{short_url, FetchError};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
