//! Splits a request body into events: one JSON object, a JSON array, or
//! NDJSON (one object a line).

use serde_json::Value as Json;

/// One item of a body: the event, or why its line could not be read.
pub enum Item {
    Event(Json),
    Unreadable { raw: String, error: String },
}

/// The body as a whole is not JSON (and not NDJSON).
#[derive(Debug)]
pub struct InvalidBody(pub String);

pub fn split(body: &[u8], ndjson: bool) -> Result<Vec<Item>, InvalidBody> {
    if ndjson {
        return Ok(split_lines(body));
    }
    match serde_json::from_slice::<Json>(body) {
        Ok(Json::Array(items)) => Ok(items.into_iter().map(Item::Event).collect()),
        Ok(obj @ Json::Object(_)) => Ok(vec![Item::Event(obj)]),
        Ok(other) => Err(InvalidBody(format!(
            "expected a JSON object, an array of objects, or NDJSON; got {}",
            match other {
                Json::String(_) => "a string",
                Json::Number(_) => "a number",
                Json::Bool(_) => "a boolean",
                _ => "null",
            }
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
    matches!(first_two, (Some(a), Some(_)) if serde_json::from_slice::<Json>(a).is_ok())
}

fn split_lines(body: &[u8]) -> Vec<Item> {
    body.split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .map(|line| match serde_json::from_slice::<Json>(line) {
            Ok(v) => Item::Event(v),
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
