//! One JSON event read in one pass, without building a tree: its top-level
//! fields as typed scalars (strings borrowed from the payload where they
//! hold no escapes). Only nested values (`metadata`, arrays) become
//! `serde_json::Value`s.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value as Json};
use tally_pipeline::dataset::same_name;

use super::field::tag;
pub use super::field::Field;
use super::scan;

/// The top-level fields of one event, in the order sent, each with its
/// name's [`tag`].
#[derive(Debug, Clone, Default)]
pub struct Object<'a> {
    fields: Vec<(u64, Cow<'a, str>, Field<'a>)>,
    /// One bit per field, at [`bit`] of its tag: a name whose bit is
    /// clear is absent without a look at the fields (about half the names
    /// a decoder asks for are optional and not sent).
    present: u64,
}

/// The bit of [`Object::present`] that a tag sets.
fn bit(tag: u64) -> u64 {
    1 << (tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58)
}

/// A payload that is JSON but not an object; what it is instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotAnObject(pub &'static str);

/// What a payload holds at its top level.
#[derive(Debug)]
pub enum Event<'a> {
    Object(Object<'a>),
    /// What it is, and the value itself.
    Other(NotAnObject, Json),
}

impl<'a> Object<'a> {
    /// The event in `payload`; `Err` when it is not JSON (the parser's
    /// message).
    pub fn parse(payload: &'a [u8]) -> Result<Event<'a>, serde_json::Error> {
        // Checked as UTF-8 once, the text is read without checking each
        // string again (`from_slice` checks every string on its own).
        // Text that is not UTF-8 is read by `from_slice`, for its error.
        // The common event is read by hand ([`scan`]); what it leaves,
        // `serde_json` reads, so answers and errors are serde_json's.
        match std::str::from_utf8(payload) {
            Ok(text) => match scan::object(text) {
                Some(fields) => Ok(Event::Object(Object::new(fields))),
                None => serde_json::from_str(text),
            },
            Err(_) => serde_json::from_slice(payload),
        }
    }

    /// The event in `payload` as `serde_json` alone reads it (what
    /// [`Object::parse`] must agree with).
    pub fn parse_with_serde(payload: &'a [u8]) -> Result<Event<'a>, serde_json::Error> {
        serde_json::from_slice(payload)
    }

    /// The fields in the order sent, repeated names included.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &Field<'a>)> {
        self.fields.iter().map(|(_, k, v)| (k.as_ref(), v))
    }

    fn new(fields: Vec<(u64, Cow<'a, str>, Field<'a>)>) -> Object<'a> {
        let present = fields.iter().fold(0, |bits, (t, _, _)| bits | bit(*t));
        Object { fields, present }
    }

    /// An object already parsed into a tree (a JSON array body).
    pub fn from_map(map: &'a Map<String, Json>) -> Object<'a> {
        Object::new(
            map.iter()
                .map(|(k, v)| (tag(k), Cow::Borrowed(k.as_str()), Field::from_json(v)))
                .collect(),
        )
    }

    /// An object from fields as built by a source (no JSON text or tree
    /// in between), in order.
    pub fn from_fields(fields: Vec<(&'a str, Field<'a>)>) -> Object<'a> {
        Object::new(
            fields
                .into_iter()
                .map(|(k, v)| (tag(k), Cow::Borrowed(k), v))
                .collect(),
        )
    }

    /// The field's value; the last one when a name is sent twice (as
    /// JSON parsers that build maps keep it).
    pub fn get(&self, name: &str) -> Option<&Field<'a>> {
        let t = tag(name);
        if self.present & bit(t) == 0 {
            return None;
        }
        self.fields
            .iter()
            .rev()
            .find(|(kt, k, _)| *kt == t && same_name(k, name))
            .map(|(_, _, v)| v)
    }

    /// Fields by name, each once (the last value of a repeated name).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Field<'a>)> {
        self.fields
            .iter()
            .enumerate()
            .filter(|(i, (_, k, _))| !self.fields[i + 1..].iter().any(|(_, later, _)| later == k))
            .map(|(_, (_, k, v))| (k.as_ref(), v))
    }

    /// The object as a `serde_json` map.
    pub fn to_map(&self) -> Map<String, Json> {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_json()))
            .collect()
    }
}

impl<'de> Deserialize<'de> for Field<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FieldVisitor)
    }
}

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = Field<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Field<'de>, E> {
        Ok(Field::Null)
    }
    fn visit_none<E>(self) -> Result<Field<'de>, E> {
        Ok(Field::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Field<'de>, E> {
        Ok(Field::Bool(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Field<'de>, E> {
        Ok(Field::PosInt(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Field<'de>, E> {
        Ok(if v < 0 {
            Field::NegInt(v)
        } else {
            Field::PosInt(v as u64)
        })
    }
    fn visit_f64<E>(self, v: f64) -> Result<Field<'de>, E> {
        Ok(Field::Float(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Field<'de>, E> {
        Ok(Field::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Field<'de>, E> {
        Ok(Field::Str(Cow::Owned(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Field<'de>, E> {
        Ok(Field::Str(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Field<'de>, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element::<Json>()? {
            items.push(v);
        }
        Ok(Field::Nested(Json::Array(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Field<'de>, A::Error> {
        let mut m = Map::new();
        while let Some((k, v)) = map.next_entry::<String, Json>()? {
            m.insert(k, v);
        }
        Ok(Field::Nested(Json::Object(m)))
    }
}

/// A field name, borrowed from the payload when it holds no escapes
/// (serde's own `Cow<str>` always copies).
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for Event<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(EventVisitor)
    }
}

struct EventVisitor;

impl<'de> Visitor<'de> for EventVisitor {
    type Value = Event<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Event<'de>, A::Error> {
        let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(24));
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            fields.push((tag(&key), key, map.next_value::<Field<'de>>()?));
        }
        Ok(Event::Object(Object::new(fields)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Event<'de>, A::Error> {
        let v = FieldVisitor.visit_seq(seq)?.to_json();
        Ok(Event::Other(NotAnObject("an array"), v))
    }
    fn visit_unit<E>(self) -> Result<Event<'de>, E> {
        Ok(Event::Other(NotAnObject("null"), Json::Null))
    }
    fn visit_bool<E>(self, v: bool) -> Result<Event<'de>, E> {
        Ok(Event::Other(NotAnObject("a boolean"), Json::Bool(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Event<'de>, E> {
        Ok(Event::Other(NotAnObject("a number"), Json::from(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Event<'de>, E> {
        Ok(Event::Other(NotAnObject("a number"), Json::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Event<'de>, E> {
        Ok(Event::Other(
            NotAnObject("a number"),
            Field::Float(v).to_json(),
        ))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Event<'de>, E> {
        Ok(Event::Other(NotAnObject("a string"), Json::from(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Text that is not UTF-8 is refused with `serde_json`'s own message,
    /// inside a string or out of one; escapes still decode.
    #[test]
    fn text_that_is_not_utf8_is_serde_jsons_error() {
        for bad in [
            &b"{\"a\":\"x\xffy\"}"[..],
            b"{\"a\xc3\":1}",
            b"{\"a\":1}\xff",
            b"\xef\xbb",
        ] {
            let want = serde_json::from_slice::<Json>(bad).unwrap_err().to_string();
            assert_eq!(Object::parse(bad).unwrap_err().to_string(), want);
        }
        let Event::Object(o) = Object::parse("{\"a\":\"é\\u00e9\"}".as_bytes()).unwrap() else {
            panic!("an object")
        };
        assert_eq!(o.get("a"), Some(&Field::Str(Cow::Owned("éé".into()))));
    }

    /// The same event read in one pass and through a `serde_json` tree
    /// gives the same fields.
    #[test]
    fn one_pass_agrees_with_the_tree() {
        let text = r#"{"s":"plain","e":"tab\there","n":-3,"p":7,"big":18446744073709551615,
            "f":1.5,"b":false,"z":null,"m":{"k":[1,2]},"a":[{"x":1}],"s":"again"}"#;
        let Event::Object(one_pass) = Object::parse(text.as_bytes()).unwrap() else {
            panic!("an object")
        };
        let tree: Json = serde_json::from_str(text).unwrap();
        let from_tree = Object::from_map(tree.as_object().unwrap());
        assert_eq!(one_pass.to_map(), from_tree.to_map());
        assert_eq!(Json::Object(one_pass.to_map()), tree);
        assert_eq!(one_pass.get("s"), Some(&Field::Str("again".into())));
        assert!(matches!(
            one_pass.get("s"),
            Some(Field::Str(Cow::Borrowed(_)))
        ));
        assert!(matches!(one_pass.get("e"), Some(Field::Str(Cow::Owned(_)))));
        assert_eq!(one_pass.get("big").unwrap().as_i64(), None);
        assert_eq!(one_pass.get("n").unwrap().as_i64(), Some(-3));
        assert_eq!(one_pass.get("m").unwrap().kind(), "an object");
        assert_eq!(one_pass.iter().count(), 10);
    }

    /// Names that share a length, a head or a tail are still told apart,
    /// and a lookup finds exactly the field a plain name comparison finds.
    #[test]
    fn lookups_by_tag_find_what_names_find() {
        let names = [
            "a",
            "b",
            "ab",
            "ba",
            "event_id",
            "agent_id",
            "actor_id",
            "event_ie",
            "prompt_tokens",
            "prompt_tokenz",
            "xprompt_tokens",
            "completion_tokens",
            "completion_tokenz",
            "total_tokens",
            "cache_read_tokens",
            "cache_creation_tokens",
            "",
            "é",
            "timestamp",
            "timestamq",
            "a_very_long_field_name_that_ends_in_x",
            "a_very_long_field_name_that_ends_in_y",
            "b_very_long_field_name_that_ends_in_x",
        ];
        let text = format!(
            "{{{}}}",
            names
                .iter()
                .enumerate()
                .map(|(i, n)| format!("{n:?}:{i}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let Event::Object(obj) = Object::parse(text.as_bytes()).unwrap() else {
            panic!("an object")
        };
        for (i, n) in names.iter().enumerate() {
            assert_eq!(obj.get(n), Some(&Field::PosInt(i as u64)), "{n}");
        }
        for absent in [
            "c",
            "event_i",
            "event_idd",
            "Event_id",
            "total_token",
            "ab ",
        ] {
            assert_eq!(obj.get(absent), None, "{absent}");
        }
    }

    /// Both readers' answers to `text`: equal fields in the same order,
    /// or the same error message.
    fn agree(text: &[u8]) {
        let shown = String::from_utf8_lossy(text);
        match (Object::parse(text), Object::parse_with_serde(text)) {
            (Ok(Event::Object(a)), Ok(Event::Object(b))) => {
                let a: Vec<_> = a.fields().collect();
                let b: Vec<_> = b.fields().collect();
                assert_eq!(a, b, "{shown}");
                // The same floats to the bit (-0.0 equals 0.0 otherwise).
                for ((_, x), (_, y)) in a.iter().zip(&b) {
                    if let (Field::Float(x), Field::Float(y)) = (x, y) {
                        assert_eq!(x.to_bits(), y.to_bits(), "{shown}");
                    }
                }
            }
            (Ok(Event::Other(a, x)), Ok(Event::Other(b, y))) => {
                assert_eq!((a, x), (b, y), "{shown}")
            }
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{shown}"),
            (a, b) => panic!("{shown}: the readers disagree: {a:?} / {b:?}"),
        }
    }

    /// The hand reader takes what serde_json takes and gives up on the
    /// rest: at the edges of numbers, strings, nesting and whitespace.
    #[test]
    fn the_hand_reader_agrees_with_serde_json_at_the_edges() {
        let values = [
            "0",
            "-0",
            "7",
            "-7",
            "01",
            "-01",
            "1.",
            ".5",
            "1.5",
            "-1.5e3",
            "1e",
            "1e+",
            "1E-2",
            "2e400",
            "-2e400",
            "1e-400",
            "123456789012345678",
            "1234567890123456789",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
            "0.1e1",
            "0x1",
            "+1",
            "-",
            "--1",
            "1.5.5",
            "0.30000000000000004",
            "9007199254740993.0",
            "true",
            "false",
            "null",
            "tru",
            "nul",
            "falsey",
            "True",
            "\"\"",
            "\"a\"",
            "\"\\\"\"",
            "\"\\u00e9\"",
            "\"\\ud800\"",
            "\"\\x\"",
            "\"tab\there\"",
            "\"\u{1f}\"",
            "\"\u{10}\"",
            "\"é中😀\"",
            "\"\u{7f}\"",
            "\"",
            "\"\\\"",
            "{}",
            "[]",
            "{\"k\":[1,{\"x\":\"]\"}]}",
            "[1,2",
            "{\"a\":}",
            "[\"]\"]",
            "{\"a\":1,\"a\":2}",
            "[1,]",
            "{\"a\" 1}",
        ];
        for v in values {
            for text in [
                format!("{{\"v\":{v}}}"),
                format!("{{ \"a\" : 1 , \"v\" :\t{v}\r\n}}\n"),
                format!("{{\"v\":{v},\"z\":null}}"),
                format!("{{\"v\":{v}}} x"),
                format!("{{\"v\":{v}"),
                format!("{{\"v\":{v},}}"),
                format!("{{{v}:1}}"),
                format!("[{v}]"),
                v.to_string(),
            ] {
                agree(text.as_bytes());
            }
        }
        let deep = |n: usize| format!("{{\"d\":{}{}}}", "[".repeat(n), "]".repeat(n));
        for n in [1, 99, 100, 101, 126, 127, 128, 200] {
            agree(deep(n).as_bytes());
        }
        for text in [
            "",
            " ",
            "{",
            "}",
            "{}",
            " {} ",
            "{,}",
            "{\"a\":1}}",
            "{\"a\":1}{}",
        ] {
            agree(text.as_bytes());
        }
    }

    /// Random events, and random damage to them, read both ways.
    #[test]
    fn the_hand_reader_agrees_with_serde_json_on_random_text() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let pieces = [
            "\"event_id\"",
            "\"a\\\"b\"",
            "\"\\n\"",
            "\"é\"",
            "0",
            "-0",
            "12",
            "-3",
            "4.25",
            "1e9",
            "true",
            "false",
            "null",
            "{}",
            "[1,\"x\"]",
            "{\"m\":{\"n\":[]}}",
            "99999999999999999999",
            "\"\u{1}\"",
        ];
        let mut by_hand = 0;
        let bytes = b"{}[]\":,\\ \t\n-+.eE0123456789tfnul\x01\x1f\x7f";
        for _ in 0..20_000 {
            let mut text = String::from("{");
            for i in 0..next(6) {
                if i > 0 {
                    text.push(',');
                }
                text.push_str(&format!("\"k{}\":", next(4)));
                text.push_str(pieces[next(pieces.len())]);
            }
            text.push('}');
            let mut raw = text.into_bytes();
            for _ in 0..next(3) {
                let at = next(raw.len() + 1);
                match next(3) {
                    0 if at < raw.len() => {
                        raw.remove(at);
                    }
                    1 if at < raw.len() => raw[at] = bytes[next(bytes.len())],
                    _ => raw.insert(at, bytes[next(bytes.len())]),
                }
            }
            agree(&raw);
            let taken = std::str::from_utf8(&raw).ok().and_then(scan::object);
            by_hand += usize::from(taken.is_some());
        }
        // Most texts are read by hand, not all left to serde_json.
        assert!(
            (5_000..19_000).contains(&by_hand),
            "{by_hand} of 20000 by hand"
        );
    }

    #[test]
    fn other_top_levels_say_what_they_are() {
        for (text, kind) in [
            ("[1,{}]", "an array"),
            ("\"x\"", "a string"),
            ("4", "a number"),
            ("-4.5", "a number"),
            ("true", "a boolean"),
            ("null", "null"),
        ] {
            match Object::parse(text.as_bytes()).unwrap() {
                Event::Other(NotAnObject(k), v) => {
                    assert_eq!(k, kind, "{text}");
                    assert_eq!(v, serde_json::from_str::<Json>(text).unwrap());
                }
                Event::Object(_) => panic!("{text} is not an object"),
            }
        }
        let err = Object::parse(b"{\"a\":").unwrap_err();
        let tree_err = serde_json::from_slice::<Json>(b"{\"a\":").unwrap_err();
        assert_eq!(err.to_string(), tree_err.to_string());
        assert_eq!(json!(null), Field::Null.to_json());
    }
}
