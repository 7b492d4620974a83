//! A real headless Chromium driven over the DevTools protocol (a WebSocket
//! of JSON commands): pages at a chosen size and colour scheme, script
//! evaluation, console errors, screenshots, downloads.

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

pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    out: mpsc::UnboundedSender<Message>,
    pending: Pending,
    next_id: std::sync::atomic::AtomicU64,
    /// Every event, with its session id (when it came from a page).
    events: Arc<parking_lot::Mutex<Vec<Value>>>,
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
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let (port, path) = loop {
            if let Ok(s) = std::fs::read_to_string(&port_file) {
                let mut lines = s.lines();
                if let (Some(p), Some(w)) = (lines.next(), lines.next()) {
                    break (p.to_string(), w.to_string());
                }
            }
            assert!(Instant::now() < deadline, "chromium did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}{path}"))
            .await
            .unwrap();
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
        Browser {
            child,
            _profile: profile,
            out,
            pending,
            next_id: 1.into(),
            events,
        }
    }

    /// Sends a command (to a page when `session` is given) and waits for
    /// its result; a protocol error panics with its message.
    pub async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(id, tx);
        self.out
            .send(Message::Text(msg.to_string().into()))
            .unwrap();
        let v = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .unwrap_or_else(|_| panic!("{method}: no answer in 30 s"))
            .unwrap();
        assert!(v.get("error").is_none(), "{method}: {}", v["error"]);
        v["result"].clone()
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

    /// Opens `url` and waits for the document to load.
    pub async fn goto(&self, url: &str) {
        self.since.store(
            self.browser.events.lock().len(),
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

    /// The value of a script expression (promises awaited); an exception
    /// panics with its text.
    pub async fn eval(&self, expression: &str) -> Value {
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

    /// Waits until `expression` is truthy; returns how long it took.
    pub async fn wait_for(&self, expression: &str, timeout: Duration) -> Duration {
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
    pub async fn number(&self, id: &str) -> f64 {
        let v = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector('[data-testid=\"{id}\"]'); return e ? e.dataset.value : null; }})()"
            ))
            .await;
        v.as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no number at data-testid={id}: {v}"))
    }

    /// Console errors, uncaught exceptions and error log entries of this
    /// page since the last [`Page::goto`].
    pub fn errors(&self) -> Vec<Value> {
        let since = self.since.load(std::sync::atomic::Ordering::Relaxed);
        self.browser
            .events
            .lock()
            .iter()
            .skip(since)
            .filter(|e| e["sessionId"] == self.session.as_str())
            .filter(|e| match e["method"].as_str() {
                Some("Runtime.exceptionThrown") => true,
                Some("Runtime.consoleAPICalled") => e["params"]["type"] == "error",
                Some("Log.entryAdded") => e["params"]["entry"]["level"] == "error",
                _ => false,
            })
            .cloned()
            .collect()
    }

    /// A PNG of the whole page.
    pub async fn screenshot(&self, path: &Path) {
        let metrics = self.call("Page.getLayoutMetrics", json!({})).await;
        let size = &metrics["cssContentSize"];
        let r = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true, "clip": {
                    "x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}}),
            )
            .await;
        let png = base64_decode(r["data"].as_str().unwrap());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
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
