//! The JSON events of specs 001 and 004, by subject, and their mapping onto
//! datasets. Shared by every source that carries these events.

pub(crate) mod agent_usage;
pub(crate) mod chat_usage;
pub(crate) mod field;
pub(crate) mod fields;
mod invalid;
pub mod object;
mod scan;

use std::fmt;

use tally_pipeline::batch::{Row, RowsByDataset};
use tally_pipeline::{Dataset, Record, Rejection};

pub use invalid::InvalidEvent;
use object::{Event, NotAnObject, Object};

/// A subject (NATS subject, HTTP path segment, Kafka topic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject {
    UsageLlm,
    UsageTool,
    UsageAgent,
    MessageCreated,
    ChatUsageDelta,
    ChatUsageSummary,
}

impl Subject {
    pub const ALL: [Subject; 6] = [
        Subject::UsageLlm,
        Subject::UsageTool,
        Subject::UsageAgent,
        Subject::MessageCreated,
        Subject::ChatUsageDelta,
        Subject::ChatUsageSummary,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Subject::UsageLlm => "usage.llm",
            Subject::UsageTool => "usage.tool",
            Subject::UsageAgent => "usage.agent",
            Subject::MessageCreated => "messaging.message.created",
            Subject::ChatUsageDelta => "chat.usage_delta",
            Subject::ChatUsageSummary => "chat.usage_summary",
        }
    }

    pub fn from_name(name: &str) -> Option<Subject> {
        Subject::ALL.into_iter().find(|s| s.name() == name)
    }

    pub fn dataset(self) -> Dataset {
        match self {
            Subject::UsageLlm | Subject::ChatUsageDelta => Dataset::UsageLlm,
            Subject::UsageTool => Dataset::UsageTool,
            Subject::UsageAgent => Dataset::UsageAgent,
            Subject::MessageCreated => Dataset::UsageMessage,
            Subject::ChatUsageSummary => Dataset::UsageChatSummary,
        }
    }

    /// One message of this event type (JSON bytes) as a record, or as the
    /// rejection that keeps it with its reason. `channel` is the NATS subject
    /// or Kafka topic it came on.
    pub fn decode_message(self, channel: &str, payload: &[u8]) -> Result<Record, Rejection> {
        Object::parse(payload)
            .map_err(|e| InvalidEvent(format!("message is not valid JSON: {e}")))
            .and_then(|event| self.decode(&event))
            .map_err(|InvalidEvent(reason)| Rejection {
                index: None,
                subject: Some(channel.to_string()),
                dataset: Some(self.dataset()),
                reason,
                payload: String::from_utf8_lossy(payload).into_owned(),
            })
    }

    /// One message of this event type (JSON bytes) decoded into a row of
    /// [`Subject::dataset`] in `rows`, or the rejection that keeps it with
    /// its reason. `channel` is the NATS subject or Kafka topic it came on.
    pub fn decode_message_into(
        self,
        channel: &str,
        payload: &[u8],
        rows: &mut RowsByDataset,
    ) -> Result<(), Rejection> {
        let reason = match Object::parse(payload) {
            Err(e) => format!("message is not valid JSON: {e}"),
            Ok(event) => {
                let mut row = Row::new(self.dataset());
                match self.decode_into(&event, &mut row) {
                    Ok(()) => match rows.push(&row) {
                        Ok(()) => return Ok(()),
                        Err(e) => e.to_string(),
                    },
                    Err(InvalidEvent(reason)) => reason,
                }
            }
        };
        Err(Rejection {
            index: None,
            subject: Some(channel.to_string()),
            dataset: Some(self.dataset()),
            reason,
            payload: String::from_utf8_lossy(payload).into_owned(),
        })
    }

    /// Turns one event into a record, or says what is wrong with it.
    pub fn decode(self, event: &Event) -> Result<Record, InvalidEvent> {
        let mut row = Row::new(self.dataset());
        self.decode_into(event, &mut row)?;
        row.into_record().map_err(|e| InvalidEvent(e.to_string()))
    }

    /// Turns one event's fields into a record, or says what is wrong.
    pub fn decode_object(self, obj: &Object) -> Result<Record, InvalidEvent> {
        let mut row = Row::new(self.dataset());
        self.decode_object_into(obj, &mut row)?;
        row.into_record().map_err(|e| InvalidEvent(e.to_string()))
    }

    /// Decodes one event into a row of [`Subject::dataset`] (cleared
    /// first), its strings borrowed from the event, or says what is wrong
    /// with its fields. The row's fit to the schema is checked where it is
    /// appended ([`tally_pipeline::batch::Rows::push`]).
    pub fn decode_into<'a>(
        self,
        event: &'a Event<'a>,
        row: &mut Row<'a>,
    ) -> Result<(), InvalidEvent> {
        match event {
            Event::Object(obj) => self.decode_object_into(obj, row),
            Event::Other(NotAnObject(what), _) => Err(InvalidEvent(format!(
                "a {} event must be a JSON object, got {what}",
                self.name(),
            ))),
        }
    }

    /// [`Subject::decode_into`] for an event already read as fields.
    pub fn decode_object_into<'a>(
        self,
        obj: &'a Object<'a>,
        row: &mut Row<'a>,
    ) -> Result<(), InvalidEvent> {
        row.clear();
        match self {
            Subject::UsageLlm => agent_usage::llm(obj, row),
            Subject::UsageTool => agent_usage::tool(obj, row),
            Subject::UsageAgent => agent_usage::agent(obj, row),
            Subject::MessageCreated => agent_usage::message(obj, row),
            Subject::ChatUsageDelta => chat_usage::delta(obj, row),
            Subject::ChatUsageSummary => chat_usage::summary(obj, row),
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
