//! Harness for end-to-end tests: start the real server, talk to it over HTTP.
//!
//! [`TestServer`] runs `backchannel::run` in this process on `127.0.0.1:0`
//! with a temporary data folder; [`ServerProcess`] runs the built
//! `backchannel` binary, for what only a process shows (signals, locks,
//! restarts). Both are driven only through their public interfaces.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::{Value, json};

pub use backchannel::Settings;
pub use backchannel::auth::Role;
use backchannel::auth::{Auth, NewAccount, TokenKeys};
use backchannel::config::Limits;
use backchannel::data_dir::DataDir;

/// The password every test account uses unless a test says otherwise.
pub const PASSWORD: &str = "correct horse battery";

/// A server running inside the test process.
pub struct TestServer {
    pub base_url: String,
    pub data_dir: PathBuf,
    _temporary: Option<tempfile::TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    client: Client,
}

impl TestServer {
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// Starts with accounts made beforehand, as `backchannel user add`
    /// makes them (the API only makes members).
    pub fn start_with_accounts(accounts: &[(&str, &str, Role)]) -> Self {
        Self::start_prepared(
            |data_dir| {
                let data = DataDir::open(data_dir).unwrap();
                let auth = Auth::new(
                    std::sync::Arc::new(data.store.clone()),
                    TokenKeys::from_secret(data.jwt_secret.bytes()),
                    Limits::default(),
                );
                for (email, name, role) in accounts {
                    let account = NewAccount {
                        email: email.to_string(),
                        password: PASSWORD.to_string(),
                        display_name: name.to_string(),
                    };
                    auth.create_user(account, *role).unwrap();
                }
            },
            |_| {},
        )
    }

    /// Starts with default settings changed by `adjust`.
    pub fn start_with(adjust: impl FnOnce(&mut Settings)) -> Self {
        Self::start_prepared(|_| {}, adjust)
    }

    fn start_prepared(prepare: impl FnOnce(&Path), adjust: impl FnOnce(&mut Settings)) -> Self {
        let temporary = tempfile::tempdir().unwrap();
        let data_dir = temporary.path().join("data");
        prepare(&data_dir);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let mut settings = Settings::for_data_dir(&data_dir, address);
        adjust(&mut settings);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let outcome = actix_web::rt::System::new().block_on(async move {
                let shutdown = async move {
                    let _ = stopped.await;
                };
                backchannel::run(settings, listener, shutdown).await
            });
            if let Err(error) = outcome {
                let _ = started_tx.send(format!("server failed: {error}"));
            }
        });
        let server = Self {
            base_url: format!("http://{address}"),
            data_dir,
            _temporary: Some(temporary),
            stop: Some(stop),
            thread: Some(thread),
            client: client(),
        };
        server.wait_until_healthy(|| started_rx.try_recv().ok());
        server
    }

    fn wait_until_healthy(&self, failure: impl Fn() -> Option<String>) {
        wait_for_health(&self.client, &self.base_url, failure);
    }

    pub fn api(&self) -> Api {
        Api {
            base_url: self.base_url.clone(),
            client: self.client.clone(),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn wait_for_health(client: &Client, base_url: &str, failure: impl Fn() -> Option<String>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(reason) = failure() {
            panic!("{reason}");
        }
        if let Ok(response) = client.get(format!("{base_url}/healthz")).send()
            && response.status().is_success()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "server at {base_url} never became healthy"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A thin JSON client for the API.
#[derive(Clone)]
pub struct Api {
    pub base_url: String,
    client: Client,
}

/// An answer: status and JSON body (`Value::Null` when there is none).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Answer {
    fn from(response: Response) -> Self {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Self {
            status,
            body,
            headers,
        }
    }

    /// The `error.code` of an error answer.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// Asserts the SPEC's error shape and returns the code.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.code(), code, "{self:?}");
        assert!(
            self.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "error without a readable message: {self:?}"
        );
    }
}

impl Api {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    pub fn send(&self, request: RequestBuilder) -> Answer {
        Answer::from(request.send().unwrap())
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> Answer {
        self.send(with_token(self.client.get(self.url(path)), token))
    }

    pub fn post(&self, path: &str, body: Value, token: Option<&str>) -> Answer {
        self.send(with_token(
            self.client.post(self.url(path)).json(&body),
            token,
        ))
    }

    pub fn put(&self, path: &str, body: Value, token: Option<&str>) -> Answer {
        self.send(with_token(
            self.client.put(self.url(path)).json(&body),
            token,
        ))
    }

    pub fn delete(&self, path: &str, body: Value, token: Option<&str>) -> Answer {
        self.send(with_token(
            self.client.delete(self.url(path)).json(&body),
            token,
        ))
    }

    pub fn raw(&self) -> &Client {
        &self.client
    }

    pub fn register(&self, email: &str, display_name: &str) -> Answer {
        self.post(
            "/api/auth/register",
            json!({"email": email, "password": PASSWORD, "display_name": display_name}),
            None,
        )
    }

    pub fn login(&self, email: &str, password: &str) -> Answer {
        self.post(
            "/api/auth/login",
            json!({"email": email, "password": password}),
            None,
        )
    }

    /// Signs in with the test password, asserting success.
    pub fn signed_in(&self, email: &str) -> SignedIn {
        let answer = self.login(email, PASSWORD);
        assert_eq!(answer.status, 200, "{answer:?}");
        SignedIn::from(&answer)
    }

    /// Registers and returns the signed-in answer, asserting success.
    pub fn signed_up(&self, email: &str) -> SignedIn {
        let answer = self.register(email, "Test User");
        assert_eq!(answer.status, 201, "{answer:?}");
        SignedIn::from(&answer)
    }
}

fn with_token(request: RequestBuilder, token: Option<&str>) -> RequestBuilder {
    match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

/// The parts of a register/login/refresh answer tests use.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub user_id: String,
    pub access_token: String,
    pub refresh_token: String,
}

impl SignedIn {
    pub fn from(answer: &Answer) -> Self {
        Self {
            user_id: answer.body["user"]["id"].as_str().unwrap().to_string(),
            access_token: answer.body["access_token"].as_str().unwrap().to_string(),
            refresh_token: answer.body["refresh_token"].as_str().unwrap().to_string(),
        }
    }
}

/// The `backchannel` binary next to this test binary (`target/<profile>/`).
pub fn backchannel_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let binary = profile_dir.join("backchannel");
    assert!(
        binary.exists(),
        "{} is missing: build it first with `cargo build -p backchannel-server --bin backchannel`",
        binary.display()
    );
    binary
}

/// The real binary, `backchannel serve`, on a port the OS picks.
pub struct ServerProcess {
    child: Child,
    pub base_url: String,
    log: Arc<Mutex<String>>,
}

impl ServerProcess {
    /// Starts and waits until it serves.
    pub fn start(data_dir: &Path) -> Self {
        match Self::try_start(data_dir) {
            Ok(server) => server,
            Err(failure) => panic!("server did not start: {failure}"),
        }
    }

    /// Starts, or returns what the process printed if it exited first.
    pub fn try_start(data_dir: &Path) -> Result<Self, String> {
        let mut child = Command::new(backchannel_binary())
            .args(["serve", "--bind", "127.0.0.1:0", "--data"])
            .arg(data_dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        let address: String =
                            rest.chars().take_while(|c| !c.is_whitespace()).collect();
                        let _ = address_tx.send(address);
                    }
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(address) = address_rx.try_recv() {
                let server = Self {
                    child,
                    base_url: format!("http://{address}"),
                    log,
                };
                wait_for_health(&client(), &server.base_url, || None);
                return Ok(server);
            }
            if let Some(status) = child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                let printed = log.lock().unwrap().clone();
                return Err(format!("exited with {status}: {printed}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err("did not announce its address within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn api(&self) -> Api {
        Api {
            base_url: self.base_url.clone(),
            client: client(),
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(mut self) -> (ExitStatus, String) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.wait_for_exit();
        (exit, self.log())
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn wait_for_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader thread collect the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            assert!(Instant::now() < deadline, "server did not exit within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User plus system CPU time of this process (from `/proc/self/stat`), for benchmarks.
pub fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}
