//! Real softphones against a real `pmsd` over SIP/TLS: Debian's `linphonec` (liblinphone 5.1)
//! and `baresip` (1.0 on libre 1.1), headless, each test in a network namespace of its own.
//!
//! Why a namespace: the node and the phones run inside it (`ip netns exec`), so nothing a phone
//! does (DNS, STUN, local-address probes) can leave the machine; the namespace has loopback
//! plus a veth pair whose both ends stay inside, with a TEST-NET address and a default route to
//! a gateway that does not exist. With only loopback, baresip finds no local address (and adds
//! no SIP transport), and liblinphone with IPv6 on (its default) calls the network unreachable
//! (no REGISTER, IMDNs held back); the phones here run with IPv6 off anyway, as the node listens
//! on 127.0.0.1 only. The namespace's `/etc/hosts` maps `localhost` to 127.0.0.1 only and its resolver is 127.0.0.1
//! (nothing listens: a stray lookup fails at once). Ports are fixed: the namespace is empty.
//!
//! What a user would notice is asserted: registration, the received text byte for byte, the
//! sender's message state as liblinphone stores it (its SQLite message database), the node's
//! keep-alive counter. Waits poll a condition until a deadline. A missing tool (`ip`, `curl`,
//! `sqlite3`, `linphonec`, `baresip`) is a failure, never a skip; the tests need root (network
//! namespaces). On failure the node log and each phone's output and log are printed, and the
//! test's directory is kept (set `PMS_SOFTPHONES_KEEP=1` to keep it when tests pass too).

mod common;

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Listener, json_lines, pmsctl_path};
use serde_json::Value;

/// Accounts of these tests. No spaces: baresip's account line cannot carry them.
const PASSWORD: &str = "Softphone-test-secret-42";

/// carol's per-account digest policy. libre 1.1 computes MD5 only, and it gives up on a 401 as
/// soon as *any* WWW-Authenticate in it names another algorithm (`auth_handler` in
/// src/sip/auth.c answers ENOSYS and `sip_auth_authenticate` fails the whole challenge), even
/// after an MD5 one: `md5,sha256` (MD5 first, SHA-256 second) does not register baresip 1.0.
const LIBRE_DIGEST_POLICY: &str = "md5";

/// The node's listeners inside the namespace (which is empty, so fixed ports are free).
const SIP_TLS_PORT: u16 = 5061;
const SIP_TCP_PORT: u16 = 5060;
const GRPC_PORT: u16 = 50051;
const HTTP_PORT: u16 = 9090;

/// The namespace's own non-loopback address (TEST-NET-1) and a gateway nobody answers for.
const NETNS_ADDRESS: &str = "192.0.2.10/24";
const NETNS_GATEWAY: &str = "192.0.2.1";
const NETNS_PREFIX: &str = "pms-sp-";

/// liblinphone 5.1's `LinphoneChatMessageState` (include/linphone/enums/chat-message-enums.h).
const STATE_DELIVERED: i64 = 2;
const STATE_NOT_DELIVERED: i64 = 3;
const STATE_DELIVERED_TO_USER: i64 = 6;
/// `conference_chat_message_event.direction`.
const DIRECTION_INCOMING: i64 = 0;
const DIRECTION_OUTGOING: i64 = 1;

const POLL_INTERVAL: Duration = Duration::from_millis(200);
const REGISTER_TIMEOUT: Duration = Duration::from_secs(20);
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(20);
/// libre sends its first CRLF keep-alive 16–20 s after registering, whatever the Flow-Timer
/// (it never pings more often than every 20 s).
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(40);
/// Set (to anything) to keep each test's directory also when it passes.
const KEEP_ENV: &str = "PMS_SOFTPHONES_KEEP";
/// Lines of a log shown when a test fails.
const LOG_TAIL_LINES: usize = 120;

const LINPHONERC_TEMPLATE: &str = include_str!("softphones/linphonerc.in");
const BARESIP_CONFIG_TEMPLATE: &str = include_str!("softphones/baresip-config.in");

// ---------------------------------------------------------------------------------------------
// Tools, waiting, files

/// The path of `program` on `PATH` (or as given when absolute); a missing tool fails the test.
fn tool(program: &str, package: &str) -> PathBuf {
    let candidates: Vec<PathBuf> = if program.starts_with('/') {
        vec![PathBuf::from(program)]
    } else {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
            .map(|dir| dir.join(program))
            .collect()
    };
    candidates
        .into_iter()
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("`{program}` is missing: these tests need it (Debian package `{package}`)")
        })
}

/// Polls `probe` until it returns `Some`, or fails the test after `timeout` naming `what`.
fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(POLL_INTERVAL);
    }
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

fn print_tail(title: &str, path: &Path) {
    let text = read_lossy(path);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    eprintln!(
        "---- {title} ({}, last {} of {} lines) ----",
        path.display(),
        lines.len() - start,
        lines.len()
    );
    for line in &lines[start..] {
        eprintln!("{line}");
    }
}

fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut text = template.to_owned();
    for (name, value) in values {
        text = text.replace(&format!("{{{{{name}}}}}"), value);
    }
    assert!(
        !text.contains("{{"),
        "unfilled placeholder in template:\n{text}"
    );
    text
}

// ---------------------------------------------------------------------------------------------
// The network namespace

/// A network namespace this test created: loopback, a veth pair kept inside, a TEST-NET
/// address and a dead default route. Deleted (with anything still running in it) on drop.
struct Netns {
    name: String,
    etc_dir: PathBuf,
    ip: PathBuf,
}

impl Netns {
    fn create() -> Netns {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let ip = tool("ip", "iproute2");
        remove_leftover_namespaces(&ip);
        let name = format!(
            "{NETNS_PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        common::run_ok(Command::new(&ip).args(["netns", "add", &name]));
        let etc_dir = Path::new("/etc/netns").join(&name);
        let netns = Netns { name, etc_dir, ip };
        // `ip netns exec` bind-mounts these over /etc/hosts and /etc/resolv.conf.
        fs::create_dir_all(&netns.etc_dir).expect("creating /etc/netns/<name>");
        fs::write(netns.etc_dir.join("hosts"), "127.0.0.1 localhost\n").expect("hosts");
        fs::write(netns.etc_dir.join("resolv.conf"), "nameserver 127.0.0.1\n")
            .expect("resolv.conf");
        for args in [
            vec!["link", "set", "lo", "up"],
            vec![
                "link", "add", "pmsv0", "type", "veth", "peer", "name", "pmsv1",
            ],
            vec!["addr", "add", NETNS_ADDRESS, "dev", "pmsv0"],
            vec!["link", "set", "pmsv0", "up"],
            vec!["link", "set", "pmsv1", "up"],
            vec![
                "route",
                "add",
                "default",
                "via",
                NETNS_GATEWAY,
                "dev",
                "pmsv0",
            ],
        ] {
            common::run_ok(
                Command::new(&netns.ip)
                    .args(["-n", &netns.name])
                    .args(&args),
            );
        }
        netns
    }

    /// `program` run inside the namespace (`ip netns exec` execs it: same process id).
    fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(&self.ip);
        command
            .args(["netns", "exec", &self.name])
            .arg(program)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
        command
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Anything still inside was started by this test.
        if let Ok(output) = Command::new(&self.ip)
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        let _ = Command::new(&self.ip)
            .args(["netns", "del", &self.name])
            .status();
        let _ = fs::remove_dir_all(&self.etc_dir);
    }
}

/// Namespaces of earlier runs of these tests whose process is gone (a run killed before its
/// drops ran): `pms-sp-<pid>-<n>`.
fn remove_leftover_namespaces(ip: &Path) {
    let Ok(output) = Command::new(ip).args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(NETNS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(pids) = Command::new(ip).args(["netns", "pids", name]).output() {
            for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        let _ = Command::new(ip).args(["netns", "del", name]).status();
        let _ = fs::remove_dir_all(Path::new("/etc/netns").join(name));
    }
}

// ---------------------------------------------------------------------------------------------
// The node

/// A `pmsd` in a fresh namespace, with a temporary directory for its data and the phones.
struct Lab {
    pmsd: Option<Child>,
    pmsd_log: PathBuf,
    curl: PathBuf,
    root: tempfile::TempDir,
    netns: Netns,
}

impl Lab {
    fn start(extra_args: &[&str]) -> Lab {
        let curl = tool("curl", "curl");
        let netns = Netns::create();
        let root = tempfile::tempdir().expect("tempdir");
        let pmsd_log = root.path().join("pmsd.log");
        let log = File::create(&pmsd_log).expect("pmsd log file");
        let pmsd = netns
            .command(env!("CARGO_BIN_EXE_pmsd"))
            .arg("--data-dir")
            .arg(root.path().join("data"))
            .args(["--sip-tls", &format!("127.0.0.1:{SIP_TLS_PORT}")])
            .args(["--sip-tcp", &format!("127.0.0.1:{SIP_TCP_PORT}")])
            .args(["--sip-udp", &format!("127.0.0.1:{SIP_TCP_PORT}")])
            .args(["--grpc", &format!("127.0.0.1:{GRPC_PORT}")])
            .args(["--http", &format!("127.0.0.1:{HTTP_PORT}")])
            .args(["--log", "info,pms_edge=debug,pmsd=debug,openraft=warn"])
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning pmsd in the namespace");
        let mut lab = Lab {
            pmsd: Some(pmsd),
            pmsd_log,
            curl,
            root,
            netns,
        };
        lab.wait_ready();
        lab
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self
                .pmsd
                .as_mut()
                .and_then(|child| child.try_wait().expect("try_wait"))
            {
                panic!("pmsd exited early with {status}");
            }
            if self
                .http_get("/readyz")
                .is_some_and(|(status, _)| status == 200)
            {
                return;
            }
            assert!(Instant::now() < deadline, "pmsd not ready in time");
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// GET on the node's HTTP port from inside the namespace: (status, body).
    fn http_get(&self, path: &str) -> Option<(u16, String)> {
        let output = self
            .netns
            .command(&self.curl)
            .args([
                "--silent",
                "--max-time",
                "5",
                "--write-out",
                "\n%{http_code}",
            ])
            .arg(format!("http://127.0.0.1:{HTTP_PORT}{path}"))
            .output()
            .expect("running curl in the namespace");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n')?;
        let status: u16 = status.trim().parse().ok()?;
        (status != 0).then(|| (status, body.to_owned()))
    }

    /// The value of one sample on `/metrics`: `name{labels}` exactly as rendered (labels in
    /// the node's order), or `name` without labels.
    fn metric(&self, series: &str) -> Option<f64> {
        let (status, body) = self.http_get("/metrics")?;
        assert_eq!(status, 200, "/metrics: {body}");
        body.lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                (name == series).then(|| value.parse().ok())?
            })
    }

    fn certs_dir(&self) -> PathBuf {
        self.root.path().join("data").join("certs")
    }

    fn ca_file(&self) -> PathBuf {
        self.certs_dir().join("ca.crt")
    }

    /// A fresh directory for one phone.
    fn phone_dir(&self, name: &str) -> PathBuf {
        let dir = self.root.path().join(name);
        fs::create_dir(&dir).expect("phone dir");
        dir
    }

    /// `pmsctl` inside the namespace with the node's certs and admin address.
    fn pmsctl(&self) -> Command {
        let mut command = self.netns.command(pmsctl_path());
        command
            .arg("--certs-dir")
            .arg(self.certs_dir())
            .args(["--admin", &format!("127.0.0.1:{GRPC_PORT}")]);
        command
    }

    fn add_user(&self, name: &str, extra: &[&str]) {
        let output = self
            .pmsctl()
            .args(["user", "add", name, "--password", PASSWORD])
            .args(extra)
            .output()
            .expect("running pmsctl user add");
        assert!(
            output.status.success(),
            "pmsctl user add {name} {extra:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// `pmsctl send` over TLS: (exit code, JSON lines).
    fn send(&self, from: &str, to: &str, text: &str) -> (i32, Vec<Value>) {
        let output = self
            .pmsctl()
            .args(["send", "--server", &format!("127.0.0.1:{SIP_TLS_PORT}")])
            .args([
                "--user",
                from,
                "--password",
                PASSWORD,
                "--to",
                to,
                "--",
                text,
            ])
            .output()
            .expect("running pmsctl send");
        (
            output.status.code().unwrap_or(-1),
            json_lines(&output.stdout, &output.stderr),
        )
    }

    /// `pmsctl listen` in the background.
    fn listen(&self, user: &str, count: usize, timeout_secs: u64) -> Listener {
        let child = self
            .pmsctl()
            .args(["listen", "--server", &format!("127.0.0.1:{SIP_TLS_PORT}")])
            .args(["--user", user, "--password", PASSWORD])
            .args(["--count", &count.to_string()])
            .args(["--timeout", &timeout_secs.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning pmsctl listen");
        Listener::new(child)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut child) = self.pmsd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let panicking = std::thread::panicking();
        if panicking {
            print_tail("pmsd log", &self.pmsd_log);
        }
        if panicking || std::env::var_os(KEEP_ENV).is_some() {
            self.root.disable_cleanup(true);
            eprintln!(
                "---- kept the test directory {} (node data, phone configs, logs, databases) ----",
                self.root.path().display()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// linphonec

/// One row of liblinphone's message database.
#[derive(Debug, Clone)]
struct ChatRow {
    direction: i64,
    state: i64,
    imdn_message_id: String,
    sender: String,
    body: String,
}

/// A headless `linphonec` (no audio, no video) with its own home, configuration and message
/// database, reading commands from a pipe. Its console output and liblinphone's log (which
/// includes every SIP message) go to files.
struct Linphone {
    user: String,
    dir: PathBuf,
    child: Child,
    stdin: ChildStdin,
    sqlite3: PathBuf,
}

impl Linphone {
    fn start(lab: &Lab, user: &str) -> Linphone {
        let linphonec = tool("linphonec", "linphone-cli");
        let sqlite3 = tool("sqlite3", "sqlite3");
        let dir = lab.phone_dir(&format!("linphone-{user}"));
        let rc = dir.join("linphonerc");
        let dir_text = dir.display().to_string();
        let ca_text = lab.ca_file().display().to_string();
        fs::write(
            &rc,
            fill(
                LINPHONERC_TEMPLATE,
                &[
                    ("USER", user),
                    ("PASSWORD", PASSWORD),
                    ("DIR", &dir_text),
                    ("CA_FILE", &ca_text),
                    ("SIP_TLS_PORT", &SIP_TLS_PORT.to_string()),
                ],
            ),
        )
        .expect("writing linphonerc");
        // readline must pass UTF-8 through untouched (and liblinphone converts from the locale).
        fs::write(
            dir.join("inputrc"),
            "set input-meta on\nset output-meta on\nset convert-meta off\n\
             set enable-bracketed-paste off\n",
        )
        .expect("writing inputrc");
        let console = File::create(dir.join("console.txt")).expect("console file");
        let mut child = lab
            .netns
            .command(linphonec)
            .arg("-c")
            .arg(&rc)
            .args(["-d", "6", "-l"])
            .arg(dir.join("liblinphone.log"))
            .env("HOME", &dir)
            .env("INPUTRC", dir.join("inputrc"))
            .env("LC_ALL", "C.UTF-8")
            .env("TERM", "dumb")
            .stdin(Stdio::piped())
            .stdout(console.try_clone().expect("console file"))
            .stderr(console)
            .spawn()
            .expect("spawning linphonec");
        let stdin = child.stdin.take().expect("piped stdin");
        Linphone {
            user: user.to_owned(),
            dir,
            child,
            stdin,
            sqlite3,
        }
    }

    fn console(&self) -> String {
        read_lossy(&self.dir.join("console.txt"))
    }

    fn log(&self) -> String {
        read_lossy(&self.dir.join("liblinphone.log"))
    }

    fn command(&mut self, line: &str) {
        assert!(
            self.child.try_wait().expect("try_wait").is_none(),
            "linphonec of {} exited",
            self.user
        );
        writeln!(self.stdin, "{line}").expect("writing to linphonec");
        self.stdin.flush().expect("flushing linphonec's stdin");
    }

    /// Asks `status register` until linphonec answers that the account is registered.
    fn wait_registered(&mut self) {
        let what = format!("linphonec of {} to register", self.user);
        wait_for(&what, REGISTER_TIMEOUT, || {
            self.command("status register");
            self.console()
                .contains(&format!("registered, identity=sip:{}@localhost", self.user))
                .then_some(())
        });
    }

    /// `chat sip:<to>@localhost <text>`: the rest of the line is the message.
    fn chat(&mut self, to: &str, text: &str) {
        assert!(!text.contains('\n'), "one line only");
        self.command(&format!("chat sip:{to}@localhost {text}"));
    }

    /// The messages liblinphone stored, oldest first. The database is copied first: liblinphone
    /// takes no file locks (its SQLite VFS has none), so the original is never opened here.
    fn messages(&self) -> Vec<ChatRow> {
        let db = self.dir.join("linphone.db");
        let probe = self.dir.join("probe.db");
        if fs::copy(&db, &probe).is_err() {
            return Vec::new();
        }
        let output = Command::new(&self.sqlite3)
            .arg("-json")
            .arg(&probe)
            .arg(
                "SELECT e.direction AS direction, e.state AS state, \
                 e.imdn_message_id AS imdn_message_id, \
                 (SELECT value FROM sip_address WHERE id = e.from_sip_address_id) AS sender, \
                 c.body AS body \
                 FROM conference_chat_message_event e \
                 JOIN chat_message_content c ON c.event_id = e.event_id \
                 ORDER BY e.event_id",
            )
            .output()
            .expect("running sqlite3");
        let _ = fs::remove_file(&probe);
        if !output.status.success() || output.stdout.iter().all(u8::is_ascii_whitespace) {
            // Not created yet, or copied in the middle of a write: the caller polls again.
            return Vec::new();
        }
        let rows: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap_or_default();
        rows.iter()
            .map(|row| ChatRow {
                direction: row["direction"].as_i64().unwrap_or(-1),
                state: row["state"].as_i64().unwrap_or(-1),
                imdn_message_id: row["imdn_message_id"].as_str().unwrap_or("").to_owned(),
                sender: row["sender"].as_str().unwrap_or("").to_owned(),
                body: row["body"].as_str().unwrap_or("").to_owned(),
            })
            .collect()
    }

    fn find(&self, direction: i64, body: &str) -> Option<ChatRow> {
        self.messages()
            .into_iter()
            .find(|row| row.direction == direction && row.body == body)
    }

    /// Waits until the outgoing message `body` has a state `accept`s (`what` names it); fails
    /// early when it becomes NotDelivered.
    fn wait_outgoing(&self, body: &str, what: &str, accept: impl Fn(i64) -> bool) -> ChatRow {
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        loop {
            let row = self.find(DIRECTION_OUTGOING, body);
            if let Some(row) = &row {
                if accept(row.state) {
                    return row.clone();
                }
                assert_ne!(
                    row.state, STATE_NOT_DELIVERED,
                    "{}'s message {body:?} became NotDelivered",
                    self.user
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {DELIVERY_TIMEOUT:?} waiting for {}'s message {body:?} to be \
                 {what}; stored messages: {:?}",
                self.user,
                self.messages()
            );
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// The `Authorization` header lines of every request liblinphone sent.
    fn authorization_lines(&self) -> Vec<String> {
        self.log()
            .lines()
            .map(str::trim)
            .filter(|line| line.to_ascii_lowercase().starts_with("authorization:"))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Linphone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            print_tail(
                &format!("linphonec {} console", self.user),
                &self.dir.join("console.txt"),
            );
            print_tail(
                &format!("liblinphone {} log", self.user),
                &self.dir.join("liblinphone.log"),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// baresip

/// A headless `baresip` (stdio, account, contact and menu modules; no audio) with its own
/// config dir, SIP trace on (`-s`), commands on stdin and everything it prints in one file.
struct Baresip {
    user: String,
    dir: PathBuf,
    child: Child,
    stdin: ChildStdin,
}

impl Baresip {
    /// `account_params` are appended to the account line (`;sipnat=outbound` …); the first of
    /// `contacts` is the current contact `/message` sends to.
    fn start(lab: &Lab, user: &str, account_params: &str, contacts: &[&str]) -> Baresip {
        let baresip = tool("baresip", "baresip-core");
        let dir = lab.phone_dir(&format!("baresip-{user}"));
        let ca_text = lab.ca_file().display().to_string();
        fs::write(
            dir.join("config"),
            fill(BARESIP_CONFIG_TEMPLATE, &[("CA_FILE", &ca_text)]),
        )
        .expect("writing baresip config");
        // Requests go through the node as outbound proxy, by address: libre 1.1 has no hosts
        // file and would ask DNS for `localhost`.
        fs::write(
            dir.join("accounts"),
            format!(
                "<sip:{user}@localhost>;auth_pass={PASSWORD};\
                 outbound=\"sip:127.0.0.1:{SIP_TLS_PORT};transport=tls\";regint=600\
                 {account_params}\n"
            ),
        )
        .expect("writing baresip accounts");
        let contacts: String = contacts
            .iter()
            .map(|contact| format!("{contact}\n"))
            .collect();
        fs::write(dir.join("contacts"), contacts).expect("writing baresip contacts");
        let output = File::create(dir.join("output.txt")).expect("output file");
        let mut child = lab
            .netns
            .command(baresip)
            .arg("-f")
            .arg(&dir)
            .args(["-s", "-4"])
            .env("HOME", &dir)
            .env("LC_ALL", "C.UTF-8")
            .stdin(Stdio::piped())
            .stdout(output.try_clone().expect("output file"))
            .stderr(output)
            .spawn()
            .expect("spawning baresip");
        let stdin = child.stdin.take().expect("piped stdin");
        Baresip {
            user: user.to_owned(),
            dir,
            child,
            stdin,
        }
    }

    fn output(&self) -> String {
        read_lossy(&self.dir.join("output.txt"))
    }

    fn command(&mut self, line: &str) {
        assert!(
            self.child.try_wait().expect("try_wait").is_none(),
            "baresip of {} exited:\n{}",
            self.user,
            self.output()
        );
        writeln!(self.stdin, "{line}").expect("writing to baresip");
        self.stdin.flush().expect("flushing baresip's stdin");
    }

    /// Waits for baresip's registration line: `<aor>: {<reg-id>/TLS/v4} 200 OK …`.
    fn wait_registered(&mut self) {
        let what = format!("baresip of {} to register", self.user);
        let prefix = format!("{}@localhost: {{", self.user);
        wait_for(&what, REGISTER_TIMEOUT, || {
            assert!(
                self.child.try_wait().expect("try_wait").is_none(),
                "baresip of {} exited",
                self.user
            );
            self.output()
                .lines()
                .any(|line| {
                    line.contains(&prefix) && line.contains("/TLS/") && line.contains("} 2")
                })
                .then_some(())
        });
    }

    /// The SIP messages baresip's trace shows, each as its text (start line and headers).
    fn traced_messages(&self) -> Vec<String> {
        let output = self.output();
        let mut messages = Vec::new();
        let mut current: Option<String> = None;
        for line in output.lines() {
            let line = line.trim_end_matches('\r');
            let starts_message = line.ends_with(" SIP/2.0") || line.starts_with("SIP/2.0 ");
            if starts_message {
                if let Some(message) = current.take() {
                    messages.push(message);
                }
                current = Some(String::new());
            }
            if let Some(message) = current.as_mut() {
                if line.is_empty() {
                    messages.push(std::mem::take(message));
                    current = None;
                } else {
                    message.push_str(line);
                    message.push('\n');
                }
            }
        }
        if let Some(message) = current {
            messages.push(message);
        }
        messages
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            print_tail(
                &format!("baresip {} output", self.user),
                &self.dir.join("output.txt"),
            );
        }
    }
}

/// The value of `name` in a header line (`name=value` or `name="value"`), case-insensitive.
fn header_parameter(line: &str, name: &str) -> Option<String> {
    let lower = line.to_ascii_lowercase();
    let needle = format!("{}=", name.to_ascii_lowercase());
    let start = lower
        .match_indices(&needle)
        .find(|(index, _)| {
            *index == 0 || matches!(lower.as_bytes()[index - 1], b' ' | b',' | b';' | b'\t')
        })?
        .0
        + needle.len();
    let rest = &line[start..];
    let value = if let Some(quoted) = rest.strip_prefix('"') {
        quoted.split('"').next().unwrap_or("")
    } else {
        rest.split([',', ';', ' ', '\r']).next().unwrap_or("")
    };
    Some(value.to_owned())
}

fn header_lines<'a>(message: &'a str, name: &str) -> Vec<&'a str> {
    let prefix = format!("{}:", name.to_ascii_lowercase());
    message
        .lines()
        .filter(|line| line.to_ascii_lowercase().starts_with(&prefix))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Tests

/// alice's linphonec registers over TLS (certificate verified against the node's CA, name
/// `localhost`) and answers the node's default challenge (SHA-256 offered first) with SHA-256.
#[test]
fn linphone_registers_over_tls_with_sha256_digest() {
    let lab = Lab::start(&[]);
    lab.add_user("alice", &[]);
    let mut alice = Linphone::start(&lab, "alice");
    alice.wait_registered();

    // belle-sip (mbedtls) checked the chain against the node's CA and the name `localhost`:
    // it logs each certificate with its verification failure flags, empty when it is valid.
    let log = alice.log();
    assert!(
        log.contains("TLS handshake with cname=localhost")
            && log.contains("SSL handshake finished"),
        "no verified TLS handshake with localhost in liblinphone's log"
    );
    let verdicts: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("Found certificate depth="))
        .collect();
    assert!(
        !verdicts.is_empty() && verdicts.iter().all(|line| line.contains("flags=[]")),
        "the node's certificate chain did not verify cleanly: {verdicts:?}"
    );

    let authorizations = alice.authorization_lines();
    assert!(
        !authorizations.is_empty(),
        "liblinphone sent no Authorization header (its log shows every SIP message)"
    );
    for line in &authorizations {
        let algorithm = header_parameter(line, "algorithm").unwrap_or_else(|| "MD5".into());
        assert!(
            algorithm.eq_ignore_ascii_case("SHA-256"),
            "liblinphone answered a challenge with {algorithm}, not SHA-256: {line}"
        );
        let response = header_parameter(line, "response").unwrap_or_default();
        assert_eq!(
            response.len(),
            64,
            "a SHA-256 digest response is 64 hex digits: {line}"
        );
    }
}

/// alice (linphonec, CPIM with IMDN requests) writes to bob, who has never registered. The node
/// stores it (alice sees Delivered); bob's linphonec registers later and receives the text byte
/// for byte with the CPIM message id; bob's delivery notification travels back through the
/// node and alice's message reaches DeliveredToUser.
#[test]
fn linphone_message_to_offline_linphone_arrives_and_reaches_delivered_to_user() {
    let lab = Lab::start(&[]);
    lab.add_user("alice", &[]);
    lab.add_user("bob", &[]);
    let mut alice = Linphone::start(&lab, "alice");
    alice.wait_registered();

    let text = "Hallo Bob 😀 — grüße aus 東京, offline";
    alice.chat("bob", text);
    // Stored by the node (202): liblinphone's Delivered. Nobody could have confirmed more.
    let sent = alice.wait_outgoing(text, "Delivered (stored by the node)", |state| {
        state == STATE_DELIVERED
    });
    assert!(
        !sent.imdn_message_id.is_empty(),
        "no imdn.Message-ID: {sent:?}"
    );
    assert!(
        alice
            .log()
            .contains(&format!("imdn.Message-ID: {}", sent.imdn_message_id)),
        "alice's MESSAGE was not CPIM with imdn.Message-ID {}",
        sent.imdn_message_id
    );

    let mut bob = Linphone::start(&lab, "bob");
    bob.wait_registered();
    let received = wait_for(
        "bob's linphonec to receive the message",
        DELIVERY_TIMEOUT,
        || {
            bob.messages()
                .into_iter()
                .find(|row| row.direction == DIRECTION_INCOMING)
        },
    );
    assert_eq!(received.body, text, "the text must arrive byte for byte");
    assert_eq!(received.sender, "sip:alice@localhost");
    assert_eq!(
        received.imdn_message_id, sent.imdn_message_id,
        "bob must see alice's CPIM imdn.Message-ID (it is what his notification refers to)"
    );

    alice.wait_outgoing(text, "DeliveredToUser", |state| {
        state == STATE_DELIVERED_TO_USER
    });
    let incoming: Vec<ChatRow> = bob
        .messages()
        .into_iter()
        .filter(|row| row.direction == DIRECTION_INCOMING)
        .collect();
    assert_eq!(incoming.len(), 1, "delivered exactly once: {incoming:?}");
}

/// alice and bob are both registered: alice's message reaches bob's linphonec at once, and
/// linphonec shows it.
#[test]
fn linphone_receives_while_registered() {
    let lab = Lab::start(&[]);
    lab.add_user("alice", &[]);
    lab.add_user("bob", &[]);
    let mut alice = Linphone::start(&lab, "alice");
    let mut bob = Linphone::start(&lab, "bob");
    alice.wait_registered();
    bob.wait_registered();

    let text = "online 👋 ünïcödé";
    alice.chat("bob", text);
    let received = wait_for(
        "bob's linphonec to receive the message",
        DELIVERY_TIMEOUT,
        || bob.find(DIRECTION_INCOMING, text),
    );
    assert_eq!(received.sender, "sip:alice@localhost");
    assert!(
        bob.console().contains(&format!(
            "Message received from sip:alice@localhost: {text}"
        )),
        "linphonec did not show the message"
    );
    alice.wait_outgoing(text, "Delivered or beyond", |state| {
        state >= STATE_DELIVERED && state != STATE_NOT_DELIVERED
    });
}

/// carol's account is challenged with MD5 only (`--digest-algorithms md5`, see
/// [`LIBRE_DIGEST_POLICY`]) while dave keeps the node's default: baresip registers over TLS,
/// receives a message sent with `pmsctl send`, and sends one that `pmsctl listen` receives.
#[test]
fn baresip_registers_with_md5_by_account_policy_and_exchanges_messages() {
    let lab = Lab::start(&[]);
    lab.add_user("carol", &["--digest-algorithms", LIBRE_DIGEST_POLICY]);
    lab.add_user("dave", &[]);
    let mut carol = Baresip::start(&lab, "carol", "", &["<sip:dave@localhost>"]);
    carol.wait_registered();

    let messages = carol.traced_messages();
    let challenge = messages
        .iter()
        .find(|message| message.starts_with("SIP/2.0 401"))
        .expect("the node challenged carol's REGISTER");
    let algorithms: Vec<Option<String>> = header_lines(challenge, "WWW-Authenticate")
        .iter()
        .map(|line| header_parameter(line, "algorithm"))
        .collect();
    assert!(
        !algorithms.is_empty()
            && algorithms
                .iter()
                .all(|algorithm| algorithm.as_deref() == Some("MD5")),
        "carol must be challenged with MD5 only (libre 1.1 fails on any other): {challenge}"
    );
    let answered = messages
        .iter()
        .filter(|message| message.starts_with("REGISTER "))
        .flat_map(|message| header_lines(message, "Authorization"))
        .map(|line| header_parameter(line, "response").unwrap_or_default())
        .collect::<Vec<_>>();
    assert!(
        answered.iter().any(|response| response.len() == 32),
        "baresip answered with an MD5 digest (32 hex digits): {answered:?}"
    );

    // dave → carol: baresip prints `<from>: "<text>"`.
    let inbound = "Hi Carol 😀 from pmsctl";
    let (code, lines) = lab.send("dave", "carol", inbound);
    assert_eq!(code, 0, "pmsctl send: {lines:?}");
    let shown = format!("sip:dave@localhost: \"{inbound}\"");
    wait_for("baresip to show dave's message", DELIVERY_TIMEOUT, || {
        carol.output().contains(&shown).then_some(())
    });

    // carol → dave: `/message` to the current contact. dave's mailbox may first hold the
    // delivery notification for his own message: look for the text.
    let mut dave = lab.listen("dave", 10, 30);
    dave.wait_for_stderr(REGISTER_TIMEOUT, "registered");
    let outbound = "Hi Dave 👋 from baresip";
    carol.command(&format!("/message {outbound}"));
    let message = dave.wait_for(DELIVERY_TIMEOUT, |line| line["body"] == outbound);
    assert!(
        message["content_type"]
            .as_str()
            .is_some_and(|content_type| content_type.starts_with("text/plain")),
        "{message}"
    );
    assert_eq!(message["from"], "sip:carol@localhost");
}

/// baresip registers with RFC 5626 outbound (`+sip.instance`, `reg-id`, `Supported: outbound`);
/// the node answers `Require: outbound` and `Flow-Timer` (`--flow-timer-secs 5`), baresip
/// starts double-CRLF keep-alives on the flow, the node counts them
/// (`pms_sip_keepalives_total{transport="tls"}`), and the flow still delivers afterwards.
#[test]
fn baresip_outbound_flow_is_kept_alive_with_crlf_pings() {
    let lab = Lab::start(&["--flow-timer-secs", "5"]);
    lab.add_user("carol", &["--digest-algorithms", LIBRE_DIGEST_POLICY]);
    lab.add_user("dave", &[]);
    let mut carol = Baresip::start(&lab, "carol", ";sipnat=outbound", &["<sip:dave@localhost>"]);
    carol.wait_registered();

    let messages = carol.traced_messages();
    let register = messages
        .iter()
        .rev()
        .find(|message| message.starts_with("REGISTER "))
        .expect("baresip sent REGISTER");
    let contact = header_lines(register, "Contact")
        .first()
        .map(|line| (*line).to_owned())
        .unwrap_or_default();
    assert!(
        contact.contains("+sip.instance=") && contact.contains("reg-id=1"),
        "an outbound REGISTER carries +sip.instance and reg-id: {register}"
    );
    assert!(
        header_lines(register, "Supported")
            .iter()
            .any(|line| line.contains("outbound")),
        "an outbound REGISTER says Supported: outbound: {register}"
    );
    let ok = messages
        .iter()
        .rev()
        .find(|message| message.starts_with("SIP/2.0 200") && message.contains("REGISTER"))
        .expect("the node's 200 to REGISTER");
    assert!(
        header_lines(ok, "Require")
            .iter()
            .any(|line| line.contains("outbound")),
        "the node must answer Require: outbound: {ok}"
    );
    assert!(
        header_lines(ok, "Flow-Timer")
            .iter()
            .any(|line| line.split(':').nth(1).map(str::trim) == Some("5")),
        "the node must answer Flow-Timer: 5: {ok}"
    );

    let series = r#"pms_sip_keepalives_total{transport="tls"}"#;
    wait_for(
        "the node to count a CRLF keep-alive from baresip",
        KEEPALIVE_TIMEOUT,
        || lab.metric(series).filter(|count| *count > 0.0),
    );

    // The flow still works after the keep-alive: a message reaches baresip through it.
    let text = "still there? ✓";
    let (code, lines) = lab.send("dave", "carol", text);
    assert_eq!(code, 0, "pmsctl send: {lines:?}");
    let shown = format!("sip:dave@localhost: \"{text}\"");
    wait_for("baresip to show dave's message", DELIVERY_TIMEOUT, || {
        carol.output().contains(&shown).then_some(())
    });
}
