"""OpenMeter's Python client (PyPI `openmeter`) against tally: the events of
the test (JSON on stdin) sent as the client sends them, a bad one, and the
list read back. Prints what it saw as JSON. Env: TALLY_URL, TALLY_TOKEN."""
import datetime
import json
import os
import sys

from corehttp.exceptions import HttpResponseError
from openmeter import Client
from openmeter.models import Event

plan = json.load(sys.stdin)
client = Client(endpoint=os.environ["TALLY_URL"], token=os.environ["TALLY_INGEST_TOKEN"])
reader = Client(endpoint=os.environ["TALLY_URL"], token=os.environ["TALLY_READ_TOKEN"])

# One event as application/json (the client sends only an Event model so),
# then batches (application/cloudevents-batch+json).
client.events.ingest_events_json(Event(plan["single"]))
client.events.ingest_events(plan["batch"])
client.events.ingest_events(plan["again"])

seen = {}
try:
    client.events.ingest_events([plan["bad"]])
    seen["bad_status"] = 204
except HttpResponseError as e:
    seen["bad_status"] = e.status_code
    seen["bad_detail"] = json.loads(e.response.text())["detail"]

since = datetime.datetime.fromisoformat(plan["since"].replace("Z", "+00:00"))
listed = reader.events.list(from_parameter=since, limit=100)
seen["events"] = [
    {"id": e.event.id, "subject": e.event.subject, "data": e.event.data,
     "time": e.event.time.isoformat() if hasattr(e.event.time, "isoformat") else e.event.time}
    for e in listed
]
# A meter made through the client after its events arrived, and queried.
admin = Client(endpoint=os.environ["TALLY_URL"], token=os.environ["TALLY_ADMIN_TOKEN"])
made = admin.meters.create(plan["meter"])
seen["meter"] = {"id": made.id, "slug": made.slug}
q = plan["query"]
# GET with query parameters, and POST with a MeterQueryRequest body.
result = reader.meters.query_json(
    made.slug,
    from_parameter=since,
    window_size=q["windowSize"],
    window_time_zone=q["windowTimeZone"],
    subject=q["subject"],
    group_by=q["groupBy"],
)
posted = reader.meters.query(made.slug, {
    "from": plan["since"], "windowSize": q["windowSize"], "windowTimeZone": q["windowTimeZone"],
    "subject": q["subject"], "groupBy": q["groupBy"],
})


def rows(answer):
    return [
        {"subject": r.subject, "value": r.value, "groupBy": dict(r.group_by or {}),
         "windowStart": r.window_start.isoformat() if hasattr(r.window_start, "isoformat") else r.window_start}
        for r in answer.data
    ]


seen["rows"] = rows(result)
seen["posted_rows"] = rows(posted)
seen["csv"] = reader.meters.query_csv(made.slug, from_parameter=since, window_size=q["windowSize"],
                                      window_time_zone=q["windowTimeZone"], subject=q["subject"],
                                      group_by=q["groupBy"])
admin.meters.delete(made.slug)
seen["after_delete"] = len([m for m in reader.meters.list() if m.slug == made.slug])
print(json.dumps(seen))
