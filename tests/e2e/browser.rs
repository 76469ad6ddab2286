//! The web portal in a real browser: Debian's Chromium, headless, driven through chromedriver
//! (WebDriver) with fantoccini. Each test starts its own chromedriver on a port it picks itself,
//! a fresh profile, and its own `sluice up`; each main view is saved as a screenshot under
//! `target/tmp/portal-screenshots/` (the README's pictures are copies of these).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::harness::{ADMIN_PASSWORD, ADMIN_USER, PATIENCE};

/// Where Chromium and chromedriver are: `SLUICE_CHROMIUM` / `SLUICE_CHROMEDRIVER`, or Debian's
/// packages (`chromium`, `chromium-driver`), which `.ci/run` installs.
fn program(env: &str, debian: &str) -> PathBuf {
    if let Ok(path) = std::env::var(env) {
        return path.into();
    }
    let path = PathBuf::from(debian);
    assert!(
        path.exists(),
        "{debian} is missing: install Debian's chromium and chromium-driver packages (.ci/run \
         does), or name the programs in {env}"
    );
    path
}

/// Where screenshots go.
pub fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("portal-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A headless Chromium of a test's own, ended when dropped.
pub struct Browser {
    pub client: Client,
    driver: Child,
    closed: bool,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver (on a port it picks and prints) and a browser session at
    /// `width`×`height`.
    pub async fn start(width: u32, height: u32) -> Self {
        Self::start_with(width, height, true).await
    }

    /// A browser with JavaScript turned off, as some visitors have it.
    pub async fn start_without_javascript() -> Self {
        Self::start_with(1280, 900, false).await
    }

    async fn start_with(width: u32, height: u32, javascript: bool) -> Self {
        use std::os::unix::process::CommandExt;
        let chromium = program("SLUICE_CHROMIUM", "/usr/bin/chromium");
        let chromedriver = program("SLUICE_CHROMEDRIVER", "/usr/bin/chromedriver");
        let mut driver = Command::new(chromedriver)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Its own process group, so the browsers it starts go with it.
            .process_group(0)
            .spawn()
            .expect("chromedriver starts");
        let stdout = driver.stdout.take().unwrap();
        let port = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            let port = lines
                .by_ref()
                .map_while(Result::ok)
                .find_map(|line| {
                    line.strip_prefix("ChromeDriver was started successfully on port ")
                        .map(|p| p.trim_end_matches('.').parse::<u16>().unwrap())
                })
                .expect("chromedriver says where it listens");
            // Keep reading, so chromedriver never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            port
        })
        .await
        .unwrap();
        let profile = tempfile::tempdir().unwrap();
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-extensions",
                    format!("--user-data-dir={}", profile.path().display()),
                    format!("--window-size={width},{height}"),
                ],
            },
        });
        let mut capabilities = capabilities;
        if !javascript {
            capabilities["goog:chromeOptions"]["prefs"] = json!({
                "profile.managed_default_content_settings.javascript": 2,
            });
        }
        // A phone: Chromium's own emulation of its screen (a headless window is never narrower
        // than 500 pixels).
        if width < 500 {
            capabilities["goog:chromeOptions"]["mobileEmulation"] = json!({
                "deviceMetrics": { "width": width, "height": height, "pixelRatio": 2.0 },
            });
        }
        let capabilities = match capabilities {
            serde_json::Value::Object(map) => map,
            _ => unreachable!(),
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a browser session");
        Self {
            client,
            driver,
            closed: false,
            _profile: profile,
        }
    }

    /// Opens `url`.
    pub async fn go(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// The text of the first element `css` finds, once there is one. Read in one step by a
    /// script, so an element htmx replaces meanwhile is never read stale.
    pub async fn text(&self, css: &str) -> String {
        self.find(css).await;
        self.until_text(css, "its text", |_| true).await
    }

    /// The rendered text of the first element `css` finds now, if there is one.
    async fn text_now(&self, css: &str) -> Option<String> {
        let value = self
            .client
            .execute(
                "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;",
                vec![serde_json::Value::String(css.to_owned())],
            )
            .await
            .ok()?;
        value.as_str().map(|t| t.trim().to_owned())
    }

    /// The first element `css` finds, waiting for it.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
    }

    /// Types `text` into the field `css` (emptied first).
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    /// Clicks the element `css`.
    pub async fn click(&self, css: &str) {
        self.find(css).await.click().await.unwrap();
    }

    /// The current page's path (and query).
    pub async fn path(&self) -> String {
        let url = self.client.current_url().await.unwrap();
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// Waits until the browser is at `path` (a click's navigation has happened).
    pub async fn until_path(&self, path: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.path().await != path {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting to get to {path}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.find("#main").await;
    }

    /// Waits until `check` on the page's text in `css` holds.
    pub async fn until_text(&self, css: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let mut last = None;
        loop {
            if let Some(text) = self.text_now(css).await {
                if check(&text) {
                    return text;
                }
                last = Some(text);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what} in {css}; it said {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves what the browser shows as `<name>.png` in [`screenshots`].
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.unwrap();
        let path = screenshots().join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
        path
    }

    /// Logs in to the portal at `url` as the test admin.
    pub async fn log_in(&self, url: &str) {
        self.go(&format!("{url}/ui/")).await;
        self.fill("#user", ADMIN_USER).await;
        self.fill("#password", ADMIN_PASSWORD).await;
        self.click("button[type=submit]").await;
        self.until_path("/ui/").await;
    }

    /// Ends the session and the browser.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        self.stop_driver();
    }

    fn stop_driver(&mut self) {
        self.closed = true;
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A test that failed did not close it: end chromedriver's group all the same (its
        // browsers outlive chromedriver itself if it died).
        if !self.closed {
            self.stop_driver();
        }
    }
}
