//! RFC 8785 (JCS) canonical JSON: keys sorted by UTF-16 code units, numbers as ECMAScript
//! prints them, strings with only the required escapes (`<`, `>`, `&`, U+2028 stay literal).

use serde_json::Value;

use super::yaml::{place_point, shortest_digits};

/// The canonical form of `v`; `None` if it holds a number JSON cannot carry (NaN, infinity).
pub fn canonical(v: &Value) -> Option<String> {
    let mut out = String::new();
    write(v, &mut out)?;
    Some(out)
}

fn write(v: &Value, out: &mut String) -> Option<()> {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&number(n.as_f64()?)?),
        Value::String(s) => string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, out)?;
            }
            out.push(']');
        }
        Value::Object(map) => write_object(map.iter(), out)?,
    }
    Some(())
}

/// An object from its entries in any order (members are sorted by UTF-16 code units).
pub fn write_object<'a>(entries: impl Iterator<Item = (&'a String, &'a Value)>, out: &mut String) -> Option<()> {
    let mut entries: Vec<(&String, &Value)> = entries.collect();
    // Entries usually come sorted by UTF-8 bytes, which is UTF-16 order unless a key mixes
    // characters above U+FFFF with U+E000..U+FFFF: check before sorting.
    let utf16 = |a: &str, b: &str| a.encode_utf16().cmp(b.encode_utf16());
    if entries.windows(2).any(|w| utf16(w[0].0, w[1].0) != std::cmp::Ordering::Less) {
        entries.sort_by(|a, b| utf16(a.0, b.0));
    }
    out.push('{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        string(k, out);
        out.push(':');
        write(v, out)?;
    }
    out.push('}');
    Some(())
}

/// ECMAScript's Number::toString: plain digits up to 21 integer digits, `0.000001` down to
/// 1e-6, exponent form outside that.
pub fn number(f: f64) -> Option<String> {
    if !f.is_finite() {
        return None;
    }
    if f == 0.0 {
        return Some("0".into());
    }
    let sign = if f < 0.0 { "-" } else { "" };
    let (digits, n) = shortest_digits(f);
    let k = digits.len() as i32;
    // Plain digits for -6 < n <= 21, whether the point falls inside, after or before them.
    let body = if (-5..=21).contains(&n) {
        place_point(&digits, n)
    } else {
        let mut m = digits[..1].to_string();
        if k > 1 {
            m.push('.');
            m.push_str(&digits[1..]);
        }
        let e = n - 1;
        format!("{m}e{}{}", if e < 0 { '-' } else { '+' }, e.abs())
    };
    Some(format!("{sign}{body}"))
}

/// A string with only the escapes RFC 8785 requires.
pub fn string(s: &str, out: &mut String) {
    out.push('"');
    // Copy runs of characters that need no escape; only ASCII bytes ever do, so a run never
    // splits a UTF-8 sequence.
    let mut run = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            b'\t' => "\\t",
            b'\n' => "\\n",
            0x0c => "\\f",
            b'\r' => "\\r",
            b if b < 0x20 => "",
            _ => continue,
        };
        out.push_str(&s[run..i]);
        if escape.is_empty() {
            out.push_str(&format!("\\u{b:04x}"));
        } else {
            out.push_str(escape);
        }
        run = i + 1;
    }
    out.push_str(&s[run..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_print_as_ecmascript() {
        let cases = [
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (1.5, "1.5"),
            (-31.0, "-31"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (123456789012345680000.0, "123456789012345680000"),
            (0.000001, "0.000001"),
            (0.0000001, "1e-7"),
            (1.2345e-7, "1.2345e-7"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (9007199254740993.0, "9007199254740992"),
            (333333333.3333333, "333333333.3333333"),
        ];
        for (f, want) in cases {
            assert_eq!(number(f).unwrap(), want, "{f}");
        }
        assert!(number(f64::NAN).is_none());
    }

    #[test]
    fn keys_sort_by_utf16_and_strings_keep_html_characters() {
        let v = json!({"b": 1, "a": [true, null, "<&>\u{2028}\u{1}\"\\"], "\u{e000}": 1, "\u{1f600}": 2, "": 0});
        assert_eq!(canonical(&v).unwrap(), "{\"\":0,\"a\":[true,null,\"<&>\u{2028}\\u0001\\\"\\\\\"],\"b\":1,\"\u{1f600}\":2,\"\u{e000}\":1}");
    }
}
