//! Small text helpers shared by the parsers: bounded snippets for error messages, RFC 3261
//! token characters, quote-aware splitting, quoted-string (un)escaping.
//!
//! Invariant: every function here is total — it returns a value or `None` for any input and
//! never indexes outside its input (all slicing goes through `get` or char-boundary-safe
//! helpers).

/// Longest piece of offending input copied into an error value.
pub const ERROR_SNIPPET_BYTES_MAX: usize = 80;

/// A bounded, printable copy of `text` for error values and logs.
pub fn snippet(text: &str) -> String {
    let mut out = String::new();
    for character in text.chars() {
        if out.len() + character.len_utf8() > ERROR_SNIPPET_BYTES_MAX {
            out.push('…');
            break;
        }
        if character.is_control() {
            out.push('?');
        } else {
            out.push(character);
        }
    }
    out
}

/// RFC 3261 `token` character.
pub fn is_token_char(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&byte)
}

pub fn is_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(is_token_char)
}

/// Position of `needle` in `haystack`, searching from `from`.
pub fn find_bytes(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let tail = haystack.get(from..)?;
    if needle.is_empty() || tail.len() < needle.len() {
        return None;
    }
    tail.windows(needle.len())
        .position(|window| window == needle)
        .map(|position| position + from)
}

/// Splits `text` at `separator` when it is outside a quoted string and outside `<...>`.
/// Each part is trimmed; empty parts are kept so callers can reject them.
pub fn split_outside_quotes(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut in_quotes = false;
    let mut escaped = false;
    let mut angle_depth = 0usize;
    let mut start = 0usize;
    for (index, character) in text.char_indices() {
        if in_quotes {
            if escaped {
                escaped = false;
            } else if character == '\\' {
                escaped = true;
            } else if character == '"' {
                in_quotes = false;
            }
            continue;
        }
        match character {
            '"' => in_quotes = true,
            '<' => angle_depth = angle_depth.saturating_add(1),
            '>' => angle_depth = angle_depth.saturating_sub(1),
            _ if character == separator && angle_depth == 0 => {
                parts.push(text.get(start..index).unwrap_or_default().trim());
                start = index + character.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(text.get(start..).unwrap_or_default().trim());
    parts
}

/// Removes surrounding double quotes and resolves `\x` escapes. Text that is not quoted is
/// returned unchanged. Returns `None` for an unterminated quoted string.
pub fn unquote(text: &str) -> Option<String> {
    let Some(inner) = text.strip_prefix('"') else {
        return Some(text.to_string());
    };
    let mut out = String::with_capacity(inner.len());
    let mut characters = inner.chars();
    while let Some(character) = characters.next() {
        match character {
            '\\' => out.push(characters.next()?),
            '"' => {
                return if characters.as_str().trim().is_empty() {
                    Some(out)
                } else {
                    None
                };
            }
            _ => out.push(character),
        }
    }
    None
}

/// Wraps `text` in double quotes, escaping `"` and `\`. Control characters (CR, LF...) are
/// replaced by spaces so a quoted value can never break a header line.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for character in text.chars() {
        match character {
            '"' | '\\' => {
                out.push('\\');
                out.push(character);
            }
            _ if character.is_control() => out.push(' '),
            _ => out.push(character),
        }
    }
    out.push('"');
    out
}

/// Replaces control characters (other than tab) by spaces: used on everything written into a
/// header line so that a value can never inject a line break.
pub fn header_safe(text: &str) -> String {
    text.chars()
        .map(|character| {
            if character.is_control() && character != '\t' {
                ' '
            } else {
                character
            }
        })
        .collect()
}

/// Characters that delimit or quote in a SIP header (RFC 3261 §25.1) and so can never be part
/// of an unquoted parameter value.
const PARAM_VALUE_FORBIDDEN: &[char] = &[' ', '\t', '"', ',', '<', '>', '\\'];

/// Parses `;name[=value]` parameters (the text after the first `;`, without it). Values keep
/// their quotes. Returns `None` if a name is not a token, a value is empty, a quoted value is
/// not exactly one quoted-string, or an unquoted value holds whitespace, `"`, `,`, `<`, `>` or
/// `\` (a stray quote would otherwise swallow the rest of a Via or Contact list).
pub fn parse_params(text: &str) -> Option<Vec<(String, Option<String>)>> {
    let mut params = Vec::new();
    if text.trim().is_empty() {
        return Some(params);
    }
    for part in split_outside_quotes(text, ';') {
        let (name, value) = match part.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim())),
            None => (part.trim(), None),
        };
        if !is_token(name) {
            return None;
        }
        if value.is_some_and(|value| {
            value.is_empty()
                || if value.starts_with('"') {
                    unquote(value).is_none()
                } else {
                    value.contains(PARAM_VALUE_FORBIDDEN)
                }
        }) {
            return None;
        }
        params.push((name.to_string(), value.map(str::to_string)));
    }
    Some(params)
}

/// Formats parameters as `;name=value` pairs.
pub fn format_params(params: &[(String, Option<String>)]) -> String {
    let mut out = String::new();
    for (name, value) in params {
        out.push(';');
        out.push_str(name);
        if let Some(value) = value {
            out.push('=');
            out.push_str(value);
        }
    }
    out
}

/// Case-insensitive lookup of a parameter; `Some(None)` for a flag parameter.
pub fn find_param<'a>(
    params: &'a [(String, Option<String>)],
    name: &str,
) -> Option<Option<&'a str>> {
    params
        .iter()
        .find(|(candidate, _)| candidate.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_deref())
}

/// Truncates to at most `max` bytes on a char boundary.
pub fn truncate_to(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_respects_quotes_and_angles() {
        let parts = split_outside_quotes(r#""a, b" <sip:x;p=1,2>;q=1, <sip:y>"#, ',');
        assert_eq!(parts, vec![r#""a, b" <sip:x;p=1,2>;q=1"#, "<sip:y>"]);
    }

    #[test]
    fn params_refuse_structural_characters_in_unquoted_values() {
        assert_eq!(
            parse_params(r#" tag = a1 ;lr; x="a b, <c>""#),
            Some(vec![
                ("tag".to_string(), Some("a1".to_string())),
                ("lr".to_string(), None),
                ("x".to_string(), Some(r#""a b, <c>""#.to_string())),
            ])
        );
        for bad in [
            "tag=a b",
            "branch=z9\"hG4bK",
            "tag=a,b",
            "tag=<a>",
            "tag=a\\b",
            "tag=",
            "=x",
            r#"x="a" b"#,
        ] {
            assert_eq!(parse_params(bad), None, "{bad}");
        }
    }

    #[test]
    fn unquote_handles_escapes_and_rejects_unterminated() {
        assert_eq!(unquote(r#""a\"b\\c""#).as_deref(), Some(r#"a"b\c"#));
        assert_eq!(unquote(r#""abc"#), None);
        assert_eq!(unquote("plain").as_deref(), Some("plain"));
        assert_eq!(unquote(r#""a" junk"#), None);
    }

    #[test]
    fn quote_round_trips_and_strips_line_breaks() {
        let original = "he said \"hi\"\\";
        assert_eq!(unquote(&quote(original)).as_deref(), Some(original));
        assert_eq!(quote("a\r\nb"), "\"a  b\"");
    }

    #[test]
    fn snippet_is_bounded_and_printable() {
        let long = "é".repeat(200);
        let short = snippet(&long);
        assert!(short.len() <= ERROR_SNIPPET_BYTES_MAX + '…'.len_utf8());
        assert_eq!(snippet("a\r\nb"), "a??b");
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate_to("aé", 2), "a");
        assert_eq!(truncate_to("abc", 5), "abc");
    }
}
