// OpenMeter's JavaScript client (npm `@openmeter/sdk`) against tally: the
// events of the test (JSON on stdin) sent as the client sends them, a bad
// one, and the list read back; a meter made, queried and deleted. Prints
// what it saw as JSON. Env: TALLY_URL, and TALLY_INGEST_TOKEN,
// TALLY_READ_TOKEN and TALLY_ADMIN_TOKEN (tally's roles are apart).
import { OpenMeter } from '@openmeter/sdk'

const chunks = []
for await (const c of process.stdin) chunks.push(c)
const plan = JSON.parse(Buffer.concat(chunks).toString())
const om = new OpenMeter({ baseUrl: process.env.TALLY_URL, apiKey: process.env.TALLY_INGEST_TOKEN })
const reader = new OpenMeter({ baseUrl: process.env.TALLY_URL, apiKey: process.env.TALLY_READ_TOKEN })
// The client sends Date objects (milliseconds) and batches of any size.
const withDate = (e) => ({ ...e, time: new Date(e.time) })

await om.events.ingest(withDate(plan.single))
await om.events.ingest(plan.batch.map(withDate))
await om.events.ingest(plan.again.map(withDate))

const seen = {}
try {
  await om.events.ingest(plan.bad)
  seen.bad_status = 204
} catch (e) {
  seen.bad_status = e.status ?? e.response?.status
  seen.bad_detail = e.getField?.('detail') ?? e.message
}
const listed = await reader.events.list({ from: new Date(plan.since), limit: 100 })
seen.events = listed.map((e) => ({
  id: e.event.id, subject: e.event.subject, data: e.event.data,
  time: new Date(e.event.time).toISOString(),
}))
// A meter made through the client after its events arrived, and queried.
const admin = new OpenMeter({ baseUrl: process.env.TALLY_URL, apiKey: process.env.TALLY_ADMIN_TOKEN })
const made = await admin.meters.create(plan.meter)
seen.meter = { id: made.id, slug: made.slug }
const q = plan.query
const result = await reader.meters.query(made.slug, {
  from: plan.since, windowSize: q.windowSize, windowTimeZone: q.windowTimeZone,
  subject: q.subject, groupBy: q.groupBy,
})
seen.rows = result.data.map((r) => ({
  subject: r.subject, value: r.value, groupBy: r.groupBy ?? {},
  windowStart: new Date(r.windowStart).toISOString(),
}))
// filterGroupBy[model]=… as the client writes it.
const filtered = await reader.meters.query(made.slug, {
  from: plan.since, windowSize: q.windowSize, windowTimeZone: q.windowTimeZone,
  groupBy: q.groupBy, filterGroupBy: { model: q.filterModel },
})
seen.filtered = filtered.data.map((r) => ({ value: r.value, groupBy: r.groupBy ?? {} }))
await admin.meters.delete(made.slug)
seen.after_delete = (await reader.meters.list()).filter((m) => m.slug === made.slug).length
console.log(JSON.stringify(seen))
