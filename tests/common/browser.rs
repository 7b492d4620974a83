//! Real headless browsers: Chromium driven over the DevTools protocol and
//! Firefox over WebDriver BiDi (each a WebSocket of JSON commands). Pages
//! at a chosen size and colour scheme, script evaluation, console errors,
//! screenshots, downloads (Chromium). [`Tab`] is what a test asks of either.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_tungstenite::tungstenite::Message;

type Pending = Arc<parking_lot::Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// The Chromium binary: `TALLY_TEST_CHROMIUM`, else Debian's.
pub fn chromium() -> PathBuf {
    std::env::var_os("TALLY_TEST_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// One WebSocket of JSON commands: answers matched to commands by `id`,
/// everything else kept as an event.
struct Connection {
    out: mpsc::UnboundedSender<Message>,
    pending: Pending,
    next_id: std::sync::atomic::AtomicU64,
    events: Arc<parking_lot::Mutex<Vec<Value>>>,
}

impl Connection {
    async fn open(url: &str) -> Connection {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
        let (mut sink, mut stream) = ws.split();
        let (out, mut rx) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
        });
        let pending: Pending = Default::default();
        let events: Arc<parking_lot::Mutex<Vec<Value>>> = Default::default();
        let (p, e) = (pending.clone(), events.clone());
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                let Message::Text(t) = m else { continue };
                let Ok(v) = serde_json::from_str::<Value>(&t) else {
                    continue;
                };
                match v["id"].as_u64() {
                    Some(id) => {
                        if let Some(tx) = p.lock().remove(&id) {
                            let _ = tx.send(v);
                        }
                    }
                    None => e.lock().push(v),
                }
            }
        });
        Connection {
            out,
            pending,
            next_id: 1.into(),
            events,
        }
    }

    /// Sends `msg` with a fresh `id` and waits for its answer; an error
    /// answer panics with its message.
    async fn call(&self, mut msg: Value) -> Value {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        msg["id"] = json!(id);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(id, tx);
        self.out
            .send(Message::Text(msg.to_string().into()))
            .unwrap();
        let v = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .unwrap_or_else(|_| panic!("{}: no answer in 30 s", msg["method"]))
            .unwrap();
        assert!(
            v.get("error").is_none(),
            "{}: {} {}",
            msg["method"],
            v["error"],
            v["message"]
        );
        v["result"].clone()
    }
}

/// Waits for a file the browser writes once it listens.
async fn wait_for_file(path: &Path, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if s.lines().count() >= 2 || s.trim_end().ends_with('}') {
                return s;
            }
        }
        assert!(Instant::now() < deadline, "{what} did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    conn: Connection,
}

impl Browser {
    pub async fn launch() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", chromium().display()));
        // Chromium writes its port and browser path once it listens.
        let s = wait_for_file(&profile.path().join("DevToolsActivePort"), "chromium").await;
        let mut lines = s.lines();
        let (port, path) = (lines.next().unwrap(), lines.next().unwrap());
        let conn = Connection::open(&format!("ws://127.0.0.1:{port}{path}")).await;
        Browser {
            child,
            _profile: profile,
            conn,
        }
    }

    /// Sends a command (to a page when `session` is given) and waits for
    /// its result; a protocol error panics with its message.
    pub async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        let mut msg = json!({"method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.conn.call(msg).await
    }

    /// A new tab of `width` × `height` CSS pixels, dark or light.
    pub async fn page(&self, width: u32, height: u32, dark: bool) -> Page<'_> {
        let target = self
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let target_id = target["targetId"].as_str().unwrap().to_string();
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await;
        let session = attached["sessionId"].as_str().unwrap().to_string();
        let page = Page {
            browser: self,
            session,
            lock: Mutex::new(()),
            since: 0.into(),
        };
        for m in ["Runtime.enable", "Log.enable", "Page.enable"] {
            page.call(m, json!({})).await;
        }
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}),
        )
        .await;
        page.call(
            "Emulation.setEmulatedMedia",
            json!({"features": [{"name": "prefers-color-scheme", "value": if dark { "dark" } else { "light" }}]}),
        )
        .await;
        page
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Page<'b> {
    browser: &'b Browser,
    session: String,
    lock: Mutex<()>,
    /// Events before this index belong to pages left by [`Page::goto`].
    since: std::sync::atomic::AtomicUsize,
}

impl Page<'_> {
    pub async fn call(&self, method: &str, params: Value) -> Value {
        let _g = self.lock.lock().await;
        self.browser.call(Some(&self.session), method, params).await
    }

    /// Downloads of this page go to `dir`.
    pub async fn downloads_to(&self, dir: &Path) {
        self.browser
            .call(
                None,
                "Browser.setDownloadBehavior",
                json!({"behavior": "allow", "downloadPath": dir.to_str().unwrap(), "eventsEnabled": true}),
            )
            .await;
    }
}

impl Tab for Page<'_> {
    async fn goto(&self, url: &str) {
        self.since.store(
            self.browser.conn.events.lock().len(),
            std::sync::atomic::Ordering::Relaxed,
        );
        let r = self.call("Page.navigate", json!({"url": url})).await;
        assert!(r.get("errorText").is_none(), "navigating to {url}: {r}");
        self.wait_for(
            "document.readyState === 'complete'",
            Duration::from_secs(20),
        )
        .await;
    }

    async fn eval(&self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(
            r.get("exceptionDetails").is_none(),
            "{expression}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    fn errors(&self) -> Vec<String> {
        let since = self.since.load(std::sync::atomic::Ordering::Relaxed);
        self.browser
            .conn
            .events
            .lock()
            .iter()
            .skip(since)
            .filter(|e| e["sessionId"] == self.session.as_str())
            .filter_map(|e| {
                let p = &e["params"];
                match e["method"].as_str()? {
                    "Runtime.exceptionThrown" => Some(p["exceptionDetails"].to_string()),
                    "Runtime.consoleAPICalled" if p["type"] == "error" => {
                        Some(p["args"].to_string())
                    }
                    "Log.entryAdded" if p["entry"]["level"] == "error" => {
                        Some(format!("{} {}", p["entry"]["text"], p["entry"]["url"]))
                    }
                    _ => None,
                }
            })
            .collect()
    }

    async fn screenshot(&self, path: &Path) {
        let metrics = self.call("Page.getLayoutMetrics", json!({})).await;
        let size = &metrics["cssContentSize"];
        let r = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true, "clip": {
                    "x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}}),
            )
            .await;
        write_png(path, r["data"].as_str().unwrap());
    }
}

/// What a test does with a browser tab, whichever the browser.
#[allow(async_fn_in_trait)]
pub trait Tab {
    /// Opens `url` and waits for the document to load; errors seen before
    /// are forgotten.
    async fn goto(&self, url: &str);

    /// The value of a script expression (promises awaited) as JSON; an
    /// exception panics with its text.
    async fn eval(&self, expression: &str) -> Value;

    /// Console errors, uncaught exceptions and error log entries since the
    /// last [`Tab::goto`].
    fn errors(&self) -> Vec<String>;

    /// A PNG of the whole page.
    async fn screenshot(&self, path: &Path);

    /// Waits until `expression` is truthy; returns how long it took.
    async fn wait_for(&self, expression: &str, timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let v = self.eval(expression).await;
            let truthy = match &v {
                Value::Bool(b) => *b,
                Value::Null => false,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "waited {timeout:?} for {expression}; the page says: {}",
                self.eval("document.body.innerText.slice(0, 2000)").await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The `data-value` of the element with `data-testid` = `id`, as a number.
    async fn number(&self, id: &str) -> f64 {
        let v = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector('[data-testid=\"{id}\"]'); return e ? e.dataset.value : null; }})()"
            ))
            .await;
        v.as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no number at data-testid={id}: {v}"))
    }
}

fn write_png(path: &Path, base64: &str) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(path, base64_decode(base64)).unwrap();
}

fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| *c != b'=' && *c != b'\n').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c) << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}

/// The Firefox binary: `TALLY_TEST_FIREFOX`, else Debian's `firefox-esr`.
pub fn firefox() -> PathBuf {
    std::env::var_os("TALLY_TEST_FIREFOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/firefox-esr"))
}

/// A headless Firefox with one tab, over WebDriver BiDi. The colour scheme
/// is a preference of the profile, so it is chosen at launch.
pub struct Firefox {
    child: Child,
    _profile: tempfile::TempDir,
    conn: Connection,
    context: String,
    since: std::sync::atomic::AtomicUsize,
}

impl Firefox {
    pub async fn launch(width: u32, height: u32, dark: bool) -> Firefox {
        let profile = tempfile::tempdir().unwrap();
        // No update, telemetry or other traffic to a network that is closed.
        let prefs = [
            ("app.update.disabledForTesting", "true"),
            ("browser.shell.checkDefaultBrowser", "false"),
            ("datareporting.policy.dataSubmissionEnabled", "false"),
            ("toolkit.telemetry.reportingpolicy.firstRun", "false"),
            ("network.captive-portal-service.enabled", "false"),
            ("network.connectivity-service.enabled", "false"),
            ("browser.safebrowsing.update.enabled", "false"),
            ("extensions.update.enabled", "false"),
            // 0: dark, 1: light.
            (
                "layout.css.prefers-color-scheme.content-override",
                if dark { "0" } else { "1" },
            ),
        ];
        let user_js: String = prefs
            .iter()
            .map(|(k, v)| format!("user_pref({k:?}, {v});\n"))
            .collect();
        std::fs::write(profile.path().join("user.js"), user_js).unwrap();
        let child = Command::new(firefox())
            .args([
                "--headless",
                "--no-remote",
                "--remote-debugging-port=0",
                "--profile",
            ])
            .arg(profile.path())
            .arg("about:blank")
            .env("MOZ_CRASHREPORTER_DISABLE", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", firefox().display()));
        let s = wait_for_file(&profile.path().join("WebDriverBiDiServer.json"), "firefox").await;
        let server: Value = serde_json::from_str(&s).unwrap();
        let conn = Connection::open(&format!(
            "ws://{}:{}/session",
            server["ws_host"].as_str().unwrap(),
            server["ws_port"]
        ))
        .await;
        let call = |method: &str, params: Value| json!({"method": method, "params": params});
        conn.call(call("session.new", json!({"capabilities": {}})))
            .await;
        conn.call(call(
            "session.subscribe",
            json!({"events": ["log.entryAdded"]}),
        ))
        .await;
        let tree = conn.call(call("browsingContext.getTree", json!({}))).await;
        let context = tree["contexts"][0]["context"].as_str().unwrap().to_string();
        conn.call(call(
            "browsingContext.setViewport",
            json!({"context": context, "viewport": {"width": width, "height": height}}),
        ))
        .await;
        Firefox {
            child,
            _profile: profile,
            conn,
            context,
            since: 0.into(),
        }
    }

    async fn call(&self, method: &str, mut params: Value) -> Value {
        params["context"] = json!(self.context);
        self.conn
            .call(json!({"method": method, "params": params}))
            .await
    }
}

impl Drop for Firefox {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Tab for Firefox {
    async fn goto(&self, url: &str) {
        self.since.store(
            self.conn.events.lock().len(),
            std::sync::atomic::Ordering::Relaxed,
        );
        self.call(
            "browsingContext.navigate",
            json!({"url": url, "wait": "complete"}),
        )
        .await;
        // A change of the #fragment alone does not reload the page.
        if url.contains('#') {
            self.call("browsingContext.reload", json!({"wait": "complete"}))
                .await;
        }
    }

    async fn eval(&self, expression: &str) -> Value {
        // BiDi answers with its own value encoding; JSON is simpler to read.
        let wrapped = format!("(async () => JSON.stringify(await ({expression})))()");
        let r = self
            .conn
            .call(json!({"method": "script.evaluate", "params": {
                "expression": wrapped, "target": {"context": self.context},
                "awaitPromise": true, "resultOwnership": "none"}}))
            .await;
        assert_eq!(
            r["type"], "success",
            "{expression}: {}",
            r["exceptionDetails"]
        );
        match r["result"]["value"].as_str() {
            Some(text) => serde_json::from_str(text).unwrap(),
            None => Value::Null,
        }
    }

    fn errors(&self) -> Vec<String> {
        let since = self.since.load(std::sync::atomic::Ordering::Relaxed);
        self.conn
            .events
            .lock()
            .iter()
            .skip(since)
            .filter(|e| e["method"] == "log.entryAdded" && e["params"]["level"] == "error")
            .map(|e| format!("{} {}", e["params"]["type"], e["params"]["text"]))
            .collect()
    }

    async fn screenshot(&self, path: &Path) {
        let r = self
            .call(
                "browsingContext.captureScreenshot",
                json!({"origin": "document"}),
            )
            .await;
        write_png(path, r["data"].as_str().unwrap());
    }
}
