"""Stripe's Python client (PyPI `stripe`) against tally: the meter events of
the test (JSON on stdin) sent with `stripe.billing.MeterEvent.create`,
`stripe.api_base` pointed at tally. Prints what the client got back as JSON.
Env: TALLY_URL, TALLY_INGEST_TOKEN."""
import json
import os
import sys

import stripe

plan = json.load(sys.stdin)
stripe.api_base = os.environ["TALLY_URL"]
stripe.api_key = os.environ["TALLY_INGEST_TOKEN"]
stripe.max_network_retries = 0

seen = {"created": []}
for e in plan["events"]:
    got = stripe.billing.MeterEvent.create(
        event_name=e["event_name"],
        payload={"stripe_customer_id": e["customer"], "value": str(e["value"])},
        identifier=e["identifier"],
        timestamp=e["timestamp"],
    )
    seen["created"].append({"object": got["object"], "identifier": got["identifier"],
                            "event_name": got["event_name"]})
try:
    stripe.billing.MeterEvent.create(event_name="api_calls", payload={"value": "1"})
    seen["bad"] = None
except stripe.error.InvalidRequestError as err:
    seen["bad"] = {"status": err.http_status, "param": err.param, "message": err.user_message}
print(json.dumps(seen))
