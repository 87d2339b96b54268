//! Showing text that came from a peer (user names, namespaces, process names, key ids) on a
//! terminal, in a prompt or in a notice.
//!
//! Such text is attacker-chosen: a carriage return, an erase-line sequence or a run of newlines
//! can forge or hide what the user reads, and bidi overrides or zero-width characters can make
//! one name look like another. Every such character is shown as a visible escape instead;
//! printable text (any script) passes through unchanged.

use std::borrow::Cow;
use std::fmt::Write;

/// Characters that change how text around them is shown without being visible themselves:
/// Unicode's format characters (category Cf: soft hyphen, bidi marks, embeddings, overrides and
/// isolates, zero-width spaces and joiners, invisible operators, the BOM, tag characters) and
/// the line and paragraph separators (which some terminals and dialogs break lines at).
const INVISIBLE: &[(u32, u32)] = &[
    (0x00AD, 0x00AD),
    (0x0600, 0x0605),
    (0x061C, 0x061C),
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x180E, 0x180E),
    (0x200B, 0x200F),
    (0x2028, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x206F),
    (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001),
    (0xE0020, 0xE007F),
];

/// Must `c` be escaped before a person sees it? C0 controls (including tab and newline), DEL,
/// C1 controls (U+0080..U+009F: U+009B alone is a CSI on many terminals) and the invisible
/// format characters above.
pub fn needs_escape(c: char) -> bool {
    let u = c as u32;
    u < 0x20 || (0x7F..=0x9F).contains(&u) || INVISIBLE.iter().any(|&(lo, hi)| (lo..=hi).contains(&u))
}

/// `text` with every character that [`needs_escape`] written as `\n`, `\r`, `\t`, `\xNN` or
/// `\u{NNNN}`, and backslashes doubled so an escape in the input cannot pass for one of ours.
/// Borrowed when there is nothing to escape (the common case).
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c == '\\' || needs_escape(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && needs_escape(c) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:04x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// For sinks that may get text already passed through [`escape`] (a prompt seam, a notice):
/// unchanged when nothing in it needs escaping, else [`escape`]d. Escaped text never needs
/// escaping again, so this never doubles an escape; raw text with controls still gets one.
pub fn ensure_safe(text: &str) -> Cow<'_, str> {
    if text.chars().any(needs_escape) {
        escape(text)
    } else {
        Cow::Borrowed(text)
    }
}

/// A JSON line made safe to print as it is: JSON already escapes C0 controls inside strings, but
/// may carry DEL, C1 and format characters raw; those become `\uNNNN` escapes (astral ones as a
/// surrogate pair), which JSON readers decode to the same text. Anything outside strings is left
/// alone.
pub fn json_line(line: &str) -> Cow<'_, str> {
    if !line.chars().any(needs_escape) {
        return Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 8);
    let mut units = [0u16; 2];
    for c in line.chars() {
        if needs_escape(c) {
            for unit in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{:04x}", unit);
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_and_other_scripts_pass_through_borrowed() {
        for s in ["alice", "git <- zsh", "sshsig:file", "Jürgen", "ユーザー", "مرحبا", ""] {
            assert!(matches!(escape(s), Cow::Borrowed(_)), "{s:?}");
            assert_eq!(escape(s), s);
        }
    }

    #[test]
    fn controls_are_made_visible() {
        assert_eq!(escape("a\nb\rc\td"), "a\\nb\\rc\\td");
        assert_eq!(escape("\x1b[2K\x1b[8m"), "\\x1b[2K\\x1b[8m");
        assert_eq!(escape("\0\x07\x7f"), "\\x00\\x07\\x7f");
        // C1: CSI and NEL.
        assert_eq!(escape("\u{9b}31m\u{85}"), "\\u{009b}31m\\u{0085}");
    }

    #[test]
    fn bidi_and_zero_width_characters_are_made_visible() {
        assert_eq!(escape("root\u{202e}gnp.exe"), "root\\u{202e}gnp.exe");
        assert_eq!(escape("a\u{200b}b\u{2066}c\u{2069}\u{feff}"), "a\\u{200b}b\\u{2066}c\\u{2069}\\u{feff}");
        assert_eq!(escape("x\u{2028}y"), "x\\u{2028}y");
        assert_eq!(escape("tag\u{e0041}"), "tag\\u{e0041}");
        assert_eq!(escape("soft\u{ad}hyphen"), "soft\\u{00ad}hyphen");
    }

    #[test]
    fn backslashes_are_doubled_so_escapes_cannot_be_forged() {
        assert_eq!(escape("a\\nb"), "a\\\\nb");
        assert_ne!(escape("a\\nb"), escape("a\nb"));
    }

    #[test]
    fn a_forged_log_line_stays_on_one_visible_line() {
        let forged = "root\r\x1b[2K2026-11-22T10:00:00.000Z allow  sign\x1b[8m";
        let shown = escape(forged);
        assert!(!shown.chars().any(|c| c.is_control()), "{shown}");
        assert!(shown.starts_with("root\\r\\x1b[2K"), "{shown}");
    }

    #[test]
    fn ensure_safe_escapes_raw_text_once() {
        let raw = "alice\n\n\nthrough a FORWARDED agent";
        let once = escape(raw);
        assert_eq!(ensure_safe(&once), once, "already escaped: unchanged");
        assert_eq!(ensure_safe("a\u{1b}b"), "a\\x1bb");
        assert_eq!(ensure_safe("x\\y\n"), "x\\\\y\\n", "raw text is fully escaped");
        assert_eq!(ensure_safe("plain \\ text"), "plain \\ text");
    }

    #[test]
    fn json_lines_keep_their_meaning() {
        let value = serde_json::json!({ "user": "a\u{7f}b\u{9b}c\u{202e}d\u{e0041}" });
        let line = serde_json::to_string(&value).unwrap();
        let safe = json_line(&line);
        assert!(!safe.chars().any(needs_escape), "{safe}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&safe).unwrap(), value);
        let plain = r#"{"user":"alice"}"#;
        assert!(matches!(json_line(plain), Cow::Borrowed(_)));
    }
}
