//! The one canonical form of an HTTP request path, as ext_authz policies see
//! it, so that `/orders/../admin` cannot pass for `/orders*`.
//!
//! Unreserved characters are percent-decoded (RFC 3986 §2.3), dot segments
//! removed (§5.2.4), then runs of `/` merged: Envoy's order for
//! `normalize_path` and `merge_slashes`, so a path Envoy already normalised
//! comes out unchanged. A path that would still mean different things to
//! different servers (an encoded `/`, a `\`, a NUL) is refused instead.

/// Why a path is refused rather than normalised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PathError {
    #[error("must start with `/`")]
    NotAbsolute,
    #[error("holds an encoded `/` (`%2F`), which servers disagree about")]
    EncodedSlash,
    #[error("holds a `\\` or an encoded one (`%5C`), which some servers read as `/`")]
    Backslash,
    #[error("holds a NUL (`%00`)")]
    Nul,
    #[error("holds a `%` that is not followed by two hex digits")]
    BadEscape,
}

/// `path` (without its query) in canonical form, or why it is refused.
pub(crate) fn normalize(path: &str) -> Result<String, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let decoded = decode_unreserved(path)?;
    Ok(merge_slashes(&remove_dot_segments(&decoded)))
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Decodes `%XX` of unreserved characters; other escapes stay, with
/// upper-case hex (RFC 3986 §6.2.2.1), so decoding never runs twice.
fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    // Every byte pushed is ASCII or copied from `path` at a char boundary.
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let (hi, lo) = match (bytes.get(i + 1), bytes.get(i + 2)) {
                    (Some(&h), Some(&l)) => (h, l),
                    _ => return Err(PathError::BadEscape),
                };
                let (Some(h), Some(l)) = (hex(hi), hex(lo)) else {
                    return Err(PathError::BadEscape);
                };
                match h << 4 | l {
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::Backslash),
                    0 => return Err(PathError::Nul),
                    c if is_unreserved(c) => out.push(char::from(c)),
                    _ => {
                        out.push('%');
                        out.push(char::from(hi.to_ascii_uppercase()));
                        out.push(char::from(lo.to_ascii_uppercase()));
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            0 => return Err(PathError::Nul),
            _ => {
                // Copy one whole UTF-8 character.
                let len = path[i..].chars().next().map_or(1, char::len_utf8);
                out.push_str(&path[i..i + len]);
                i += len;
            }
        }
    }
    Ok(out)
}

/// RFC 3986 §5.2.4, step by step.
fn remove_dot_segments(path: &str) -> String {
    let mut input = path;
    let mut output = String::with_capacity(path.len());
    let pop = |output: &mut String| {
        let cut = output.rfind('/').unwrap_or(0);
        output.truncate(cut);
    };
    while !input.is_empty() {
        if let Some(rest) = input.strip_prefix("../") {
            input = rest;
        } else if let Some(rest) = input.strip_prefix("./") {
            input = rest;
        } else if input.starts_with("/./") {
            input = &input[2..];
        } else if input == "/." {
            input = "/";
        } else if input.starts_with("/../") {
            input = &input[3..];
            pop(&mut output);
        } else if input == "/.." {
            input = "/";
            pop(&mut output);
        } else if input == "." || input == ".." {
            input = "";
        } else {
            let start = usize::from(input.starts_with('/'));
            let end = input[start..].find('/').map_or(input.len(), |i| i + start);
            output.push_str(&input[..end]);
            input = &input[end..];
        }
    }
    output
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn rfc_3986_remove_dot_segments_examples() {
        // §5.2.4's two worked examples.
        assert_eq!(remove_dot_segments("/a/b/c/./../../g"), "/a/g");
        assert_eq!(remove_dot_segments("mid/content=5/../6"), "mid/6");
        // §5.4.2's abnormal examples, as paths.
        for (input, output) in [
            ("/../g", "/g"),
            ("/../../g", "/g"),
            ("/./g", "/g"),
            ("/g.", "/g."),
            ("/.g", "/.g"),
            ("/g..", "/g.."),
            ("/..g", "/..g"),
            ("/b/c/./../g", "/b/g"),
            ("/b/c/./g/.", "/b/c/g/"),
            ("/b/c/g/./h", "/b/c/g/h"),
            ("/b/c/g/../h", "/b/c/h"),
            ("/b/c/g;x=1/./y", "/b/c/g;x=1/y"),
            ("/b/c/g;x=1/../y", "/b/c/y"),
        ] {
            assert_eq!(remove_dot_segments(input), output, "{input}");
        }
    }

    #[test]
    fn the_reproduced_bypasses_normalise_to_what_the_upstream_serves() {
        for (input, output) in [
            ("/orders/../admin/refund", "/admin/refund"),
            ("/orders/%2e%2e/admin/refund", "/admin/refund"),
            ("/orders/%2E%2E/admin/refund", "/admin/refund"),
            ("/orders/.%2e/admin/refund", "/admin/refund"),
            ("//admin/x", "/admin/x"),
            ("/%61dmin/x", "/admin/x"),
            ("/orders/./7", "/orders/7"),
            ("/orders//7/", "/orders/7/"),
            ("/..", "/"),
            ("/", "/"),
            ("/a%7e%2D%5f", "/a~-_"),
        ] {
            assert_eq!(normalize(input).unwrap(), output, "{input}");
        }
    }

    #[test]
    fn other_escapes_stay_encoded_in_upper_case() {
        assert_eq!(normalize("/a%3fb%2a").unwrap(), "/a%3Fb%2A");
        // `%25` is not decoded, so `%252e` is not a dot on any later pass.
        assert_eq!(normalize("/a/%252e%252e/b").unwrap(), "/a/%252e%252e/b");
        assert_eq!(normalize("/caf\u{e9}/%C3%A9").unwrap(), "/caf\u{e9}/%C3%A9");
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for (input, err) in [
            ("orders", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("/orders%2f..%2fadmin", PathError::EncodedSlash),
            ("/orders%2F..", PathError::EncodedSlash),
            ("/orders%5c..%5cadmin", PathError::Backslash),
            ("/orders\\..\\admin", PathError::Backslash),
            ("/orders%00.json", PathError::Nul),
            ("/orders\0", PathError::Nul),
            ("/orders%", PathError::BadEscape),
            ("/orders%2", PathError::BadEscape),
            ("/orders%zz", PathError::BadEscape),
        ] {
            assert_eq!(normalize(input), Err(err), "{input:?}");
        }
    }

    fn segment() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "", ".", "..", "a", "b", "%2e", "%2E", "%2e%2e", ".%2e", "%2e.", "%61", "%7e", "%41",
            "%25", "%252e", "%3f", "x.y", "...", "%2f", "%5C", "\\", "%00", "%", "é",
        ])
        .prop_map(str::to_string)
    }

    fn path() -> impl Strategy<Value = String> {
        prop::collection::vec(segment(), 0..10).prop_map(|s| format!("/{}", s.join("/")))
    }

    proptest! {
        #[test]
        fn normalising_is_idempotent_and_leaves_no_dot_or_empty_segment(input in path()) {
            if let Ok(once) = normalize(&input) {
                prop_assert_eq!(normalize(&once), Ok(once.clone()));
                prop_assert!(once.starts_with('/'));
                for bad in ["/../", "/./", "//"] {
                    prop_assert!(!once.contains(bad), "{} in {:?} from {:?}", bad, once, input);
                }
                prop_assert!(!once.ends_with("/..") && !once.ends_with("/."), "{:?}", once);
            }
        }

        #[test]
        fn any_text_is_refused_or_canonical(input in "/[a-z./%0-9A-F\\\\]{0,24}") {
            if let Ok(once) = normalize(&input) {
                prop_assert_eq!(normalize(&once), Ok(once.clone()));
                prop_assert!(!once.contains("//") && !once.contains("/../") && !once.contains("/./"));
            }
        }
    }
}
