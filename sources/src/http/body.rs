//! Splits a request body into events: one JSON object, a JSON array, or
//! NDJSON (one object a line).

use serde::Deserialize;

use crate::events::object::{Event, NotAnObject, Object};

/// One item of a body: the event, or why its line could not be read.
pub enum Item<'a> {
    Event {
        event: Event<'a>,
        /// The item's own text, when the body has it apart (a line, or the
        /// whole body); items of an array are written back as JSON.
        text: Option<&'a [u8]>,
    },
    Unreadable {
        raw: String,
        error: String,
    },
}

impl Item<'_> {
    /// The item as JSON text: what a rejection or the tap keeps.
    pub fn payload(&self) -> String {
        match self {
            Item::Event {
                text: Some(text), ..
            } => String::from_utf8_lossy(text).into_owned(),
            Item::Event {
                event: Event::Object(obj),
                text: None,
            } => serde_json::Value::Object(obj.to_map()).to_string(),
            Item::Event {
                event: Event::Other(_, value),
                text: None,
            } => value.to_string(),
            Item::Unreadable { raw, .. } => raw.clone(),
        }
    }
}

/// The body as a whole is not JSON (and not NDJSON).
#[derive(Debug)]
pub struct InvalidBody(pub String);

/// A body that is one JSON value: an object, or an array of events.
enum Whole<'a> {
    Array(Vec<ArrayItem<'a>>),
    One(Event<'a>),
}

/// An element of an array body: an event, or (inside the array) any
/// other value, which is rejected on its own.
struct ArrayItem<'a>(Event<'a>);

impl<'de> serde::Deserialize<'de> for ArrayItem<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Event::deserialize(d).map(ArrayItem)
    }
}

/// A body that is one JSON scalar (refused as a whole).
fn not_an_object<'a>(what: &'static str) -> Whole<'a> {
    Whole::One(Event::Other(NotAnObject(what), serde_json::Value::Null))
}

impl<'de> serde::Deserialize<'de> for Whole<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Whole<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object or an array of objects")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Whole<'de>, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<ArrayItem>()? {
                    items.push(item);
                }
                Ok(Whole::Array(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Whole<'de>, A::Error> {
                Event::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(Whole::One)
            }
            fn visit_str<E>(self, _: &str) -> Result<Whole<'de>, E> {
                Ok(not_an_object("a string"))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Whole<'de>, E> {
                Ok(not_an_object("a number"))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Whole<'de>, E> {
                Ok(not_an_object("a number"))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Whole<'de>, E> {
                Ok(not_an_object("a number"))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Whole<'de>, E> {
                Ok(not_an_object("a boolean"))
            }
            fn visit_unit<E>(self) -> Result<Whole<'de>, E> {
                Ok(not_an_object("null"))
            }
        }
        d.deserialize_any(V)
    }
}

pub fn split(body: &[u8], ndjson: bool) -> Result<Vec<Item<'_>>, InvalidBody> {
    if ndjson {
        return Ok(split_lines(body));
    }
    match serde_json::from_slice::<Whole>(body) {
        Ok(Whole::Array(items)) => Ok(items
            .into_iter()
            .map(|ArrayItem(event)| Item::Event { event, text: None })
            .collect()),
        Ok(Whole::One(event @ Event::Object(_))) => Ok(vec![Item::Event {
            event,
            text: Some(body),
        }]),
        Ok(Whole::One(Event::Other(NotAnObject(what), _))) => Err(InvalidBody(format!(
            "expected a JSON object, an array of objects, or NDJSON; got {what}"
        ))),
        // Several objects, one a line, sent without the NDJSON content type.
        Err(e) if e.is_data() || looks_like_ndjson(body) => Ok(split_lines(body)),
        Err(e) => Err(InvalidBody(e.to_string())),
    }
}

fn looks_like_ndjson(body: &[u8]) -> bool {
    let mut lines = body
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace));
    let first_two = (lines.next(), lines.next());
    matches!(first_two, (Some(a), Some(_)) if Object::parse(a).is_ok())
}

fn split_lines(body: &[u8]) -> Vec<Item<'_>> {
    body.split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .map(|line| match Object::parse(line) {
            Ok(event) => Item::Event {
                event,
                text: Some(line.trim_ascii()),
            },
            Err(e) => Item::Unreadable {
                raw: String::from_utf8_lossy(line).into_owned(),
                error: format!("line is not valid JSON: {e}"),
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(items: &[Item]) -> (usize, usize) {
        let bad = items
            .iter()
            .filter(|i| matches!(i, Item::Unreadable { .. }))
            .count();
        (items.len() - bad, bad)
    }

    #[test]
    fn object_array_and_ndjson() {
        assert_eq!(count(&split(br#"{"a":1}"#, false).unwrap()), (1, 0));
        assert_eq!(
            count(&split(br#"[{"a":1},{"b":2}]"#, false).unwrap()),
            (2, 0)
        );
        assert_eq!(
            count(&split(b"{\"a\":1}\n\n{oops\n{\"c\":3}\n", true).unwrap()),
            (2, 1)
        );
        // NDJSON without its content type is still read line by line.
        assert_eq!(
            count(&split(b"{\"a\":1}\n{\"b\":2}\n", false).unwrap()),
            (2, 0)
        );
    }

    #[test]
    fn garbage_is_an_invalid_body() {
        assert!(split(b"not json at all", false).is_err());
        assert!(split(b"42", false).is_err());
        assert!(split(b"", false).is_err());
    }
}
