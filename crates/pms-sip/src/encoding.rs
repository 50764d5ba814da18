//! `Content-Encoding` (RFC 3261 §20.12): which codings PMS accepts on a MESSAGE body, and the
//! bounded decoder PMS uses where it must read a body itself (CPIM and IMDN parsing).
//!
//! PMS stores and delivers an encoded body byte for byte with its `Content-Encoding`; it only
//! decodes a copy to look inside. Devices that compress (liblinphone deflates every IMDN) keep
//! working, and the recipient gets exactly what the sender sent.
//!
//! Invariant: decoding never produces more than the caller's `decoded_bytes_max` (a small
//! compressed body cannot expand into an unbounded allocation) and never panics on input.
//! Invariant: an unknown coding is an error the edge answers with 415 and [`ACCEPT_ENCODING`].

use std::borrow::Cow;
use std::io::Read;

use crate::message::Request;

/// The codings PMS accepts (the `Accept-Encoding` value of 415 and OPTIONS responses).
pub const ACCEPT_ENCODING: &str = "identity, deflate, gzip";
/// Most codings listed in one `Content-Encoding` header.
pub const CONTENT_CODINGS_MAX: usize = 4;
/// Largest body PMS decodes to read it (CPIM headers, IMDN XML).
pub const DECODED_BODY_BYTES_MAX: usize = 256 * 1024;

/// One content coding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentCoding {
    Identity,
    /// zlib-wrapped deflate (RFC 1950/1951, as HTTP and belle-sip send it); a raw deflate
    /// stream is accepted too.
    Deflate,
    /// gzip (RFC 1952).
    Gzip,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodingError {
    #[error("unsupported content coding {coding:?}")]
    UnsupportedCoding { coding: String },
    #[error("more than {max} content codings")]
    TooManyCodings { max: usize },
    #[error("{coding:?} body does not decode: {detail}")]
    Corrupt {
        coding: &'static str,
        detail: String,
    },
    #[error("decoded body exceeds {max} bytes")]
    TooLarge { max: usize },
}

impl ContentCoding {
    pub fn as_str(self) -> &'static str {
        match self {
            ContentCoding::Identity => "identity",
            ContentCoding::Deflate => "deflate",
            ContentCoding::Gzip => "gzip",
        }
    }
}

/// Parses a `Content-Encoding` value (`gzip`, `deflate, gzip`, …) into the codings in the order
/// they were applied. An absent or empty header means no coding.
pub fn parse_content_encoding(value: Option<&str>) -> Result<Vec<ContentCoding>, EncodingError> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let mut codings = Vec::new();
    for token in value
        .split(',')
        .map(str::trim)
        .filter(|token| !token.is_empty())
    {
        if codings.len() >= CONTENT_CODINGS_MAX {
            return Err(EncodingError::TooManyCodings {
                max: CONTENT_CODINGS_MAX,
            });
        }
        let coding = if token.eq_ignore_ascii_case("identity") {
            ContentCoding::Identity
        } else if token.eq_ignore_ascii_case("deflate") {
            ContentCoding::Deflate
        } else if token.eq_ignore_ascii_case("gzip") || token.eq_ignore_ascii_case("x-gzip") {
            ContentCoding::Gzip
        } else {
            return Err(EncodingError::UnsupportedCoding {
                coding: token.chars().take(32).collect(),
            });
        };
        codings.push(coding);
    }
    Ok(codings)
}

/// The body of `request` as PMS reads it: decoded when it carries a `Content-Encoding`, else
/// the body itself.
pub fn decoded_body(request: &Request) -> Result<Cow<'_, [u8]>, EncodingError> {
    let codings = parse_content_encoding(request.headers.get("Content-Encoding"))?;
    if codings
        .iter()
        .all(|coding| *coding == ContentCoding::Identity)
    {
        return Ok(Cow::Borrowed(&request.body));
    }
    decode(&request.body, &codings, DECODED_BODY_BYTES_MAX).map(Cow::Owned)
}

/// Undoes `codings` (applied in the listed order, so undone in reverse), producing at most
/// `decoded_bytes_max` bytes.
pub fn decode(
    body: &[u8],
    codings: &[ContentCoding],
    decoded_bytes_max: usize,
) -> Result<Vec<u8>, EncodingError> {
    let mut current = body.to_vec();
    for coding in codings.iter().rev() {
        current = match coding {
            ContentCoding::Identity => current,
            ContentCoding::Deflate => {
                match read_bounded(
                    flate2::read::ZlibDecoder::new(&current[..]),
                    decoded_bytes_max,
                ) {
                    Ok(decoded) => decoded,
                    // Some senders use a raw deflate stream without the zlib wrapper.
                    Err(EncodingError::Corrupt { .. }) => read_bounded(
                        flate2::read::DeflateDecoder::new(&current[..]),
                        decoded_bytes_max,
                    )?,
                    Err(error) => return Err(error),
                }
            }
            ContentCoding::Gzip => read_bounded(
                flate2::read::GzDecoder::new(&current[..]),
                decoded_bytes_max,
            )?,
        };
    }
    Ok(current)
}

/// Encodes `body` with zlib-wrapped deflate (what liblinphone sends), for tests and tools.
pub fn deflate(body: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    let _ = std::io::Write::write_all(&mut encoder, body);
    encoder.finish().unwrap_or_default()
}

/// Encodes `body` with gzip, for tests and tools.
pub fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = std::io::Write::write_all(&mut encoder, body);
    encoder.finish().unwrap_or_default()
}

fn read_bounded(reader: impl Read, decoded_bytes_max: usize) -> Result<Vec<u8>, EncodingError> {
    let limit = u64::try_from(decoded_bytes_max)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let mut out = Vec::new();
    reader
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|error| EncodingError::Corrupt {
            coding: "compressed",
            detail: error.to_string().chars().take(80).collect(),
        })?;
    if out.len() > decoded_bytes_max {
        return Err(EncodingError::TooLarge {
            max: decoded_bytes_max,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codings_parse_in_order_and_unknown_ones_are_refused() {
        assert_eq!(parse_content_encoding(None), Ok(vec![]));
        assert_eq!(
            parse_content_encoding(Some("Deflate , gzip")),
            Ok(vec![ContentCoding::Deflate, ContentCoding::Gzip])
        );
        assert_eq!(
            parse_content_encoding(Some("br")),
            Err(EncodingError::UnsupportedCoding {
                coding: "br".into()
            })
        );
        assert!(matches!(
            parse_content_encoding(Some("gzip,gzip,gzip,gzip,gzip")),
            Err(EncodingError::TooManyCodings { .. })
        ));
    }

    #[test]
    fn deflate_gzip_and_raw_deflate_decode_to_the_original() {
        let original = "Ciao 😀 ".repeat(50).into_bytes();
        for (codings, encoded) in [
            (vec![ContentCoding::Deflate], deflate(&original)),
            (vec![ContentCoding::Gzip], gzip(&original)),
            (
                vec![ContentCoding::Deflate, ContentCoding::Gzip],
                gzip(&deflate(&original)),
            ),
            (vec![ContentCoding::Identity], original.clone()),
        ] {
            assert_eq!(decode(&encoded, &codings, 4096), Ok(original.clone()));
        }
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut raw, &original).unwrap();
        let raw = raw.finish().unwrap();
        assert_eq!(
            decode(&raw, &[ContentCoding::Deflate], 4096),
            Ok(original.clone())
        );
    }

    #[test]
    fn bombs_and_garbage_are_refused() {
        let bomb = deflate(&vec![0u8; 1_000_000]);
        assert!(bomb.len() < 10_000);
        assert_eq!(
            decode(&bomb, &[ContentCoding::Deflate], 64 * 1024),
            Err(EncodingError::TooLarge { max: 64 * 1024 })
        );
        assert!(matches!(
            decode(b"not compressed at all", &[ContentCoding::Gzip], 1024),
            Err(EncodingError::Corrupt { .. })
        ));
    }
}
