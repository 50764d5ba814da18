//! Test harness: a real `pmsd` process on loopback ports in a temporary data dir, and the real
//! `pmsctl` binary to drive it. Waits are on conditions with deadlines, never bare sleeps.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const PASSWORD: &str = "correct horse battery staple";

/// The directory that holds the built binaries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    let pmsd = PathBuf::from(env!("CARGO_BIN_EXE_pmsd"));
    pmsd.parent()
        .expect("binary has a parent dir")
        .to_path_buf()
}

pub fn pmsctl_path() -> PathBuf {
    let path = bin_dir().join("pmsctl");
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (scripts/test), which builds it",
        path.display()
    );
    path
}

/// First port [`free_port`] hands out; below the kernel's ephemeral range (32768 and up), so no
/// outgoing connection of another test can take a port between its choice and its use.
const TEST_PORT_FIRST: u16 = 20_000;
/// Ports [`free_port`] cycles through.
const TEST_PORTS: u16 = 12_000;

/// A free loopback port for both TCP and UDP. Each test process walks its own sequence from a
/// pid-derived start below the ephemeral range, so two tests of one process never get the
/// same port, and a port is bound once to check it is free.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(97) % u32::from(TEST_PORTS),
        std::sync::atomic::Ordering::SeqCst,
        std::sync::atomic::Ordering::SeqCst,
    );
    loop {
        let offset = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % u32::from(TEST_PORTS);
        let port = TEST_PORT_FIRST + u16::try_from(offset).expect("offset below TEST_PORTS");
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
}

pub struct Ports {
    pub sip_tls: u16,
    pub sip_tcp: u16,
    pub grpc: u16,
    pub http: u16,
}

impl Ports {
    pub fn new() -> Self {
        Ports {
            sip_tls: free_port(),
            sip_tcp: free_port(),
            grpc: free_port(),
            http: free_port(),
        }
    }
}

pub struct Node {
    pub data: tempfile::TempDir,
    pub ports: Ports,
    pub extra_args: Vec<String>,
    child: Option<Child>,
    pub log_path: PathBuf,
    /// A certs dir shared with other nodes (a cluster), instead of `<data>/certs`.
    pub shared_certs_dir: Option<PathBuf>,
    /// Environment variables set for the process (e.g. `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub env: Vec<(String, String)>,
}

impl Node {
    pub fn start() -> Node {
        Self::start_with(Vec::new())
    }

    pub fn start_with(extra_args: Vec<String>) -> Node {
        let data = tempfile::tempdir().expect("tempdir");
        let log_path = data.path().join("pmsd.log");
        let mut node = Node {
            data,
            ports: Ports::new(),
            extra_args,
            child: None,
            log_path,
            shared_certs_dir: None,
            env: Vec::new(),
        };
        node.spawn();
        node
    }

    /// A node that is not started yet, on fresh ports, with its own data dir.
    pub fn prepared(extra_args: Vec<String>, shared_certs_dir: PathBuf) -> Node {
        let data = tempfile::tempdir().expect("tempdir");
        let log_path = data.path().join("pmsd.log");
        Node {
            data,
            ports: Ports::new(),
            extra_args,
            child: None,
            log_path,
            shared_certs_dir: Some(shared_certs_dir),
            env: Vec::new(),
        }
    }

    pub fn grpc_address(&self) -> String {
        format!("127.0.0.1:{}", self.ports.grpc)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data.path().join("data")
    }

    pub fn certs_dir(&self) -> PathBuf {
        self.shared_certs_dir
            .clone()
            .unwrap_or_else(|| self.data_dir().join("certs"))
    }

    pub fn spawn(&mut self) {
        self.spawn_process();
        self.wait_ready(Duration::from_secs(60));
    }

    /// Starts the process without waiting for it to be ready (cluster members wait for each
    /// other).
    pub fn spawn_process(&mut self) {
        assert!(self.child.is_none(), "node already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        let p = &self.ports;
        // A test that sets a plaintext listener itself (`--sip-tcp off`) replaces the default.
        let given = |flag: &str| self.extra_args.iter().any(|arg| arg == flag);
        let mut plaintext = Vec::new();
        for flag in ["--sip-tcp", "--sip-udp"] {
            if !given(flag) {
                plaintext.extend([flag.to_owned(), format!("127.0.0.1:{}", p.sip_tcp)]);
            }
        }
        let child = Command::new(env!("CARGO_BIN_EXE_pmsd"))
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--sip-tls", &format!("127.0.0.1:{}", p.sip_tls)])
            .args(&plaintext)
            .args(["--grpc", &format!("127.0.0.1:{}", p.grpc)])
            .args(["--http", &format!("127.0.0.1:{}", p.http)])
            .args(["--log", "info,pms_edge=debug,pmsd=debug,openraft=warn"])
            .args(&self.extra_args)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning pmsd");
        self.child = Some(child);
    }

    /// Polls `/readyz` until it answers 200.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().expect("try_wait"))
            {
                panic!("pmsd exited early with {status}; log:\n{}", self.log());
            }
            if http_get(self.ports.http, "/readyz").is_some_and(|(status, _)| status == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pmsd not ready in time; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// kill -9, as a crash.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill -9");
        child.wait().expect("wait");
    }

    /// Waits for a process that is expected to stop by itself (a refused start).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("pmsd did not stop by itself; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "pmsd did not stop after SIGTERM; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn sip_tls(&self) -> String {
        format!("127.0.0.1:{}", self.ports.sip_tls)
    }

    pub fn sip_tcp_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.sip_tcp))
    }

    /// `pmsctl` with this node's certs dir and admin address, and the given arguments.
    pub fn pmsctl(&self) -> Command {
        let mut command = Command::new(pmsctl_path());
        command
            .arg("--certs-dir")
            .arg(self.certs_dir())
            .args(["--admin", &format!("127.0.0.1:{}", self.ports.grpc)]);
        command
    }

    pub fn run_pmsctl(&self, args: &[&str]) -> Output {
        self.pmsctl().args(args).output().expect("running pmsctl")
    }

    pub fn add_user(&self, name: &str) {
        let output = self.run_pmsctl(&["user", "add", name, "--password", PASSWORD]);
        assert!(
            output.status.success(),
            "user add {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// `pmsctl send` against the TLS listener, returning (exit code, JSON lines).
    pub fn send(
        &self,
        from: &str,
        to: &str,
        text: &str,
        extra: &[&str],
    ) -> (i32, Vec<serde_json::Value>) {
        let server = self.sip_tls();
        let mut args = vec![
            "send",
            "--server",
            &server,
            "--user",
            from,
            "--password",
            PASSWORD,
            "--to",
            to,
        ];
        args.extend_from_slice(extra);
        args.push("--");
        args.push(text);
        let output = self.run_pmsctl(&args);
        (
            output.status.code().unwrap_or(-1),
            json_lines(&output.stdout, &output.stderr),
        )
    }

    /// Starts `pmsctl listen` for `user` in the background.
    pub fn listen(&self, user: &str, count: usize, timeout_secs: u64) -> Listener {
        let child = self
            .pmsctl()
            .args([
                "listen",
                "--server",
                &self.sip_tls(),
                "--user",
                user,
                "--password",
                PASSWORD,
            ])
            .args([
                "--count",
                &count.to_string(),
                "--timeout",
                &timeout_secs.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning pmsctl listen");
        Listener::new(child)
    }

    /// Runs `pmsctl listen` to completion and returns (exit code, messages).
    pub fn receive(
        &self,
        user: &str,
        count: usize,
        timeout_secs: u64,
    ) -> (i32, Vec<serde_json::Value>) {
        self.listen(user, count, timeout_secs).finish()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A background `pmsctl` whose stdout lines are read as they come.
pub struct Listener {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<serde_json::Value>,
    stderr_lines: mpsc::Receiver<String>,
    stderr_seen: Vec<String>,
}

impl Listener {
    pub fn new(mut child: Child) -> Self {
        let stdout = child.stdout.take().expect("stdout piped");
        let mut stderr = child.stderr.take().expect("stderr piped");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let (stderr_sender, stderr_lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(&mut stderr).lines() {
                let Ok(line) = line else { break };
                if stderr_sender.send(line).is_err() {
                    break;
                }
            }
        });
        Listener {
            child,
            lines,
            seen: Vec::new(),
            stderr_lines,
            stderr_seen: Vec::new(),
        }
    }

    /// Waits for a line on stderr containing `needle` (e.g. `registered`).
    pub fn wait_for_stderr(&mut self, timeout: Duration, needle: &str) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.stderr_seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(_) => panic!(
                    "no stderr line with {needle:?} in time; seen: {:?}",
                    self.stderr_seen
                ),
            }
        }
    }

    /// Waits for a JSON line satisfying `predicate`.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        predicate: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let value: serde_json::Value =
                        serde_json::from_str(&line).unwrap_or(serde_json::Value::String(line));
                    self.seen.push(value.clone());
                    if predicate(&value) {
                        return value;
                    }
                }
                Err(_) => panic!("no matching line in time; seen: {:?}", self.seen),
            }
        }
    }

    /// Waits for the process to exit; returns its code and every JSON line it printed.
    pub fn finish(mut self) -> (i32, Vec<serde_json::Value>) {
        let status = self.child.wait().expect("wait pmsctl");
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen
                .push(serde_json::from_str(&line).unwrap_or(serde_json::Value::String(line)));
        }
        while let Ok(line) = self.stderr_lines.recv_timeout(Duration::from_secs(1)) {
            self.stderr_seen.push(line);
        }
        if !self.stderr_seen.is_empty() {
            eprintln!("pmsctl stderr: {:?}", self.stderr_seen);
        }
        (status.code().unwrap_or(-1), std::mem::take(&mut self.seen))
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn json_lines(stdout: &[u8], stderr: &[u8]) -> Vec<serde_json::Value> {
    let text = String::from_utf8_lossy(stdout);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|_| serde_json::Value::String(line.to_string()))
        })
        .collect();
    if lines.is_empty() {
        eprintln!(
            "pmsctl printed nothing on stdout; stderr: {}",
            String::from_utf8_lossy(stderr)
        );
    }
    lines
}

/// A minimal HTTP GET on loopback; `None` if the server is not answering.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )
    .ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// A cluster of `pmsd` processes on loopback sharing one certs dir and one master key.
pub struct Cluster {
    pub shared: tempfile::TempDir,
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// Starts `size` nodes with ids 1..=size and waits until every one is ready.
    pub fn start(size: usize, extra_args: &[&str]) -> Cluster {
        Self::start_with_env(size, extra_args, &[])
    }

    /// [`Cluster::start`], with environment variables `env` set for every node.
    pub fn start_with_env(size: usize, extra_args: &[&str], env: &[(&str, &str)]) -> Cluster {
        let shared = tempfile::tempdir().expect("tempdir");
        let certs = shared.path().join("certs");
        loopback_certs(&certs);
        pmsctl_cert(&certs, &["create-client", "admin"]);
        let master_key = shared.path().join("master.key");
        pms_crypto::MasterKey::write_new(&master_key).expect("master key");
        let mut nodes: Vec<Node> = (0..size)
            .map(|_| Node::prepared(Vec::new(), certs.clone()))
            .collect();
        let peers = nodes
            .iter()
            .enumerate()
            .map(|(index, node)| format!("{}={}", index + 1, node.grpc_address()))
            .collect::<Vec<_>>()
            .join(",");
        for (index, node) in nodes.iter_mut().enumerate() {
            node.extra_args = member_args(shared.path(), index + 1, &["--peers", &peers]);
            node.extra_args
                .extend(extra_args.iter().map(|arg| (*arg).to_owned()));
            node.env = env
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect();
            node.spawn_process();
        }
        for node in &mut nodes {
            node.wait_ready(Duration::from_secs(90));
        }
        Cluster { shared, nodes }
    }

    /// Starts one more node with `--join` (same certs and master key, the next id), without
    /// waiting for it to be ready (it is not, until it is added). Returns its index.
    pub fn start_joining_node(&mut self, extra_args: &[&str]) -> usize {
        let index = self.nodes.len();
        let mut node = Node::prepared(Vec::new(), self.shared.path().join("certs"));
        node.extra_args = member_args(self.shared.path(), index + 1, &["--join"]);
        node.extra_args
            .extend(extra_args.iter().map(|arg| (*arg).to_owned()));
        node.spawn_process();
        self.nodes.push(node);
        index
    }

    /// `pmsctl cluster status --json` from the first running node.
    pub fn status(&self) -> serde_json::Value {
        let node = self
            .nodes
            .iter()
            .find(|node| node.is_running())
            .expect("a running node");
        let output = node.run_pmsctl(&["cluster", "status", "--json"]);
        // A degraded cluster (a member down, a group without leader) prints its status and
        // exits 3 saying so; any other failure is the test's.
        assert!(
            output.status.success()
                || String::from_utf8_lossy(&output.stderr).contains("cluster degraded:"),
            "cluster status: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("cluster status JSON")
    }

    /// Waits until every member answers the status call and has applied all the leader has.
    pub fn wait_caught_up(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status();
            let caught_up = status["nodes"].as_array().is_some_and(|nodes| {
                nodes.iter().all(|node| {
                    node.get("unreachable").is_none()
                        && node["groups"]
                            .as_array()
                            .is_some_and(|groups| groups.iter().all(|group| group["lag"] == 0))
                })
            });
            if caught_up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "members did not catch up: {status}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The index in `nodes` of the node that leads `group` (as the first running node sees
    /// it), waiting until one is known. Leadership may still move afterwards (leaders are
    /// spread over the nodes every few seconds).
    pub fn leader_index(&self, group: u32, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status();
            let leader = status["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|node| {
                    node["groups"].as_array().is_some_and(|groups| {
                        groups.iter().any(|entry| {
                            entry["group"] == u64::from(group) && entry["role"] == "leader"
                        })
                    })
                })
                .and_then(|node| node["node"].as_u64());
            if let Some(leader) = leader {
                let index = usize::try_from(leader - 1).expect("node id");
                if self.nodes[index].is_running() {
                    return index;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader among running nodes in time: {status}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Cluster {
    /// A failed test shows what every node logged (the temp dirs go away with the cluster).
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (index, node) in self.nodes.iter().enumerate() {
                let log = node.log();
                let tail: Vec<&str> = log.lines().rev().take(LOG_TAIL_LINES).collect();
                eprintln!(
                    "---- node {} log (last {LOG_TAIL_LINES} lines) ----",
                    index + 1
                );
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// The flags of cluster member `node_id`: its id, the shared certs dir and master key, and
/// `membership` (`--peers …` or `--join`).
fn member_args(shared: &Path, node_id: usize, membership: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--node-id".to_owned(),
        node_id.to_string(),
        "--certs-dir".to_owned(),
        shared.join("certs").display().to_string(),
        "--master-key-file".to_owned(),
        shared.join("master.key").display().to_string(),
    ];
    args.extend(membership.iter().map(|arg| (*arg).to_owned()));
    args
}

/// `pmsctl cert …` into `certs_dir`.
pub fn pmsctl_cert(certs_dir: &Path, args: &[&str]) {
    let output = Command::new(pmsctl_path())
        .arg("--certs-dir")
        .arg(certs_dir)
        .arg("cert")
        .args(args)
        .output()
        .expect("pmsctl cert");
    assert!(
        output.status.success(),
        "pmsctl cert {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A new CA in `certs_dir`, with node and SIP certificates for the loopback names.
pub fn loopback_certs(certs_dir: &Path) {
    pmsctl_cert(certs_dir, &["create-ca"]);
    pmsctl_cert(certs_dir, &["create-node", "127.0.0.1", "localhost"]);
    pmsctl_cert(certs_dir, &["create-sip", "127.0.0.1", "localhost"]);
}

/// Lines of each node's log shown when a cluster test fails.
const LOG_TAIL_LINES: usize = 150;

/// Every file under `dir` whose raw bytes contain `needle`. Meaningful for RocksDB files
/// because PMS stores blocks uncompressed (see `pms_storage::RocksStore`).
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|file| {
            std::fs::read(file)
                .is_ok_and(|bytes| bytes.windows(needle.len()).any(|window| window == needle))
        })
        .collect()
}

/// The RocksDB store in `db_dir`, read-only (a secondary instance caught up with the node's
/// files and WAL now), with the temp dir of its own log: keep both alive together.
pub fn open_store_read_only(db_dir: &Path) -> (pms_storage::RocksStore, tempfile::TempDir) {
    let secondary = tempfile::tempdir().expect("tempdir");
    let store = pms_storage::RocksStore::open_read_only(db_dir, secondary.path())
        .expect("open RocksDB read-only");
    (store, secondary)
}

/// Where, reading through RocksDB itself (every column family, Raft log entries and the stored
/// snapshot included), the store in `db_dir` holds `needle` in a key or a value:
/// `"keyspace"` names. Opens read-only, so the node may be running.
pub fn stored_in(db_dir: &Path, needle: &[u8]) -> Vec<&'static str> {
    use pms_storage::Store as _;
    let (store, _secondary) = open_store_read_only(db_dir);
    let contains = |bytes: &[u8]| bytes.windows(needle.len()).any(|window| window == needle);
    pms_types::Keyspace::ALL
        .into_iter()
        .filter(|keyspace| {
            store
                .scan_prefix_all(*keyspace, &[])
                .expect("scan")
                .iter()
                .any(|(key, value)| contains(key) || contains(value))
        })
        .map(pms_types::Keyspace::name)
        .collect()
}

/// Whether the readable memory of process `pid` holds `needle` anywhere (heap, stacks,
/// mappings), read through `/proc/<pid>/mem`.
pub fn process_memory_contains(pid: u32, needle: &[u8]) -> bool {
    use std::os::unix::fs::FileExt as _;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("read maps");
    let memory = std::fs::File::open(format!("/proc/{pid}/mem")).expect("open /proc/pid/mem");
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(permissions)) = (fields.next(), fields.next()) else {
            continue;
        };
        let name = fields.nth(3).unwrap_or_default();
        if !permissions.starts_with('r') || name == "[vvar]" || name == "[vsyscall]" {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        let mut region = vec![0u8; usize::try_from(end - start).expect("region size")];
        if memory.read_exact_at(&mut region, start).is_err() {
            continue;
        }
        if region.windows(needle.len()).any(|window| window == needle) {
            return true;
        }
    }
    false
}

/// The value of the unlabelled metric `name` on the node's `/metrics`, if it answers.
pub fn metric_value(http_port: u16, name: &str) -> Option<f64> {
    let (_, body) = http_get(http_port, "/metrics")?;
    body.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A SIP client on one TCP connection from a chosen loopback source address (`127.0.0.x`), for
/// tests that speak as several sources; it answers 401/407 challenges with a given password.
pub struct SipSource {
    stream: TcpStream,
    framer: pms_sip::framing::StreamFramer,
    local: SocketAddr,
    requests: u64,
}

impl SipSource {
    /// Connects to `server` from `source` (std cannot bind before connecting; tokio can).
    pub fn connect(source: [u8; 4], server: SocketAddr) -> SipSource {
        let stream = connect_from(source.into(), server);
        let local = stream.local_addr().expect("local address");
        SipSource {
            stream,
            framer: pms_sip::framing::StreamFramer::new(64 * 1024, 64 * 1024),
            local,
            requests: 0,
        }
    }

    /// Sends `bytes` and returns the next response (keep-alives and requests skipped).
    pub fn exchange(&mut self, bytes: &[u8]) -> pms_sip::message::Response {
        use pms_sip::framing::Frame;
        use pms_sip::message::SipMessage;
        self.stream.write_all(bytes).expect("write");
        loop {
            while let Some(frame) = self.framer.next_frame() {
                if let Frame::Message(message) = frame.expect("framing")
                    && let SipMessage::Response(response) =
                        pms_sip::message::parse(&message).expect("a SIP message")
                {
                    return response;
                }
            }
            let mut buffer = vec![0u8; 65_536];
            let read = self.stream.read(&mut buffer).expect("no response in time");
            assert!(read > 0, "server closed the connection");
            self.framer.push(&buffer[..read]);
        }
    }

    /// One request of a new transaction (`cseq` 1 without `credentials`, 2 with them).
    fn request(
        &mut self,
        method: &str,
        uri: &str,
        from_user: &str,
        to_user: &str,
        credentials: Option<&str>,
        body: &str,
    ) -> Vec<u8> {
        self.requests += 1;
        let n = self.requests;
        let local = self.local;
        let cseq = if credentials.is_some() { 2 } else { 1 };
        let mut text = format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bKsrc{n}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{from_user}@localhost>;tag=t{n}\r\n\
             To: <sip:{to_user}@localhost>\r\nCall-ID: src-{local}-{n}\r\nCSeq: {cseq} {method}\r\n"
        );
        if method == "REGISTER" {
            text.push_str(&format!(
                "Contact: <sip:{from_user}@{local};transport=tcp>\r\nExpires: 600\r\n"
            ));
        }
        if let Some(credentials) = credentials {
            text.push_str(credentials);
            text.push_str("\r\n");
        }
        if !body.is_empty() {
            text.push_str("Content-Type: text/plain\r\n");
        }
        text.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        text.into_bytes()
    }

    /// A request of `user` with `password`: sent, challenged, sent again with credentials;
    /// returns the final answer (or the first one when it is not a challenge).
    fn authenticated(
        &mut self,
        method: &str,
        uri: &str,
        user: &str,
        password: &str,
        to_user: &str,
        body: &str,
    ) -> pms_sip::message::Response {
        let first = self.request(method, uri, user, to_user, None, body);
        let challenge = self.exchange(&first);
        let (challenge_header, credentials_header) = match challenge.status {
            401 => ("WWW-Authenticate", "Authorization"),
            407 => ("Proxy-Authenticate", "Proxy-Authorization"),
            _ => return challenge,
        };
        let parsed = pms_sip::digest::select_challenge(challenge.headers.get_all(challenge_header))
            .unwrap_or_else(|| panic!("no usable challenge in {challenge:?}"));
        let value = pms_sip::digest::authorization(
            &parsed,
            user,
            password,
            method,
            uri,
            &format!("c{}", self.requests),
            1,
        );
        let second = self.request(
            method,
            uri,
            user,
            to_user,
            Some(&format!("{credentials_header}: {value}")),
            body,
        );
        self.exchange(&second)
    }

    /// A REGISTER of `user` with `password`; the final answer.
    pub fn register(&mut self, user: &str, password: &str) -> pms_sip::message::Response {
        self.authenticated("REGISTER", "sip:localhost", user, password, user, "")
    }

    /// A text MESSAGE from `user` (with `password`) to `to`; the final answer.
    pub fn message(
        &mut self,
        user: &str,
        password: &str,
        to: &str,
        text: &str,
    ) -> pms_sip::message::Response {
        let uri = format!("sip:{to}@localhost");
        self.authenticated("MESSAGE", &uri, user, password, to, text)
    }
}

/// A TCP connection to `server` from the loopback address `source` (std cannot bind before
/// connecting; tokio can), blocking, with a 10 s read timeout.
pub fn connect_from(source: std::net::Ipv4Addr, server: SocketAddr) -> TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    let stream = runtime
        .block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::from((source, 0)))?;
            socket.connect(server).await?.into_std()
        })
        .unwrap_or_else(|error| panic!("connect from {source} to {server}: {error}"));
    stream.set_nonblocking(false).expect("blocking");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    stream
}

/// Waits until `condition` holds, polling, and fails the test after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the built `pmsd` with `arguments` and no `PMS_*` environment, killing it if it has not
/// exited within `timeout`.
pub fn run_pmsd_until_exit(arguments: &[String], timeout: Duration) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pmsd"));
    command
        .args(arguments)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PMS_") {
            command.env_remove(name);
        }
    }
    let mut child = command.spawn().expect("start pmsd");
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("poll pmsd").is_none() {
        if Instant::now() >= deadline {
            // Never leave a node running behind a failed test.
            let _ = child.kill();
            let output = child.wait_with_output().expect("collect pmsd's output");
            panic!(
                "pmsd {arguments:?} still ran after {timeout:?}:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("collect pmsd's output")
}

/// `promtool check metrics` accepts `text` (a missing promtool fails: the README's test command
/// installs it).
pub fn promtool_check_metrics(text: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus): run scripts/install-packages test");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let output = promtool.wait_with_output().expect("promtool");
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}\n---\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `command`, failing the test with its output unless it exits 0.
pub fn run_ok(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("running {command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}
