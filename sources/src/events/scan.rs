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

use super::field::{tag, Field};

/// A field: its name's tag, its name, its value.
pub(super) type Tagged<'a> = (u64, Cow<'a, str>, Field<'a>);

/// Nested values deeper than this are left to `serde_json` with the whole
/// event, whose recursion limit (128) counts from the top.
const MAX_DEPTH: usize = 100;

/// The fields of the object that is all of `text`, in the order sent;
/// `None` when `text` is anything else or this reader leaves it to
/// `serde_json`.
pub(super) fn object(text: &str) -> Option<Vec<Tagged<'_>>> {
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
            s.field(&mut fields, key)?;
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

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `word` that is a quote, a backslash or
/// below 0x20, read as little-endian. Bytes above the first such byte may
/// be marked falsely (a borrow), so only the lowest mark is exact.
fn special_bytes(word: u64) -> u64 {
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let quote = zero(word ^ (ONES * u64::from(b'"')));
    let backslash = zero(word ^ (ONES * u64::from(b'\\')));
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
    quote | backslash | control
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
        match self.plain() {
            Some(s) => Some(Cow::Borrowed(s)),
            None => self.escaped(start).map(Cow::Owned),
        }
    }

    /// The string whose opening quote was just read, when it holds no
    /// escapes (returned in two registers, where a `Cow` goes through
    /// memory); `None` at a backslash (`at` on it) or at what is not JSON.
    #[inline]
    fn plain(&mut self) -> Option<&'a str> {
        let start = self.at;
        // Eight bytes at a time up to the first quote, backslash or
        // control character (then byte by byte from it, or for the last
        // few bytes).
        while let Some(chunk) = self.bytes.get(self.at..self.at + 8) {
            let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
            let special = special_bytes(word);
            if special != 0 {
                self.at += (special.trailing_zeros() / 8) as usize;
                break;
            }
            self.at += 8;
        }
        loop {
            match *self.bytes.get(self.at)? {
                b'"' => {
                    self.at += 1;
                    // Both ends are ASCII quotes: char boundaries.
                    return Some(&self.text[start..self.at - 1]);
                }
                // Control characters must be escaped in JSON strings; a
                // backslash is left to `escaped`.
                0..=0x1f | b'\\' => return None,
                _ => self.at += 1,
            }
        }
    }

    /// The rest of a string from a backslash (`at`) that [`Self::plain`]
    /// stopped at; the string began at `start`. The closing quote is found,
    /// then serde_json decodes the string.
    #[cold]
    fn escaped(&mut self, start: usize) -> Option<String> {
        if self.peek()? != b'\\' {
            return None;
        }
        while let Some(&b) = self.bytes.get(self.at) {
            match b {
                b'\\' => self.at += 2,
                b'"' => {
                    self.at += 1;
                    let quoted = self.text.get(start - 1..self.at)?;
                    return serde_json::from_str::<String>(quoted).ok();
                }
                _ => self.at += 1,
            }
        }
        None
    }

    /// Reads the value of field `key` and appends the field. Each kind of
    /// value is built where it is pushed (a value returned through
    /// `Option` was moved twice, and the moves cost more than the reading).
    fn field(&mut self, fields: &mut Vec<Tagged<'a>>, key: Cow<'a, str>) -> Option<()> {
        let t = tag(&key);
        match self.peek()? {
            b'"' => {
                self.at += 1;
                let start = self.at;
                match self.plain() {
                    Some(s) => fields.push((t, key, Field::Str(Cow::Borrowed(s)))),
                    None => {
                        let s = self.escaped(start)?;
                        fields.push((t, key, Field::Str(Cow::Owned(s))));
                    }
                }
            }
            b't' => {
                self.word(b"true")?;
                fields.push((t, key, Field::Bool(true)));
            }
            b'f' => {
                self.word(b"false")?;
                fields.push((t, key, Field::Bool(false)));
            }
            b'n' => {
                self.word(b"null")?;
                fields.push((t, key, Field::Null));
            }
            b'-' | b'0'..=b'9' => {
                let n = self.number()?;
                fields.push((t, key, n));
            }
            b'{' | b'[' => {
                let v = self.nested()?;
                fields.push((t, key, v));
            }
            _ => return None,
        }
        Some(())
    }

    fn word(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at + word.len();
        (self.bytes.get(self.at..end)? == word).then(|| self.at = end)
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

    /// The lowest mark is the first special byte, at every position and
    /// next to every byte value.
    #[test]
    fn the_first_special_byte_is_found_a_word_at_a_time() {
        let is_special = |b: u8| b == b'"' || b == b'\\' || b < 0x20;
        for at in 0..8 {
            for special in (0..=255u8).filter(|&b| is_special(b)) {
                for filler in 0..=255u8 {
                    let mut bytes = [filler; 8];
                    bytes[at] = special;
                    let want = bytes.iter().position(|&b| is_special(b)).unwrap();
                    let marks = special_bytes(u64::from_le_bytes(bytes));
                    assert_eq!((marks.trailing_zeros() / 8) as usize, want, "{bytes:?}");
                }
            }
            for filler in (0..=255u8).filter(|&b| !is_special(b)) {
                assert_eq!(
                    special_bytes(u64::from_le_bytes([filler; 8])),
                    0,
                    "{filler}"
                );
            }
        }
    }

    /// What the hand reader takes on itself and what it leaves.
    #[test]
    fn common_events_are_read_by_hand() {
        let fields = object(r#" {"a":"x","b":-2,"c":1.5,"d":[1],"e":"\u00e9","a":null} "#)
            .expect("read by hand");
        for (t, k, _) in &fields {
            assert_eq!(*t, tag(k));
        }
        let fields: Vec<_> = fields.into_iter().map(|(_, k, v)| (k, v)).collect();
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
