//! Canonical JSON: what a record's hash and a checkpoint's signature cover.
//!
//! Objects have their keys sorted by UTF-16 code units (RFC 8785's order),
//! with no whitespace; strings are escaped as serde_json writes them, which is
//! RFC 8785's escaping (`\"`, `\\`, the short control escapes, `\u00xx`
//! otherwise); numbers are written as serde_json writes them, which for the
//! integers records hold is RFC 8785's form too.

use std::cmp::Ordering;

use serde_json::{Map, Value as Json};

/// RFC 8785's key order.
pub(crate) fn key_order(a: &str, b: &str) -> Ordering {
    if a.is_ascii() && b.is_ascii() {
        return a.cmp(b);
    }
    a.encode_utf16().cmp(b.encode_utf16())
}

/// Appends the canonical form of `value` to `out`.
pub(crate) fn write(value: &Json, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    match value {
        Json::Object(map) => write_object(map, out),
        Json::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out)?;
            }
            out.push(b']');
            Ok(())
        }
        scalar => serde_json::to_writer(out, scalar),
    }
}

fn write_object(map: &Map<String, Json>, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    out.push(b'{');
    for (i, (key, value)) in sorted(map).into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        member(key, value, out)?;
    }
    out.push(b'}');
    Ok(())
}

/// `"key":value`, canonical.
pub(crate) fn member(key: &str, value: &Json, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    serde_json::to_writer(&mut *out, key)?;
    out.push(b':');
    write(value, out)
}

/// The members of `map` in canonical order.
pub(crate) fn sorted(map: &Map<String, Json>) -> Vec<(&str, &Json)> {
    let mut members: Vec<(&str, &Json)> = map.iter().map(|(k, v)| (k.as_str(), v)).collect();
    members.sort_by(|a, b| key_order(a.0, b.0));
    members
}

/// The canonical form of `value`.
pub(crate) fn to_vec(value: &Json) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::new();
    write(value, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_sort_at_every_level_and_nothing_else_moves() {
        let v = json!({"b": [3, {"z": 1, "a": null}], "a": "x\u{1}\"y", "é": true, "Z": -4});
        let text = String::from_utf8(to_vec(&v).unwrap()).unwrap();
        assert_eq!(
            text,
            r#"{"Z":-4,"a":"x\u0001\"y","b":[3,{"a":null,"z":1}],"é":true}"#
        );
    }

    #[test]
    fn key_order_is_by_utf16_code_units() {
        // U+FF61 sorts before U+1F600 by code point, after it in UTF-16.
        assert_eq!(key_order("\u{ff61}", "\u{1f600}"), Ordering::Greater);
        assert_eq!(key_order("a", "b"), Ordering::Less);
    }
}
