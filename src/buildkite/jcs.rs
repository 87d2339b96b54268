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
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
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
        }
    }
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

fn string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
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
