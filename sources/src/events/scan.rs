//! An event's top-level fields read by hand, without serde's visitor per
//! field: the common event (an object of strings, numbers, booleans and
//! nulls) is read in one loop over its bytes. Anything this reader does not
//! take on itself (text that is not JSON, a number that needs care, a
//! nesting deeper than [`MAX_DEPTH`]) makes it give up, and `serde_json`
//! reads the whole event instead, so every answer and every error message
//! stays `serde_json`'s. Nested values and strings with escapes are handed
//! to `serde_json` alone.

use std::borrow::Cow;

use serde_json::Value as Json;

use super::object::Field;

/// Nested values deeper than this are left to `serde_json` with the whole
/// event, whose recursion limit (128) counts from the top.
const MAX_DEPTH: usize = 100;

/// The fields of the object that is all of `text`, in the order sent;
/// `None` when `text` is anything else or this reader leaves it to
/// `serde_json`.
pub(super) fn object(text: &str) -> Option<Vec<(Cow<'_, str>, Field<'_>)>> {
    let mut s = Scanner {
        text,
        bytes: text.as_bytes(),
        at: 0,
    };
    s.skip_ws();
    s.expect(b'{')?;
    let mut fields = Vec::with_capacity(24);
    s.skip_ws();
    if s.peek()? == b'}' {
        s.at += 1;
    } else {
        loop {
            s.expect(b'"')?;
            let key = s.string()?;
            s.skip_ws();
            s.expect(b':')?;
            s.skip_ws();
            let value = s.value()?;
            fields.push((key, value));
            s.skip_ws();
            match s.peek()? {
                b',' => {
                    s.at += 1;
                    s.skip_ws();
                }
                b'}' => {
                    s.at += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    s.skip_ws();
    (s.at == s.bytes.len()).then_some(fields)
}

struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn expect(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.at += 1)
    }

    /// JSON's whitespace: space, tab, line feed, carriage return.
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// The string whose opening quote was just read. Without escapes it
    /// is borrowed from the text; with them `serde_json` decodes it.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        let start = self.at;
        loop {
            match *self.bytes.get(self.at)? {
                b'"' => {
                    self.at += 1;
                    // Both ends are ASCII quotes: char boundaries.
                    return Some(Cow::Borrowed(&self.text[start..self.at - 1]));
                }
                b'\\' => break,
                // Control characters must be escaped in JSON strings.
                0..=0x1f => return None,
                _ => self.at += 1,
            }
        }
        // Escapes: find the closing quote, then let serde_json decode.
        while let Some(&b) = self.bytes.get(self.at) {
            match b {
                b'\\' => self.at += 2,
                b'"' => {
                    self.at += 1;
                    let quoted = self.text.get(start - 1..self.at)?;
                    return serde_json::from_str::<String>(quoted).ok().map(Cow::Owned);
                }
                _ => self.at += 1,
            }
        }
        None
    }

    fn value(&mut self) -> Option<Field<'a>> {
        match self.peek()? {
            b'"' => {
                self.at += 1;
                self.string().map(Field::Str)
            }
            b't' => self.word(b"true", Field::Bool(true)),
            b'f' => self.word(b"false", Field::Bool(false)),
            b'n' => self.word(b"null", Field::Null),
            b'-' | b'0'..=b'9' => self.number(),
            b'{' | b'[' => self.nested(),
            _ => None,
        }
    }

    fn word(&mut self, word: &[u8], field: Field<'a>) -> Option<Field<'a>> {
        let end = self.at + word.len();
        (self.bytes.get(self.at..end)? == word).then(|| {
            self.at = end;
            field
        })
    }

    /// A number as `serde_json` reads it: an integer (without fraction or
    /// exponent) as a 64-bit integer, anything else as a float. Integers
    /// of more than 18 digits, and floats, are `serde_json`'s to read.
    fn number(&mut self) -> Option<Field<'a>> {
        let start = self.at;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.at += 1;
        }
        let digits = self.at;
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => {
                while let Some(b'0'..=b'9') = self.peek() {
                    self.at += 1;
                }
            }
            _ => return None,
        }
        let int_end = self.at;
        let mut float = false;
        if self.peek() == Some(b'.') {
            self.at += 1;
            float = true;
            self.digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            float = true;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.digits()?;
        }
        // (A digit straight after a leading zero is not JSON: the caller,
        // finding it where a comma or a brace must be, gives up.)
        if float {
            return serde_json::from_str::<f64>(&self.text[start..self.at])
                .ok()
                .map(Field::Float);
        }
        if int_end - digits > 18 {
            return None;
        }
        let n = self.bytes[digits..int_end]
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        Some(match (negative, n) {
            (false, n) => Field::PosInt(n),
            // serde_json reads `-0` as a float.
            (true, 0) => Field::Float(-0.0),
            (true, n) => Field::NegInt(-(n as i64)),
        })
    }

    /// One or more digits.
    fn digits(&mut self) -> Option<()> {
        let from = self.at;
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
        (self.at > from).then_some(())
    }

    /// An array or object: its extent found by matching brackets outside
    /// strings, then read by `serde_json`.
    fn nested(&mut self) -> Option<Field<'a>> {
        let start = self.at;
        let mut depth = 0usize;
        while let Some(&b) = self.bytes.get(self.at) {
            self.at += 1;
            match b {
                b'{' | b'[' => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return None;
                    }
                }
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        let text = &self.text[start..self.at];
                        return serde_json::from_str::<Json>(text).ok().map(Field::Nested);
                    }
                }
                b'"' => loop {
                    match *self.bytes.get(self.at)? {
                        b'\\' => self.at += 2,
                        b'"' => {
                            self.at += 1;
                            break;
                        }
                        _ => self.at += 1,
                    }
                },
                _ => {}
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the hand reader takes on itself and what it leaves.
    #[test]
    fn common_events_are_read_by_hand() {
        let fields = object(r#" {"a":"x","b":-2,"c":1.5,"d":[1],"e":"\u00e9","a":null} "#)
            .expect("read by hand");
        assert_eq!(
            fields,
            vec![
                (Cow::Borrowed("a"), Field::Str(Cow::Borrowed("x"))),
                (Cow::Borrowed("b"), Field::NegInt(-2)),
                (Cow::Borrowed("c"), Field::Float(1.5)),
                (Cow::Borrowed("d"), Field::Nested(serde_json::json!([1]))),
                (Cow::Borrowed("e"), Field::Str(Cow::Owned("é".into()))),
                (Cow::Borrowed("a"), Field::Null),
            ]
        );
        assert!(matches!(fields[4].1, Field::Str(Cow::Owned(_))));
        for left in [
            r#"{"a":01}"#,
            r#"{"a":1234567890123456789}"#,
            "{\"a\":\"\u{1}\"}",
            r#"{"a":1}x"#,
            "[1]",
            r#"{"a":1,}"#,
        ] {
            assert_eq!(object(left), None, "{left}");
        }
    }
}
