//! Values interpolated into `key=value` log lines.
//!
//! A value that comes from outside (an `--id` output, a command, an error
//! text) could otherwise contain a space and `event=...` and forge fields
//! that an operator's alert greps for. [`q`] writes a value bare when it
//! cannot be mistaken for more than one field, and quoted and escaped (Rust
//! string syntax: `\"`, `\\`, `\n`, `\u{..}`) when it could.

use std::fmt;

/// A log value: bare if safe, else quoted. See the module docs.
pub struct Quoted<'a>(pub &'a str);

/// Shorthand for [`Quoted`].
pub fn q(value: &str) -> Quoted<'_> {
    Quoted(value)
}

/// Bytes that never need quoting: no space, `=`, quote or control byte.
fn is_bare(value: &str) -> bool {
    !value.is_empty()
        && value.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'_' | b'.' | b':' | b'/' | b'@' | b'+' | b',' | b'%' | b'~' | b'#'
                )
        })
}

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_bare(self.0) {
            f.write_str(self.0)
        } else {
            write!(f, "{:?}", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_values_stay_bare() {
        for v in [
            "v1",
            "sha256:abc123",
            "1.2.3-rc.1+build",
            "ghcr.io/a/b@sha256:ff",
        ] {
            assert_eq!(q(v).to_string(), v);
        }
    }

    #[test]
    fn values_that_could_forge_fields_are_quoted() {
        assert_eq!(q("v1 event=x").to_string(), r#""v1 event=x""#);
        assert_eq!(q("a=b").to_string(), r#""a=b""#);
        assert_eq!(q("say \"hi\"").to_string(), r#""say \"hi\"""#);
        assert_eq!(q("line\nnext").to_string(), r#""line\nnext""#);
        assert_eq!(q("").to_string(), r#""""#);
    }
}
