//! Text a client chose (user names, certificate names, paths), made safe to write to a log or a
//! terminal: control characters (newlines, escape sequences, C1 codes) and backslashes are
//! written as Rust-style escapes, so no value can start a forged log line or drive the reader's
//! terminal. Text without them is written as is, at no cost beyond one scan.

use std::fmt;

/// Displays the wrapped text with control characters escaped.
#[derive(Clone, Copy, Debug)]
pub struct Escaped<'a>(pub &'a str);

fn needs_escape(c: char) -> bool {
    c.is_control() || c == '\\' || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}')
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0;
        if !text.chars().any(needs_escape) {
            return f.write_str(text);
        }
        for c in text.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                c if needs_escape(c) => write!(f, "{}", c.escape_default())?,
                c => fmt::Write::write_char(f, c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_could_forge_a_line_or_drive_a_terminal() {
        let shown = |s: &str| Escaped(s).to_string();
        assert_eq!(shown("ann"), "ann");
        assert_eq!(shown("zoë/app"), "zoë/app");
        assert_eq!(
            shown("evil\n2026-01-01 INFO login OK user=admin"),
            "evil\\n2026-01-01 INFO login OK user=admin"
        );
        assert_eq!(shown("\x1b]0;pwned\x07"), "\\u{1b}]0;pwned\\u{7}");
        assert_eq!(shown("a\rb\tc\u{9b}d"), "a\\rb\\tc\\u{9b}d");
        assert_eq!(
            shown("a\\nb"),
            "a\\\\nb",
            "a literal backslash stays unambiguous"
        );
        assert_eq!(shown("\u{202e}txt"), "\\u{202e}txt");
        assert!(!shown("x\u{0}\u{7f}y").chars().any(char::is_control));
    }
}
