//! The dashboard in a real headless Chromium (Debian's, over the DevTools
//! protocol) against the real binary: every page loads without a console
//! error, shows the APIs' numbers for data sent here (and those numbers
//! equal sums computed here), the live page moves within 3 seconds of new
//! data, the bill downloads as the API's CSV, the configuration form shows
//! validation errors beside their fields, and with tokens on the page asks
//! once and a tenant's token shows that tenant only. Screenshots of every
//! page, wide and light and phone-sized and dark, go to
//! `target/tmp/dashboard-screenshots/` (and to `$TALLY_SCREENSHOTS_DIR`
//! when set).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Datelike, SecondsFormat, TimeZone, Utc};
use common::browser::{Browser, Firefox, Tab};
use common::{create_token, Rng, Tally};
use serde_json::{json, Value};

/// (input, output, cache write, cache read) USD per token; `model-x` has none.
const PRICES: [(&str, [f64; 4]); 2] = [
    ("model-a", [1e-6, 2e-6, 1e-6, 1e-6]),
    ("model-b", [3e-6, 15e-6, 3.75e-6, 0.3e-6]),
];
const MODELS: [&str; 3] = ["model-a", "model-b", "model-x"];
const TENANTS: [&str; 2] = ["microdao:1", "microdao:2"];

fn price_file(dir: &Path) -> PathBuf {
    let mut m = serde_json::Map::new();
    for (model, p) in PRICES {
        m.insert(
            model.into(),
            json!({"input_cost_per_token": p[0], "output_cost_per_token": p[1],
                   "cache_creation_input_token_cost": p[2], "cache_read_input_token_cost": p[3],
                   "litellm_provider": "acme"}),
        );
    }
    let path = dir.join("prices.json");
    std::fs::write(&path, Value::Object(m).to_string()).unwrap();
    path
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// What the pages should show, summed here as events are made.
#[derive(Default, Debug)]
struct Expected {
    calls: BTreeMap<&'static str, i64>,
    tokens: BTreeMap<&'static str, i64>,
    toward_limit: i64,
    cost: f64,
    unpriced: i64,
    hours: BTreeSet<i64>,
}

/// `n` LLM calls of the last 3 hours over both tenants and all models.
fn llm_events(rng: &mut Rng, prefix: &str, n: usize, e: &mut Expected) -> Vec<Value> {
    let now = Utc::now();
    (0..n)
        .map(|i| {
            let tenant = TENANTS[rng.below(2) as usize];
            let model = MODELS[rng.below(3) as usize];
            let at = now - chrono::Duration::seconds(60 + rng.below(3 * 3600 - 120) as i64);
            let [p, c, cw, cr] = [5000, 2000, 3000, 20000].map(|m| rng.below(m) as i64);
            *e.calls.entry(tenant).or_default() += 1;
            *e.tokens.entry(tenant).or_default() += p + c + cw + cr;
            e.toward_limit += p + c;
            e.hours.insert(at.timestamp() / 3600);
            match PRICES.iter().find(|(m, _)| *m == model) {
                Some((_, pr)) => {
                    e.cost +=
                        p as f64 * pr[0] + c as f64 * pr[1] + cw as f64 * pr[2] + cr as f64 * pr[3]
                }
                None => e.unpriced += 1,
            }
            let agent = ["agent:a", "agent:b"][i % 2];
            json!({"event_id": format!("{prefix}-{i}"), "timestamp": ts(at),
                "actor_id": format!("user:{}", rng.below(3)), "actor_type": "human",
                "agent_id": agent, "microdao_id": tenant,
                "model": model, "provider": "acme", "prompt_tokens": p, "completion_tokens": c,
                "cache_creation_tokens": cw, "cache_read_tokens": cr,
                "total_tokens": p + c + cw + cr, "latency_ms": 100 + i, "success": true})
        })
        .collect()
}

async fn post(t: &Tally, token: Option<&str>, path: &str, body: String) -> (u16, Value) {
    let mut r = reqwest::Client::new().post(t.url(path)).body(body);
    if let Some(tok) = token {
        r = r.bearer_auth(tok);
    }
    r = r.header("content-type", "application/json");
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get(t: &Tally, token: Option<&str>, path: &str) -> reqwest::Response {
    let mut r = reqwest::Client::new().get(t.url(path));
    if let Some(tok) = token {
        r = r.bearer_auth(tok);
    }
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r
}

async fn get_json(t: &Tally, path: &str) -> Value {
    get(t, None, path).await.json().await.unwrap()
}

/// VM samples of two VMs of `cust-1`, every 10 s from 15 to 5 minutes
/// ago; returns the CPU-seconds they add up to.
async fn send_vms(t: &Tally) -> f64 {
    let start = Utc::now().timestamp() - 900;
    let mut cpu_ns = 0i64;
    for (v, rate) in [("vm-1", 500_000_000i64), ("vm-2", 2_000_000_000)] {
        let metrics: Vec<Value> = (0..60)
            .map(|i| {
                json!({"timestamp": ts(Utc.timestamp_opt(start + i * 10, 0).unwrap()),
                    "cpuTimeNanos": (1_000_000_000 + i * rate).to_string(),
                    "memoryUsageBytes": (2i64 << 30).to_string(),
                    "diskReadBytes": (i * 4096).to_string(), "diskWriteBytes": (i * 8192).to_string(),
                    "networkRxBytes": (i * 1000).to_string(), "networkTxBytes": (i * 3000).to_string()})
            })
            .collect();
        cpu_ns += 59 * rate;
        let (s, r) = post(
            t,
            None,
            "/billing.v1.BillingService/SendMetricsBatch",
            json!({"vmId": v, "customerId": "cust-1", "metrics": metrics}).to_string(),
        )
        .await;
        assert_eq!(s, 200, "{r}");
    }
    cpu_ns as f64 / 1e9
}

fn screenshot_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots")];
    if let Some(d) = std::env::var_os("TALLY_SCREENSHOTS_DIR") {
        dirs.push(PathBuf::from(d));
    }
    dirs
}

async fn screenshot(page: &impl Tab, name: &str) {
    for d in screenshot_dirs() {
        page.screenshot(&d.join(format!("{name}.png"))).await;
    }
}

fn no_errors(page: &impl Tab, what: &str) {
    let errors = page.errors();
    assert!(errors.is_empty(), "{what}: console errors {errors:#?}");
}

fn close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= 1e-9 * want.abs().max(1.0),
        "{what}: page {got}, expected {want}"
    );
}

/// The rows of the table `data-testid=id`, each a list of cell texts.
async fn table(page: &impl Tab, id: &str) -> Vec<Vec<String>> {
    let v = page
        .eval(&format!(
            "[...document.querySelectorAll('[data-testid=\"{id}\"] tbody tr')].map(tr => [...tr.cells].map(td => td.innerText.trim()))"
        ))
        .await;
    serde_json::from_value(v).unwrap()
}

/// The text of the first CSV file the browser downloads into `dir`
/// (waiting up to 10 s for it).
async fn downloaded_csv(dir: &Path) -> String {
    for _ in 0..100 {
        let found = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "csv"));
        if let Some(file) = found {
            return std::fs::read_to_string(file).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no CSV was downloaded into {}", dir.display());
}

/// A server on `dir/data` with the test's prices, a fast flush and sampler.
async fn start(dir: &Path) -> Tally {
    let prices = price_file(dir);
    Tally::start(
        &dir.join("data"),
        &[
            "--prices",
            prices.to_str().unwrap(),
            "--flush-interval",
            "300ms",
            "--sampler-interval",
            "500ms",
            "--budget-interval",
            "1s",
        ],
    )
    .await
}

/// A monthly token budget of the first tenant.
async fn budget(t: &Tally, want: &Expected) {
    let (s, b) = post(
        t,
        None,
        "/v1/budgets",
        json!({"name": "tenant 1 tokens", "scope": {"microdao_id": TENANTS[0]},
               "metric": "total_tokens", "period": "month",
               "limit": want.tokens[TENANTS[0]] as f64 * 1.25})
        .to_string(),
    )
    .await;
    assert_eq!(s, 201, "{b}");
}

/// `from`, `to` and `window=month` of the current UTC month.
fn this_month_query() -> String {
    let now = Utc::now();
    let month = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .unwrap();
    let next = if now.month() == 12 {
        Utc.with_ymd_and_hms(now.year() + 1, 1, 1, 0, 0, 0).unwrap()
    } else {
        Utc.with_ymd_and_hms(now.year(), now.month() + 1, 1, 0, 0, 0)
            .unwrap()
    };
    let at = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    format!("from={}&to={}&window=month", at(month), at(next))
}

/// Every page in `page` shows the APIs' numbers, which equal `want`; the
/// live page moves within 3 s of new data (sent here, added to `want`).
async fn check_pages(
    page: &impl Tab,
    t: &Tally,
    rng: &mut Rng,
    want: &mut Expected,
    vm_cpu: f64,
    suffix: &str,
) {
    let base = t.url("/");

    // Live: host and ingest rates move; components listed.
    page.goto(&format!("{base}#/live")).await;
    page.wait_for(
        "Number(document.querySelector('[data-testid=live-updates]')?.dataset.value) >= 2",
        Duration::from_secs(20),
    )
    .await;
    page.wait_for(
        "document.querySelectorAll('[data-testid=live-health] tbody tr').length >= 4",
        Duration::from_secs(10),
    )
    .await;
    let health = table(page, "live-health").await;
    assert!(
        health.iter().any(|r| r[0] == "wal" && r[1] == "ok"),
        "{health:?}"
    );
    let rate = "(() => { const e = document.querySelector('[data-testid=\"live-rate-usage_llm\"]'); return e ? Number(e.dataset.value) : 0; })()";
    page.wait_for(&format!("{rate} === 0"), Duration::from_secs(10))
        .await;
    let more = llm_events(rng, &format!("live{suffix}"), 200, want);
    t.post_llm_events(&more).await;
    let took = page
        .wait_for(&format!("{rate} > 0"), Duration::from_secs(3))
        .await;
    assert!(took < Duration::from_secs(3), "live page took {took:?}");
    page.wait_for(
        "document.querySelector('[data-testid=live-fsync]')?.dataset.value !== undefined",
        Duration::from_secs(10),
    )
    .await;
    no_errors(page, "live");
    screenshot(page, &format!("live{suffix}")).await;

    // LLM usage: totals, breakdown by tenant, unpriced model flagged.
    page.goto(&format!("{base}#/llm")).await;
    page.wait_for(
        "document.querySelector('[data-testid=llm-calls]')",
        Duration::from_secs(15),
    )
    .await;
    let api = get_json(t, "/internal/usage/summary?period_hours=24").await;
    let s = &api["summary"];
    let calls: i64 = want.calls.values().sum();
    let tokens: i64 = want.tokens.values().sum();
    assert_eq!(s["llm_calls_total"], calls);
    assert_eq!(s["llm_tokens_total"], tokens);
    assert_eq!(s["unpriced_calls"], want.unpriced);
    close(
        s["llm_cost_usd_total"].as_f64().unwrap(),
        want.cost,
        "API cost",
    );
    assert_eq!(page.number("llm-calls").await, calls as f64);
    assert_eq!(page.number("llm-tokens").await, tokens as f64);
    assert_eq!(page.number("llm-unpriced").await, want.unpriced as f64);
    close(
        page.number("llm-cost").await,
        s["llm_cost_usd_total"].as_f64().unwrap(),
        "cost",
    );
    let by_tenant = table(page, "llm-breakdown").await;
    let shown: BTreeMap<String, String> = by_tenant
        .iter()
        .map(|r| (r[0].clone(), r[1].replace(',', "")))
        .collect();
    let expected: BTreeMap<String, String> = want
        .calls
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(shown, expected);
    let models = table(page, "llm-models").await;
    let x = models
        .iter()
        .find(|r| r[0] == "model-x")
        .expect("model-x listed");
    assert_eq!(x.last().unwrap(), "unpriced");
    let bars = page
        .eval("document.querySelectorAll('svg[aria-label=\"tokens per hour\"] rect').length")
        .await;
    assert_eq!(bars, want.hours.len());
    no_errors(page, "llm");
    screenshot(page, &format!("llm{suffix}")).await;

    // VM billing: this month's bill, as the API has it, and its CSV.
    page.goto(&format!("{base}#/vm")).await;
    page.wait_for(
        "document.querySelectorAll('[data-testid=vm-table] tbody tr td.num').length > 0",
        Duration::from_secs(15),
    )
    .await;
    let q = this_month_query();
    let bill = get_json(t, &format!("/v1/billing/vm-usage?{q}")).await;
    let api_cpu: f64 = bill
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["cpu_seconds"].as_f64().unwrap())
        .sum();
    close(api_cpu, vm_cpu, "API CPU-seconds");
    close(page.number("vm-cpu").await, api_cpu, "CPU-seconds");
    assert_eq!(table(page, "vm-table").await.len(), 2);
    no_errors(page, "vm");
    screenshot(page, &format!("vm{suffix}")).await;

    // Plan: the active block's numbers, then the form's validation.
    page.goto(&format!("{base}#/plan")).await;
    page.wait_for(
        "document.querySelector('[data-testid=plan-tokens]')",
        Duration::from_secs(15),
    )
    .await;
    let stats = get_json(t, "/api/usage/stats").await;
    assert_eq!(stats["totals"]["tokens_toward_limit"], want.toward_limit);
    page.wait_for(
        &format!(
            "Number(document.querySelector('[data-testid=plan-tokens]')?.dataset.value) === {}",
            want.toward_limit
        ),
        Duration::from_secs(15),
    )
    .await;
    let pct = page
        .eval("Number(document.querySelector('[data-testid=plan-tokens]')?.dataset.percent)")
        .await;
    close(
        pct.as_f64().unwrap(),
        stats["totals"]["token_percentage"].as_f64().unwrap(),
        "token %",
    );
    assert_eq!(
        page.number("plan-reset").await,
        stats["predictions"]["limit_resets_at"].as_f64().unwrap()
    );
    page.wait_for(
        "document.querySelector('form.config [name=refresh_rate]').value !== ''",
        Duration::from_secs(10),
    )
    .await;
    page.eval("(() => { const f = document.querySelector('form.config'); f.refresh_rate.value = '99'; f.reset_hour.value = '30'; f.requestSubmit(); })()").await;
    page.wait_for(
        "document.querySelector('[data-error-for=refresh_rate]')?.innerText.includes('refresh_rate')",
        Duration::from_secs(10),
    )
    .await;
    let hour_error = page
        .eval("document.querySelector('[data-error-for=reset_hour]')?.innerText")
        .await;
    assert!(
        hour_error.as_str().unwrap().contains("reset_hour"),
        "{hour_error}"
    );
    let cfg = get_json(t, "/api/usage/config").await;
    assert_eq!(cfg["refresh_rate"], 10, "a refused form changes nothing");
    screenshot(page, &format!("plan{suffix}")).await;
    page.eval("(() => { const f = document.querySelector('form.config'); f.refresh_rate.value = '30'; f.reset_hour.value = ''; f.requestSubmit(); })()").await;
    page.wait_for(
        "document.querySelector('[data-testid=plan-config-status]')?.innerText === 'saved'",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(get_json(t, "/api/usage/config").await["refresh_rate"], 30);
    post(t, None, "/api/usage/config/reset", String::new()).await;
    // The refused POST's 400 is a network log entry, not a script error.
    let errors: Vec<String> = page
        .errors()
        .into_iter()
        .filter(|e| !(e.contains("status of 400") && e.contains("/api/usage/config")))
        .collect();
    assert!(errors.is_empty(), "plan: {errors:#?}");

    // Budgets: the state as the API evaluates it.
    page.goto(&format!("{base}#/budgets")).await;
    page.wait_for(
        "document.querySelector('[data-testid=budget-used]')",
        Duration::from_secs(15),
    )
    .await;
    let budgets = get_json(t, "/v1/budgets").await;
    let used = budgets["budgets"][0]["used"].as_f64().unwrap();
    assert_eq!(used, want.tokens[TENANTS[0]] as f64);
    page.wait_for(
        &format!(
            "Number(document.querySelector('[data-testid=budget-used]')?.dataset.value) === {used}"
        ),
        Duration::from_secs(15),
    )
    .await;
    no_errors(page, "budgets");
    screenshot(page, &format!("budgets{suffix}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_shows_the_apis_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(dir.path()).await;

    // The files: gzip when asked, an ETag that revalidates, cache headers.
    let client = reqwest::Client::new();
    let r = client
        .get(t.url("/"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert_eq!(r.headers()["cache-control"], "no-cache");
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let gz = r.bytes().await.unwrap();
    let mut html = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut html).unwrap();
    let plain = client.get(t.url("/ui/")).send().await.unwrap();
    assert!(plain.headers().get("content-encoding").is_none());
    assert_eq!(plain.text().await.unwrap(), html);
    let again = client
        .get(t.url("/"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    let js = html
        .split('"')
        .find(|s| s.starts_with("/ui/app.js?v="))
        .expect("index.html names app.js with its hash");
    let r = client.get(t.url(js)).send().await.unwrap();
    assert_eq!(
        r.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    let missing = client.get(t.url("/ui/nothing.js")).send().await.unwrap();
    assert_eq!(missing.status(), 404);

    // Data: LLM calls, VM samples, a budget.
    let mut rng = Rng::from_time();
    let mut want = Expected::default();
    let events = llm_events(&mut rng, "e", 120, &mut want);
    t.post_llm_events(&events).await;
    let vm_cpu = send_vms(&t).await;
    budget(&t, &want).await;

    let browser = Browser::launch().await;
    let downloads = tempfile::tempdir().unwrap();
    for (width, height, dark, suffix) in [(1280, 900, false, ""), (390, 844, true, "-phone-dark")] {
        let page = browser.page(width, height, dark).await;
        check_pages(&page, &t, &mut rng, &mut want, vm_cpu, suffix).await;
        if suffix.is_empty() {
            page.goto(&t.url("/#/vm")).await;
            page.wait_for(
                "document.querySelector('[data-testid=vm-csv]')",
                Duration::from_secs(10),
            )
            .await;
            page.downloads_to(downloads.path()).await;
            page.eval("document.querySelector('[data-testid=vm-csv]').click()")
                .await;
            let q = this_month_query();
            let csv_want = get(&t, None, &format!("/v1/billing/vm-usage?{q}&format=csv"))
                .await
                .text()
                .await
                .unwrap();
            assert_eq!(downloaded_csv(downloads.path()).await, csv_want);
            assert_eq!(csv_want.lines().count(), 3, "{csv_want}");
        }
        page.call("Page.close", json!({})).await;
    }
}

/// The same pages in Firefox (ESR, WebDriver BiDi), wide and light, and
/// phone-sized and dark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firefox_shows_the_same_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(dir.path()).await;
    let mut rng = Rng::from_time();
    let mut want = Expected::default();
    t.post_llm_events(&llm_events(&mut rng, "e", 120, &mut want))
        .await;
    let vm_cpu = send_vms(&t).await;
    budget(&t, &want).await;
    for (width, height, dark, suffix) in [
        (1280, 900, false, "-firefox"),
        (390, 844, true, "-firefox-phone-dark"),
    ] {
        let tab = Firefox::launch(width, height, dark).await;
        check_pages(&tab, &t, &mut rng, &mut want, vm_cpu, suffix).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_the_page_asks_once_and_a_tenant_sees_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let prices = price_file(dir.path());
    let admin = create_token(&data, "ops", "admin", &[]);
    let reader = create_token(&data, "team-1", "read", &[TENANTS[0]]);
    let t = Tally::start(
        &data,
        &[
            "--prices",
            prices.to_str().unwrap(),
            "--flush-interval",
            "300ms",
        ],
    )
    .await;
    let mut want = Expected::default();
    let events = llm_events(&mut Rng::from_time(), "e", 80, &mut want);
    let (s, r) = post(
        &t,
        Some(&admin),
        "/v1/events/usage.llm",
        common::ndjson(&events),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    // The page's files are open; the APIs are not.
    let r = reqwest::get(t.url("/")).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = reqwest::get(t.url("/internal/usage/summary"))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let browser = Browser::launch().await;
    let page = browser.page(1280, 900, false).await;
    page.goto(&t.url("/#/llm")).await;
    page.wait_for(
        "document.querySelector('#token-dialog').open",
        Duration::from_secs(10),
    )
    .await;
    screenshot(&page, "token").await;
    page.eval(&format!(
        "(() => {{ document.querySelector('#token-input').value = {:?}; document.querySelector('#token-form').requestSubmit(); }})()",
        reader
    ))
    .await;
    page.wait_for(
        "document.querySelector('[data-testid=llm-calls]')",
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(
        page.number("llm-calls").await,
        want.calls[TENANTS[0]] as f64
    );
    assert_eq!(
        page.number("llm-tokens").await,
        want.tokens[TENANTS[0]] as f64
    );
    let tenants: Vec<String> = table(&page, "llm-breakdown")
        .await
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(tenants, vec![TENANTS[0].to_string()]);
    // Kept in the browser: a reload asks no more.
    page.goto(&t.url("/#/plan")).await;
    page.wait_for(
        "document.querySelector('[data-testid=plan-tokens]')",
        Duration::from_secs(15),
    )
    .await;
    let open = page
        .eval("document.querySelector('#token-dialog').open")
        .await;
    assert_eq!(open, false);
    let stored = page.eval("localStorage.getItem('tally.token')").await;
    assert_eq!(stored, reader.as_str());
    // Only the first load's 401s are in the log, and no script error.
    let errors: Vec<String> = page
        .errors()
        .into_iter()
        .filter(|e| !e.contains("status of 401"))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

/// Damage found on disk makes `/health` degraded: the live page says so in
/// a banner until an operator acknowledges it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degraded_health_is_shown_loudly_until_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let hour = data.join("usage_llm/date=2025-11-24/hour=10");
    std::fs::create_dir_all(&hour).unwrap();
    std::fs::write(
        hour.join("not-parquet.parquet"),
        b"this is not a Parquet file",
    )
    .unwrap();
    let t = Tally::start(&data, &["--sampler-interval", "500ms"]).await;
    let (_, health) = t.health().await;
    assert_eq!(health["status"], "degraded", "{health}");

    let browser = Browser::launch().await;
    let page = browser.page(1280, 900, false).await;
    page.goto(&t.url("/#/live")).await;
    page.wait_for(
        "(() => { const b = document.querySelector('#banner'); return !b.hidden && b.classList.contains('degraded') && b.innerText.includes('DEGRADED') && b.innerText.includes('damage'); })()",
        Duration::from_secs(10),
    )
    .await;
    let damage = table(&page, "live-health")
        .await
        .into_iter()
        .find(|r| r[0] == "damage")
        .unwrap();
    assert_eq!(damage[1], "degraded");
    screenshot(&page, "live-degraded").await;
    no_errors(&page, "degraded live page");
    let (s, _) = post(&t, None, "/v1/damage/acknowledge", String::new()).await;
    assert_eq!(s, 200);
    page.wait_for(
        "document.querySelector('#banner').hidden",
        Duration::from_secs(5),
    )
    .await;
}

/// The Meters page: a meter made through the API, CloudEvents of the last
/// three days; the page's table by UTC day and subject equals sums computed
/// here, its chart has a bar per day, and its CSV is the API's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_meters_page_shows_a_meters_values_and_its_csv() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(dir.path()).await;
    let (s, b) = post(
        &t,
        None,
        "/api/v1/meters",
        json!({"slug": "api_calls_ms", "name": "API time", "eventType": "api_call",
               "aggregation": "SUM", "valueProperty": "$.ms", "groupBy": {"route": "$.route"}})
        .to_string(),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let mut rng = Rng::from_time();
    let now = Utc::now();
    let mut want: BTreeMap<(String, String), f64> = BTreeMap::new();
    let mut days = BTreeSet::new();
    let events: Vec<Value> = (0..60)
        .map(|i| {
            // Within the last three days, and not in the future.
            let at = now - chrono::Duration::seconds(60 + rng.below(3 * 86_400 - 120) as i64);
            let day = at.format("%Y-%m-%d 00:00Z").to_string();
            let subject = format!("cust-{}", rng.below(3));
            let ms = rng.below(500) as f64;
            let route = ["/a", "/b"][i % 2];
            *want.entry((day.clone(), subject.clone())).or_default() += ms;
            days.insert(day);
            json!({"specversion": "1.0", "id": format!("m-{i}"), "source": "dash", "type": "api_call",
                   "subject": subject, "time": at.to_rfc3339_opts(SecondsFormat::Millis, true),
                   "data": {"ms": ms, "route": route}})
        })
        .collect();
    let (s, b) = post(&t, None, "/api/v1/events", Value::Array(events).to_string()).await;
    assert_eq!(s, 204, "{b}");

    let browser = Browser::launch().await;
    let page = browser.page(1280, 900, false).await;
    let downloads = tempfile::tempdir().unwrap();
    page.downloads_to(downloads.path()).await;
    page.goto(&t.url("/#/meters")).await;
    page.wait_for(
        "document.querySelectorAll('[data-testid=meters-table] tbody tr td.num').length > 0",
        Duration::from_secs(20),
    )
    .await;
    let rows = table(&page, "meters-table").await;
    let got: BTreeMap<(String, String), f64> = rows
        .iter()
        .map(|r| {
            (
                (r[0].clone(), r[1].clone()),
                r[2].replace(',', "").parse::<f64>().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (k, w) in &want {
        close(got[k], *w, &format!("{k:?}"));
    }
    let bars = page
        .eval("document.querySelectorAll('[data-testid=meters-chart] rect.bar').length")
        .await;
    assert_eq!(bars, json!(days.len()));
    let agg = page
        .eval("document.querySelector('[data-testid=meters-aggregation]').innerText")
        .await;
    assert_eq!(agg, json!("SUM"));
    screenshot(&page, "meters").await;
    no_errors(&page, "meters page");

    // The CSV: the API's own, for the page's query.
    page.eval("document.querySelector('[data-testid=meters-csv]').click()")
        .await;
    let csv = downloaded_csv(downloads.path()).await;
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("window_start,window_end,subject,value"));
    let from_csv: BTreeMap<(String, String), f64> = lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let day = DateTime::parse_from_rfc3339(f[0])
                .unwrap()
                .with_timezone(&Utc)
                .format("%Y-%m-%d 00:00Z")
                .to_string();
            ((day, f[2].to_string()), f[3].parse().unwrap())
        })
        .collect();
    assert_eq!(from_csv.len(), want.len(), "{csv}");
    for (k, w) in &want {
        close(from_csv[k], *w, &format!("csv {k:?}"));
    }
    page.call("Page.close", json!({})).await;
}
