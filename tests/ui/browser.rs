//! Headless Chromium for the UI test, driven through chromedriver (W3C WebDriver over
//! HTTP on loopback): pages loaded, scripts run in them, the console read, screenshots.
//! Chromium is Debian's (`scripts/install-chromium`, or `WELLSPRING_CHROMIUM`), with a
//! fresh profile per browser.

use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

/// Chromium's path: `WELLSPRING_CHROMIUM`, else what `scripts/install-chromium` prints (it
/// installs Debian's packages when they are missing).
fn chromium() -> PathBuf {
    if let Ok(path) = std::env::var("WELLSPRING_CHROMIUM") {
        return PathBuf::from(path);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("scripts/install-chromium"))
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/install-chromium runs");
    assert!(
        out.status.success(),
        "no Chromium: scripts/install-chromium failed (it installs Debian's chromium and \
         chromium-driver with apt-get); or set WELLSPRING_CHROMIUM and WELLSPRING_CHROMEDRIVER"
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// chromedriver: `WELLSPRING_CHROMEDRIVER`, else beside Chromium or on PATH.
fn chromedriver(chromium: &Path) -> PathBuf {
    if let Ok(path) = std::env::var("WELLSPRING_CHROMEDRIVER") {
        return PathBuf::from(path);
    }
    let beside = chromium.with_file_name("chromedriver");
    if beside.exists() {
        return beside;
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("chromedriver"))
        .find(|p| p.exists())
        .expect("no chromedriver beside Chromium or on PATH: run scripts/install-chromium")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// One browser session: chromedriver and the headless Chromium it started.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: TempDir,
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Browser {
    /// Starts chromedriver and a headless Chromium `width`×`height`, with the dark or
    /// light colour scheme.
    pub async fn start(width: u32, height: u32, dark: bool) -> Browser {
        let chromium = chromium();
        let port = free_port();
        let driver = Command::new(chromedriver(&chromium))
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let profile = TempDir(
            std::env::temp_dir().join(format!("wellspring-ui-{}-{port}", std::process::id())),
        );
        std::fs::create_dir_all(&profile.0).expect("a fresh profile directory");
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("an HTTP client");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver never answered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let args = [
            "--headless".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            // Containers often have a small /dev/shm; Chromium then crashes without this.
            "--disable-dev-shm-usage".into(),
            format!("--user-data-dir={}", profile.0.display()),
            format!("--window-size={width},{height}"),
        ];
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
            http,
            _profile: profile,
        };
        let answer = browser.call("POST", "/session", capabilities).await;
        browser.session = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {answer}"))
            .to_owned();
        let scheme = if dark { "dark" } else { "light" };
        browser
            .session_call(
                "POST",
                "/goog/cdp/execute",
                json!({"cmd": "Emulation.setEmulatedMedia", "params": {
                    "features": [{"name": "prefers-color-scheme", "value": scheme}]}}),
            )
            .await;
        browser
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self
                .http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.to_string()),
        };
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("chromedriver {method} {path}: {e}"));
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let value: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("chromedriver {method} {path}: {e} in {text}"));
        assert!(
            status.is_success(),
            "chromedriver {method} {path}: {status} {text}"
        );
        value["value"].clone()
    }

    async fn session_call(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.call(method, &path, body).await
    }

    pub async fn open(&self, url: &str) {
        self.session_call("POST", "/url", json!({ "url": url }))
            .await;
    }

    /// Runs `script` (a function body; `return` gives its value) in the page.
    pub async fn run(&self, script: &str) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": [] }),
        )
        .await
    }

    /// Runs `script` until `done` holds of its value; panics with the last value after
    /// `limit`.
    pub async fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        script: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let value = self.run(script).await;
            if done(&value) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "the page never showed {what}; last: {value}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The console's messages since the last call: (level, message).
    pub async fn console(&self) -> Vec<(String, String)> {
        let entries = self
            .session_call("POST", "/se/log", json!({ "type": "browser" }))
            .await;
        entries
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e["level"].as_str().unwrap_or_default().to_owned(),
                    e["message"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// A PNG of the window, written to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let encoded = self.session_call("GET", "/screenshot", Value::Null).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap_or_default())
            .expect("the screenshot is base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("the artifacts directory");
        }
        std::fs::write(path, png).expect("the screenshot is written");
    }
}

impl Browser {
    /// Ends the session: chromedriver closes its Chromium.
    pub async fn close(mut self) {
        if !self.session.is_empty() {
            self.session_call("DELETE", "", Value::Null).await;
            self.session.clear();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver and its Chromium share a process group of their own: on a failed
        // test, nothing of them outlives it.
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
