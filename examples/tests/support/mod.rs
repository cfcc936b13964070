//! Runs the server and talks to it, raw (the wire crate's blocking client) or through the
//! `redis` crate.
//!
//! [`InProcess`] runs `plafond_server::run` in this process on a port-0 listener, from the
//! same flags the program takes: where the process itself does not matter. [`Server`]
//! starts the real program, for what only a process shows (its exit, signals, flag
//! refusals, memory, descriptor limits, restarts). The program is the `server` example,
//! built by `cargo test --release -p plafond-examples` before the tests run; it sits in
//! `target/release/examples/`, next to the `deps/` folder this test binary runs from.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use plafond_server::options::ServerArgs;
use plafond_wire::{Client, Value};

/// How long a server may take to print `listening on`.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a test waits for a reply or an exit.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// The built `server` example; `PLAFOND_EXAMPLES_DIR` names another folder holding the
/// built examples (several worktrees building into one shared target folder overwrite
/// each other's `examples/`).
pub fn server_binary() -> PathBuf {
    if let Some(dir) = std::env::var_os("PLAFOND_EXAMPLES_DIR") {
        return PathBuf::from(dir).join("server");
    }
    let exe = std::env::current_exe().expect("the test binary has a path");
    let release = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in target/<profile>/deps");
    let binary = release.join("examples").join("server");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo test --release -p plafond-examples`, which builds it",
        binary.display()
    );
    binary
}

/// A running server, killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// Everything the server wrote on stderr, once it has exited.
    stderr: mpsc::Receiver<String>,
}

impl Server {
    /// Starts the server with `args` (plus `--port 0`) and waits for `listening on`.
    pub fn start(args: &[&str]) -> Server {
        Server::try_start(args).unwrap_or_else(|(status, _)| panic!("server exited: {status:?}"))
    }

    /// Starts the server, or returns its exit status and stderr if it stops first.
    pub fn try_start(args: &[&str]) -> Result<Server, (Option<ExitStatus>, String)> {
        Server::try_start_full(args, &[], None)
    }

    /// Starts the server on `port` (a restart where its clients wait for it).
    pub fn start_at(port: u16, args: &[&str]) -> Server {
        let port = port.to_string();
        let args: Vec<&str> =
            ["--port", port.as_str()].into_iter().chain(args.iter().copied()).collect();
        Server::try_start_on(&args, &[], None)
            .unwrap_or_else(|(status, stderr)| panic!("server exited: {status:?}: {stderr}"))
    }

    /// Starts the server with exactly `args` (its address among them, as a cluster member's
    /// `--cluster` gives it).
    pub fn start_exact(args: &[&str]) -> Server {
        Server::try_start_on(args, &[], None)
            .unwrap_or_else(|(status, stderr)| panic!("server exited: {status:?}: {stderr}"))
    }

    /// [`Server::try_start`] with these environment variables set.
    pub fn try_start_with_env(
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Server, (Option<ExitStatus>, String)> {
        Server::try_start_full(args, env, None)
    }

    /// [`Server::start_exact`] with these environment variables set.
    pub fn start_exact_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::try_start_on(args, env, None)
            .unwrap_or_else(|(status, stderr)| panic!("server exited: {status:?}: {stderr}"))
    }

    /// Starts the server with its descriptor limit (soft and hard: `ulimit -n`) at
    /// `descriptors`, as an operator's shell might.
    pub fn start_with_descriptors(args: &[&str], descriptors: u64) -> Server {
        Server::try_start_full(args, &[], Some(descriptors))
            .unwrap_or_else(|(status, stderr)| panic!("server exited: {status:?}: {stderr}"))
    }

    fn try_start_full(
        args: &[&str],
        env: &[(&str, &str)],
        descriptors: Option<u64>,
    ) -> Result<Server, (Option<ExitStatus>, String)> {
        let args: Vec<&str> = ["--port", "0"].into_iter().chain(args.iter().copied()).collect();
        Server::try_start_on(&args, env, descriptors)
    }

    /// Starts the server with exactly `args` (a `--port` among them).
    fn try_start_on(
        args: &[&str],
        env: &[(&str, &str)],
        descriptors: Option<u64>,
    ) -> Result<Server, (Option<ExitStatus>, String)> {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(server_binary());
        if let Some(descriptors) = descriptors {
            let limit = libc::rlimit { rlim_cur: descriptors, rlim_max: descriptors };
            // SAFETY: runs in the forked child before exec; setrlimit is async-signal-safe
            // and touches only the struct copied into the closure.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = command
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the server starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (lines_tx, lines_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        let (errors_tx, errors_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = BufReader::new(stderr).read_to_string(&mut text);
            let _ = errors_tx.send(text);
        });
        match lines_rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => {
                let addr = line
                    .strip_prefix("listening on ")
                    .unwrap_or_else(|| panic!("first line is `listening on ADDR`, got {line:?}"))
                    .parse()
                    .expect("an address");
                Ok(Server { child, addr, stderr: errors_rx })
            }
            Err(_) => {
                let status = wait_timeout(&mut child, REPLY_TIMEOUT);
                let stderr = errors_rx.recv_timeout(REPLY_TIMEOUT).unwrap_or_default();
                Err((status, stderr))
            }
        }
    }

    /// A raw connection.
    pub fn raw(&self) -> Raw {
        raw_at(self.addr)
    }

    /// A `redis` crate connection.
    pub fn redis(&self) -> redis::Connection {
        self.redis_with_url(&format!("redis://{}/", self.addr))
    }

    pub fn redis_with_url(&self, url: &str) -> redis::Connection {
        redis_at(url)
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(mut self) -> ExitStatus {
        let pid = i32::try_from(self.child.id()).expect("a pid fits i32");
        // SAFETY: kill(2) with a pid we spawned and still own (not yet waited for).
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM delivered");
        wait_timeout(&mut self.child, REPLY_TIMEOUT).expect("the server exits after SIGTERM")
    }

    /// Sends SIGTERM, waits for the exit, and returns what the server wrote on stderr.
    pub fn terminate_with_stderr(mut self) -> (ExitStatus, String) {
        let stderr = std::mem::replace(&mut self.stderr, mpsc::channel().1);
        let status = self.terminate();
        (status, stderr.recv_timeout(REPLY_TIMEOUT).unwrap_or_default())
    }

    /// The server's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the server's /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a VmRSS line")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free now, for a server that must come back on the same one.
pub fn free_port() -> u16 {
    plafond_examples::ports::stable_port(std::net::Ipv4Addr::LOCALHOST).expect("a free port")
}

/// Runs a Python script of `tests/scripts` with `args`; panics with its output unless it
/// succeeds, and returns its stdout.
pub fn python_script(script: &str, args: &[&str]) -> String {
    let path = format!("{}/tests/scripts/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("python3").arg(&path).args(args).output().expect("python3 runs");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    assert!(
        output.status.success(),
        "{script} {args:?} failed: {}\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

fn raw_at(addr: SocketAddr) -> Raw {
    Raw { client: Client::connect(addr, REPLY_TIMEOUT).expect("connects") }
}

fn redis_at(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .expect("a valid url")
        .get_connection_with_timeout(REPLY_TIMEOUT)
        .expect("connects")
}

/// The server library serving in this process, stopped (and its engine dropped) when this
/// is dropped.
pub struct InProcess {
    pub addr: SocketAddr,
    /// Where `/metrics` is served, when started with `--metrics-port`.
    pub metrics_addr: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A server's settings for an engine a test made itself: `clock`, snapshots under
/// `snapshot_dir`, no token, and the default flags' limits.
pub fn default_config(
    clock: plafond_server::clock::ServerClock,
    snapshot_dir: std::path::PathBuf,
) -> plafond_server::ServerConfig {
    use clap::Parser as _;
    let args = ServerArgs::try_parse_from(["server"]).expect("the default flags");
    plafond_server::ServerConfig {
        clock,
        token: None,
        snapshots: plafond_server::snapshot_dir::SnapshotDir::new(snapshot_dir, 1),
        limits: args.limits(),
        metrics: None,
    }
}

impl InProcess {
    /// Opens the engine the flags `args` ask for (plus `--port 0`) and serves it.
    pub fn start(args: &[&str]) -> InProcess {
        use clap::Parser as _;
        let words = ["server", "--port", "0"].into_iter().chain(args.iter().copied());
        let args = ServerArgs::try_parse_from(words).expect("valid flags");
        let (engine, config) = plafond_server::open::open(&args).expect("the engine opens");
        InProcess::serve(engine, config, args.io_threads(), args.metrics_port)
    }

    /// Serves `engine` with `config` on a loopback port-0 listener (and `/metrics` on
    /// `metrics_port`, if given): for an engine the flags cannot make (a guarded clock over
    /// a manual host clock).
    pub fn serve(
        engine: std::sync::Arc<plafond::Engine>,
        mut config: plafond_server::ServerConfig,
        io_threads: usize,
        metrics_port: Option<u16>,
    ) -> InProcess {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(io_threads)
            .enable_all()
            .build()
            .expect("a runtime");
        let loopback = (std::net::Ipv4Addr::LOCALHOST, 0);
        let listener = runtime.block_on(tokio::net::TcpListener::bind(loopback)).expect("binds");
        let addr = listener.local_addr().expect("an address");
        let metrics = metrics_port.map(|port| {
            let bound = runtime.block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)));
            bound.expect("the metrics port binds")
        });
        let metrics_addr = metrics.as_ref().map(|m| m.local_addr().expect("an address"));
        config.metrics = metrics;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let shutdown = async {
                let _ = stopped.await;
            };
            let served = runtime.block_on(plafond_server::run(engine, listener, shutdown, config));
            served.expect("the server serves until stopped");
            runtime.shutdown_timeout(plafond_server::SHUTDOWN_GRACE);
        });
        InProcess { addr, metrics_addr, stop: Some(stop), thread: Some(thread) }
    }

    /// A raw connection.
    pub fn raw(&self) -> Raw {
        raw_at(self.addr)
    }

    /// A `redis` crate connection.
    pub fn redis(&self) -> redis::Connection {
        redis_at(&format!("redis://{}/", self.addr))
    }

    pub fn redis_with_url(&self, url: &str) -> redis::Connection {
        redis_at(url)
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A raw RESP connection: the wire crate's blocking client, failing the test on errors.
pub struct Raw {
    pub client: Client,
}

impl Raw {
    pub fn send(&mut self, bytes: &[u8]) {
        self.client.send(bytes).expect("the server reads");
    }

    /// Sends one command as a RESP array.
    pub fn send_command(&mut self, args: &[&str]) {
        self.client.send_command(args).expect("the server reads");
    }

    /// Reads the next reply; `None` when the server closed the connection.
    pub fn read(&mut self) -> Option<Value> {
        match self.client.read() {
            Ok(value) => Some(value),
            Err(error) if error.is_disconnect() => None,
            Err(error) => panic!("reading a reply: {error}"),
        }
    }

    /// Sends a command and reads its reply.
    pub fn call(&mut self, args: &[&str]) -> Value {
        self.send_command(args);
        self.read().expect("a reply")
    }
}

pub fn simple(text: &str) -> Value {
    Value::Simple(text.into())
}

pub fn int(n: i64) -> Value {
    Value::Integer(n)
}

pub fn array(items: Vec<Value>) -> Value {
    Value::Array(items)
}

pub fn approved(balance: i64, spent_7d: i64) -> Value {
    array(vec![simple("APPROVED"), int(balance), int(spent_7d)])
}

pub fn declined(reason: &str) -> Value {
    array(vec![simple("DECLINED"), simple(reason)])
}

pub fn is_error(value: &Value) -> bool {
    matches!(value, Value::Error(text) if text.starts_with("ERR "))
}

/// Another built example (`cli`, `loadgen`), next to the server.
pub fn example_binary(name: &str) -> PathBuf {
    let binary = server_binary().with_file_name(name);
    assert!(binary.exists(), "{} is missing", binary.display());
    binary
}

/// Runs a built example to completion: its exit status and stdout.
pub fn run_example(name: &str, args: &[&str]) -> (ExitStatus, String) {
    let output = Command::new(example_binary(name))
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("the example runs");
    (output.status, String::from_utf8_lossy(&output.stdout).into_owned())
}

/// [`run_example`], returning what the example wrote on stderr as well (its refusals).
pub fn run_example_with_stderr(name: &str, args: &[&str]) -> (ExitStatus, String, String) {
    let output = Command::new(example_binary(name))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the example runs");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status, text(&output.stdout), text(&output.stderr))
}
