//! A cluster of real `pmsd` processes for the chaos run: certificates and one shared master key,
//! one data dir and log file per node, addresses in per-node network namespaces (as root) or on
//! loopback, and the node controls the nemesis uses (start, SIGKILL, SIGSTOP/SIGCONT, SIGTERM,
//! partition).
//!
//! Health is judged from outside: `GET /readyz` and `GET /livez` on each node's HTTP port, and
//! each node's own view of its groups (which leader it sees) through the internal
//! `NodeStatus` call, made with the cluster's node certificate. (The admin API's
//! `cluster_status` fans out to every member with a 2 s timeout per unreachable one, which
//! would blur recovery and failover times by seconds during partitions and pauses.)
//!
//! Invariants:
//! - Invariant: all nodes share one certs dir and one master key file (data keys wrapped on one
//!   node must unwrap on every other).
//! - Invariant: a node's data dir outlives its process: every restart reuses it.
//! - Invariant: nothing outlives the [`Cluster`]: dropping it SIGKILLs every node it started and
//!   removes the network namespaces (also on panic, and on Ctrl-C, which drops the run future).
//! - Invariant: a process that exits without being told to is reported once by
//!   [`Cluster::reap_unexpected_exits`] (the nemesis records it as a crash).
//! - Invariant: every probe and admin call has a timeout, so a paused node (SIGSTOP: the kernel
//!   still accepts its connections) never stalls the harness.
//! - Invariant: extra node arguments ([`Cluster::launch_with_node_args`]; the load generator's
//!   abuse-limit settings) follow the harness's own on every start and restart of every node;
//!   the chaos run passes none, so its nodes run with `pmsd`'s defaults.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use pms_transport::{AdminClient, AdminError, NewUser, Password, PeerClients};
use pms_types::{MessageId, UserId};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::command;
use crate::netns::{self, NetnsNetwork};

/// Environment variable naming the `pmsd` binary (like `--pmsd`).
pub const PMSD_ENV: &str = "PMS_CHAOS_PMSD";
/// Environment variable naming the `pmsctl` binary (like `--pmsctl`).
pub const PMSCTL_ENV: &str = "PMS_CHAOS_PMSCTL";
/// Most nodes a chaos cluster has.
pub const NODES_MAX: usize = netns::NODES_MAX;
/// Deadline of one `/readyz` or `/livez` probe.
pub const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Deadline of connecting to a node's admin API.
pub const ADMIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of one admin call made by the harness (the client's own is 30 s).
pub const ADMIN_CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline of asking one node for its own view of the groups.
pub const NODE_STATUS_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest HTTP response head read by a probe.
pub const HTTP_RESPONSE_BYTES_MAX: usize = 4 * 1024;
/// How long a graceful stop (SIGTERM) may take before the node is killed.
pub const GRACEFUL_STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Pace of polling while waiting for a condition (the deadline bounds the wait).
pub const CONDITION_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Pause between attempts to provision a user while no node accepts the write.
pub const PROVISION_RETRY_INTERVAL: Duration = Duration::from_millis(250);
/// Lines of a node's log quoted in errors.
pub const LOG_TAIL_LINES: usize = 12;
/// Fixed ports in namespace mode (each node has its own address).
const NETNS_PORT_SIP_TLS: u16 = 5061;
const NETNS_PORT_SIP: u16 = 5060;
const NETNS_PORT_GRPC: u16 = 50051;
const NETNS_PORT_HTTP: u16 = 9090;
/// Attempts to find a free loopback port usable for both TCP and UDP.
const FREE_PORT_ATTEMPTS_MAX: usize = 1_000;

/// How the nodes are addressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkMode {
    /// One network namespace per node on a bridge: partitions are possible.
    Namespaces,
    /// 127.0.0.1 with distinct ports: no partitions.
    Loopback,
}

impl NetworkMode {
    pub fn name(self) -> &'static str {
        match self {
            NetworkMode::Namespaces => "netns",
            NetworkMode::Loopback => "loopback",
        }
    }
}

/// Where one node listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEndpoints {
    pub id: u64,
    pub sip_tls: SocketAddr,
    /// SIP TCP and UDP share this address.
    pub sip: SocketAddr,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

/// What [`Cluster::launch`] needs.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub nodes: usize,
    pub run_dir: PathBuf,
    pub pmsd: PathBuf,
    pub pmsctl: PathBuf,
    /// Try network namespaces (falls back to loopback when they are unavailable).
    pub prefer_namespaces: bool,
    /// Names the namespaces and the bridge; the harness's process id.
    pub run_pid: u32,
    pub domain: String,
    /// `--log` of every node.
    pub log_filter: String,
}

struct NodeProcess {
    endpoints: NodeEndpoints,
    data_dir: PathBuf,
    log_path: PathBuf,
    namespace: Option<String>,
    child: Option<tokio::process::Child>,
    paused: bool,
    partitioned: bool,
    starts: u32,
    /// Set when the process was seen to exit on its own (until reaped).
    exited: Option<String>,
}

/// What one probe of the whole cluster saw.
#[derive(Clone, Debug, Default)]
pub struct ClusterProbe {
    /// Every node answered `/readyz` and `/livez` 200 and all agree on a leader for every
    /// group.
    pub healthy: bool,
    /// Leader of the first group named by more nodes than any other (`None` on a tie).
    pub majority_leader: Option<u64>,
    /// Leader of the first group when every probed node answered and named it.
    pub agreed_leader: Option<u64>,
    /// Why not healthy (empty when healthy).
    pub reason: String,
}

/// One node's view: health endpoints and the leader it sees per group.
#[derive(Clone, Debug, Default)]
struct NodeProbe {
    ready: bool,
    ready_detail: String,
    leaders: Option<BTreeMap<u64, Option<u64>>>,
    status_detail: String,
}

/// The running cluster.
pub struct Cluster {
    config: ClusterConfig,
    mode: NetworkMode,
    certs_dir: PathBuf,
    master_key_file: PathBuf,
    nodes: Vec<NodeProcess>,
    admin_clients: Mutex<BTreeMap<u64, AdminClient>>,
    /// Asks each node for its own view (internal `NodeStatus`, with `node.crt`).
    peers: Arc<PeerClients>,
    notes: Vec<String>,
    /// Appended to every `pmsd` command line (after the harness's own arguments).
    extra_node_args: Vec<String>,
    /// Declared last: dropped after the processes are killed.
    network: Option<NetnsNetwork>,
}

impl Cluster {
    /// Sets up addresses, certificates and the master key, then starts every node. Does not
    /// wait for readiness (see [`Cluster::wait_healthy`]).
    pub async fn launch(config: ClusterConfig) -> anyhow::Result<Cluster> {
        Cluster::launch_with_node_args(config, Vec::new()).await
    }

    /// [`Cluster::launch`], with `extra_node_args` appended to every node's command line (on
    /// every start, restarts included): settings the harness has no field for, such as
    /// `--sip-unauthenticated-per-source-max 4096`.
    pub async fn launch_with_node_args(
        config: ClusterConfig,
        extra_node_args: Vec<String>,
    ) -> anyhow::Result<Cluster> {
        anyhow::ensure!(
            (1..=NODES_MAX).contains(&config.nodes),
            "--nodes must be within 1..={NODES_MAX}"
        );
        std::fs::create_dir_all(&config.run_dir)
            .with_context(|| format!("creating run dir {}", config.run_dir.display()))?;
        let mut notes = Vec::new();
        let network = choose_network(&config, &mut notes);
        let mode = if network.is_some() {
            NetworkMode::Namespaces
        } else {
            NetworkMode::Loopback
        };
        let endpoints = match &network {
            Some(network) => namespace_endpoints(network, config.nodes)?,
            None => loopback_endpoints(config.nodes)?,
        };
        let certs_dir = config.run_dir.join("certs");
        let master_key_file = config.run_dir.join("master.key");
        create_certificates(&config.pmsctl, &certs_dir, &endpoints)?;
        if !master_key_file.exists() {
            pms_crypto::MasterKey::write_new(&master_key_file)
                .with_context(|| format!("writing master key {}", master_key_file.display()))?;
        }
        let nodes = endpoints
            .into_iter()
            .enumerate()
            .map(|(index, endpoints)| {
                let node_dir = config.run_dir.join(format!("node-{}", endpoints.id));
                NodeProcess {
                    data_dir: node_dir.join("data"),
                    log_path: node_dir.join("pmsd.log"),
                    namespace: network
                        .as_ref()
                        .and_then(|network| network.namespace(index))
                        .map(str::to_owned),
                    endpoints,
                    child: None,
                    paused: false,
                    partitioned: false,
                    starts: 0,
                    exited: None,
                }
            })
            .collect();
        let peers = Arc::new(
            PeerClients::new(&certs_dir)
                .map_err(|error| anyhow::anyhow!("node client certificates: {error}"))?,
        );
        let mut cluster = Cluster {
            config,
            mode,
            certs_dir,
            master_key_file,
            nodes,
            admin_clients: Mutex::new(BTreeMap::new()),
            peers,
            notes,
            extra_node_args,
            network,
        };
        for node in cluster.node_ids() {
            cluster.start(node)?;
        }
        Ok(cluster)
    }

    pub fn mode(&self) -> NetworkMode {
        self.mode
    }

    /// What the setup decided and why (mode fallbacks, removed leftovers).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    pub fn certs_dir(&self) -> &Path {
        &self.certs_dir
    }

    pub fn ca_file(&self) -> PathBuf {
        self.certs_dir.join("ca.crt")
    }

    pub fn node_ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|node| node.endpoints.id).collect()
    }

    pub fn endpoints(&self) -> Vec<NodeEndpoints> {
        self.nodes
            .iter()
            .map(|node| node.endpoints.clone())
            .collect()
    }

    pub fn log_path(&self, node: u64) -> Option<&Path> {
        self.node(node).ok().map(|node| node.log_path.as_path())
    }

    fn node(&self, node: u64) -> anyhow::Result<&NodeProcess> {
        self.nodes
            .iter()
            .find(|candidate| candidate.endpoints.id == node)
            .with_context(|| format!("no node {node}"))
    }

    fn node_mut(&mut self, node: u64) -> anyhow::Result<&mut NodeProcess> {
        self.nodes
            .iter_mut()
            .find(|candidate| candidate.endpoints.id == node)
            .with_context(|| format!("no node {node}"))
    }

    fn node_index(&self, node: u64) -> anyhow::Result<usize> {
        self.nodes
            .iter()
            .position(|candidate| candidate.endpoints.id == node)
            .with_context(|| format!("no node {node}"))
    }

    fn peers_argument(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("{}={}", node.endpoints.id, node.endpoints.grpc))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts `node` on its data dir (first start or restart).
    pub fn start(&mut self, node: u64) -> anyhow::Result<()> {
        let peers = self.peers_argument();
        let pmsd = self.config.pmsd.clone();
        let domain = self.config.domain.clone();
        let log_filter = self.config.log_filter.clone();
        let certs_dir = self.certs_dir.clone();
        let master_key_file = self.master_key_file.clone();
        let extra_node_args = self.extra_node_args.clone();
        let process = self.node_mut(node)?;
        anyhow::ensure!(process.child.is_none(), "node {node} is already running");
        std::fs::create_dir_all(&process.data_dir)
            .with_context(|| format!("creating {}", process.data_dir.display()))?;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&process.log_path)
            .with_context(|| format!("opening {}", process.log_path.display()))?;
        process.starts += 1;
        writeln!(
            log,
            "===== pms-chaos: start #{} of node {node} at {} ms =====",
            process.starts,
            crate::history::now_ms()
        )?;
        let mut command = match &process.namespace {
            Some(namespace) => {
                let mut command = tokio::process::Command::new("ip");
                command
                    .args(["netns", "exec", namespace.as_str()])
                    .arg(&pmsd);
                command
            }
            None => tokio::process::Command::new(&pmsd),
        };
        let endpoints = &process.endpoints;
        command
            .arg("--node-id")
            .arg(node.to_string())
            .arg("--peers")
            .arg(&peers)
            .arg("--grpc")
            .arg(endpoints.grpc.to_string())
            .arg("--sip-tls")
            .arg(endpoints.sip_tls.to_string())
            .arg("--sip-tcp")
            .arg(endpoints.sip.to_string())
            .arg("--sip-udp")
            .arg(endpoints.sip.to_string())
            .arg("--http")
            .arg(endpoints.http.to_string())
            .arg("--data-dir")
            .arg(&process.data_dir)
            .arg("--certs-dir")
            .arg(&certs_dir)
            .arg("--master-key-file")
            .arg(&master_key_file)
            .arg("--domain")
            .arg(&domain)
            .arg("--log")
            .arg(&log_filter)
            .args(&extra_node_args)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("starting {} for node {node}", pmsd.display()))?;
        process.child = Some(child);
        process.paused = false;
        process.exited = None;
        Ok(())
    }

    fn pid(&self, node: u64) -> anyhow::Result<u32> {
        self.node(node)?
            .child
            .as_ref()
            .and_then(tokio::process::Child::id)
            .with_context(|| format!("node {node} is not running"))
    }

    fn signal(&self, node: u64, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid(node)?;
        command::run(&["kill", signal, &pid.to_string()])?;
        Ok(())
    }

    /// SIGKILL, then reap.
    pub async fn kill(&mut self, node: u64) -> anyhow::Result<()> {
        self.forget_admin_client(node);
        let process = self.node_mut(node)?;
        let mut child = process
            .child
            .take()
            .with_context(|| format!("node {node} is not running"))?;
        child.start_kill()?;
        let _ = tokio::time::timeout(GRACEFUL_STOP_TIMEOUT, child.wait()).await;
        process.paused = false;
        process.exited = None;
        Ok(())
    }

    /// SIGTERM (after SIGCONT if paused), wait for the exit; SIGKILL after
    /// [`GRACEFUL_STOP_TIMEOUT`]. Returns how the process ended.
    pub async fn stop(&mut self, node: u64) -> anyhow::Result<String> {
        if self.node(node)?.paused {
            self.resume(node)?;
        }
        self.signal(node, "-TERM")?;
        self.forget_admin_client(node);
        let process = self.node_mut(node)?;
        process.exited = None;
        let mut child = process
            .child
            .take()
            .with_context(|| format!("node {node} is not running"))?;
        match tokio::time::timeout(GRACEFUL_STOP_TIMEOUT, child.wait()).await {
            Ok(Ok(status)) => Ok(format!("exited: {status}")),
            Ok(Err(error)) => Ok(format!("wait failed: {error}")),
            Err(_) => {
                child.start_kill()?;
                let _ = tokio::time::timeout(GRACEFUL_STOP_TIMEOUT, child.wait()).await;
                Ok(format!(
                    "did not stop within {GRACEFUL_STOP_TIMEOUT:?} of SIGTERM; killed"
                ))
            }
        }
    }

    /// SIGSTOP.
    pub fn pause(&mut self, node: u64) -> anyhow::Result<()> {
        self.signal(node, "-STOP")?;
        self.node_mut(node)?.paused = true;
        Ok(())
    }

    /// SIGCONT.
    pub fn resume(&mut self, node: u64) -> anyhow::Result<()> {
        self.signal(node, "-CONT")?;
        self.node_mut(node)?.paused = false;
        Ok(())
    }

    /// Whether partitions are possible (namespace mode with more than one node).
    pub fn can_partition(&self) -> bool {
        self.network.is_some() && self.nodes.len() > 1
    }

    /// Cuts `node` off from the other nodes (the harness still reaches it).
    pub fn partition(&mut self, node: u64) -> anyhow::Result<()> {
        let index = self.node_index(node)?;
        let network = self
            .network
            .as_ref()
            .context("partitions need network namespaces")?;
        network.partition(index)?;
        self.node_mut(node)?.partitioned = true;
        Ok(())
    }

    /// Makes `node`'s gRPC server deaf to `from` (its calls are reset), while `node`'s own
    /// calls to `from`, and everything between `node` and the other nodes, still work: `node`
    /// falls behind every group `from` leads, yet can still ask `from`.
    /// [`heal_partition`](Self::heal_partition) ends it.
    pub fn deafen_grpc(&mut self, node: u64, from: u64) -> anyhow::Result<()> {
        let index = self.node_index(node)?;
        let from_index = self.node_index(from)?;
        let port = self.node(node)?.endpoints.grpc.port();
        let network = self
            .network
            .as_ref()
            .context("a deaf gRPC port needs network namespaces")?;
        network.refuse_port(index, port, from_index)?;
        self.node_mut(node)?.partitioned = true;
        Ok(())
    }

    pub fn heal_partition(&mut self, node: u64) -> anyhow::Result<()> {
        let index = self.node_index(node)?;
        let network = self
            .network
            .as_ref()
            .context("partitions need network namespaces")?;
        network.heal(index)?;
        self.node_mut(node)?.partitioned = false;
        Ok(())
    }

    /// Notes processes that exited on their own (without reaping them).
    fn poll_exits(&mut self) {
        for process in &mut self.nodes {
            if process.exited.is_some() {
                continue;
            }
            let Some(child) = &mut process.child else {
                continue;
            };
            match child.try_wait() {
                Ok(Some(status)) => process.exited = Some(status.to_string()),
                Ok(None) => {}
                Err(error) => process.exited = Some(format!("wait failed: {error}")),
            }
        }
    }

    /// Nodes whose process exited without being told to, with how; they are marked stopped.
    pub fn reap_unexpected_exits(&mut self) -> Vec<(u64, String)> {
        self.poll_exits();
        let mut exited = Vec::new();
        for process in &mut self.nodes {
            if let Some(status) = process.exited.take() {
                exited.push((process.endpoints.id, status));
                process.child = None;
                process.paused = false;
            }
        }
        exited
    }

    /// Whether `node` has a live (possibly paused) process.
    pub fn is_running(&self, node: u64) -> bool {
        self.node(node).is_ok_and(|process| process.child.is_some())
    }

    /// The last [`LOG_TAIL_LINES`] lines of `node`'s log without terminal colour codes (for
    /// error messages).
    pub fn log_tail(&self, node: u64) -> String {
        let Ok(process) = self.node(node) else {
            return String::new();
        };
        let text = std::fs::read_to_string(&process.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(LOG_TAIL_LINES);
        lines
            .get(start..)
            .unwrap_or_default()
            .iter()
            .map(|line| strip_ansi_escapes(line))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn forget_admin_client(&self, node: u64) {
        if let Ok(mut clients) = self.admin_clients.lock() {
            clients.remove(&node);
        }
    }

    fn cached_admin_client(&self, node: u64) -> Option<AdminClient> {
        self.admin_clients
            .lock()
            .ok()
            .and_then(|clients| clients.get(&node).cloned())
    }

    fn cache_admin_client(&self, node: u64, client: AdminClient) {
        if let Ok(mut clients) = self.admin_clients.lock() {
            clients.insert(node, client);
        }
    }

    /// An admin client for `node` (cached; connected with [`ADMIN_CONNECT_TIMEOUT`]).
    pub async fn admin_client(&self, node: u64) -> anyhow::Result<AdminClient> {
        if let Some(client) = self.cached_admin_client(node) {
            return Ok(client);
        }
        let address = self.node(node)?.endpoints.grpc.to_string();
        let client = connect_admin(&address, &self.certs_dir).await?;
        self.cache_admin_client(node, client.clone());
        Ok(client)
    }

    /// Probes every node once (concurrently): health endpoints and the leaders it sees.
    pub async fn probe(&self) -> ClusterProbe {
        self.probe_nodes(&self.node_ids()).await
    }

    /// The leader of the first group when every node other than `excluded` answers and names
    /// the same one (the faulty node is left out so that its timeouts do not slow the
    /// measurement down).
    pub async fn leader_excluding(&self, excluded: u64) -> Option<u64> {
        let others: Vec<u64> = self
            .node_ids()
            .into_iter()
            .filter(|node| *node != excluded)
            .collect();
        self.probe_nodes(&others).await.agreed_leader
    }

    /// Probes `node_ids` once (concurrently) and judges them as if they were the cluster.
    async fn probe_nodes(&self, node_ids: &[u64]) -> ClusterProbe {
        let mut probes = tokio::task::JoinSet::new();
        for process in self
            .nodes
            .iter()
            .filter(|process| node_ids.contains(&process.endpoints.id))
        {
            let id = process.endpoints.id;
            let endpoints = process.endpoints.clone();
            let peers = Arc::clone(&self.peers);
            let running = process.child.is_some();
            probes.spawn(async move { (id, probe_node(&endpoints, running, &peers).await) });
        }
        let mut views: BTreeMap<u64, NodeProbe> = BTreeMap::new();
        while let Some(joined) = probes.join_next().await {
            if let Ok((id, probe)) = joined {
                views.insert(id, probe);
            }
        }
        judge(node_ids, &views)
    }

    /// Polls [`probe`](Self::probe) until healthy or `deadline`. `Ok(elapsed)` when healthy,
    /// `Err(last reason)` otherwise, early when a node process exited on its own (it is left
    /// for [`reap_unexpected_exits`](Self::reap_unexpected_exits) to report).
    pub async fn wait_healthy(&mut self, deadline: Instant) -> Result<Duration, String> {
        let started = Instant::now();
        loop {
            self.poll_exits();
            let exited: Vec<(u64, String)> = self
                .nodes
                .iter()
                .filter_map(|process| {
                    process
                        .exited
                        .clone()
                        .map(|status| (process.endpoints.id, status))
                })
                .collect();
            if !exited.is_empty() {
                let mut reasons = Vec::new();
                for (node, status) in exited {
                    let log = self
                        .log_path(node)
                        .map(|path| path.display().to_string())
                        .unwrap_or_default();
                    reasons.push(format!("node {node} exited ({status}; log {log})"));
                }
                return Err(reasons.join("; "));
            }
            let probe = self.probe().await;
            if probe.healthy {
                return Ok(started.elapsed());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(probe.reason);
            }
            tokio::time::sleep(CONDITION_POLL_INTERVAL.min(deadline - now)).await;
        }
    }

    /// Leader of the first group by the majority of the nodes that answered, if any.
    pub async fn leader(&self) -> Option<u64> {
        self.probe().await.majority_leader
    }

    /// Provisions `user` through any node, retrying while the write's outcome is unknown
    /// (`AlreadyExists` after a retry means the first attempt committed).
    pub async fn provision_user(
        &self,
        user: &str,
        password: &str,
        deadline: Instant,
    ) -> anyhow::Result<()> {
        let user_id =
            UserId::parse(user).map_err(|error| anyhow::anyhow!("user {user}: {error}"))?;
        let password = Password::new(password)?;
        let nodes = self.node_ids();
        let mut last_error = String::from("no attempt");
        let mut attempt = 0usize;
        while Instant::now() < deadline {
            let node = nodes[attempt % nodes.len()];
            attempt += 1;
            if !self.is_running(node) || self.node(node)?.paused {
                tokio::time::sleep(PROVISION_RETRY_INTERVAL).await;
                continue;
            }
            let client = match self.admin_client(node).await {
                Ok(client) => client,
                Err(error) => {
                    last_error = format!("node {node}: {error:#}");
                    tokio::time::sleep(PROVISION_RETRY_INTERVAL).await;
                    continue;
                }
            };
            let new_user = NewUser {
                user: user_id.clone(),
                password: password.clone(),
                messaging_enabled: true,
                digest_algorithms: Vec::new(),
            };
            match tokio::time::timeout(ADMIN_CALL_TIMEOUT, client.add_user(new_user)).await {
                Ok(Ok(()) | Err(AdminError::AlreadyExists { .. })) => return Ok(()),
                Ok(Err(AdminError::Unavailable { reason })) => {
                    last_error = format!("node {node}: unavailable: {reason}");
                }
                Ok(Err(error)) => bail!("adding user {user} on node {node}: {error}"),
                Err(_) => {
                    self.forget_admin_client(node);
                    last_error = format!("node {node}: no answer within {ADMIN_CALL_TIMEOUT:?}");
                }
            }
            tokio::time::sleep(PROVISION_RETRY_INTERVAL).await;
        }
        bail!("could not add user {user} before the deadline: {last_error}")
    }

    /// The server's state of a message, asked of every running node; the most final answer
    /// wins (`expired`/`delivered`/`failed` over `enqueued` over `not-found`), because a
    /// follower's view may lag. `unavailable` when no node answered.
    pub async fn message_state(&self, message_id: &str) -> String {
        let Some(message_id) = MessageId::parse(message_id) else {
            return "invalid-id".to_owned();
        };
        let mut best: Option<(u8, String)> = None;
        for node in self.node_ids() {
            if !self.is_running(node) {
                continue;
            }
            let Ok(client) = self.admin_client(node).await else {
                continue;
            };
            let answer =
                tokio::time::timeout(ADMIN_CALL_TIMEOUT, client.message_status(&message_id)).await;
            let (rank, state) = match answer {
                Ok(Ok(report)) => {
                    let state = report.state.as_str().to_owned();
                    let rank = if state == "enqueued" { 2 } else { 3 };
                    (rank, state)
                }
                Ok(Err(AdminError::NotFound { .. })) => (1, "not-found".to_owned()),
                Ok(Err(_)) => continue,
                Err(_) => {
                    self.forget_admin_client(node);
                    continue;
                }
            };
            if best.as_ref().is_none_or(|(best_rank, _)| rank > *best_rank) {
                best = Some((rank, state));
            }
        }
        best.map_or_else(|| "unavailable".to_owned(), |(_, state)| state)
    }

    /// Heals every fault (SIGCONT, partition rules, stopped nodes started). Used after a
    /// failed heal and on the way out.
    pub fn heal_everything(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        for node in self.node_ids() {
            let (paused, partitioned, running) = match self.node(node) {
                Ok(process) => (process.paused, process.partitioned, process.child.is_some()),
                Err(_) => continue,
            };
            if paused && let Err(error) = self.resume(node) {
                problems.push(format!("resume node {node}: {error:#}"));
            }
            if partitioned && let Err(error) = self.heal_partition(node) {
                problems.push(format!("heal partition of node {node}: {error:#}"));
            }
            if !running && let Err(error) = self.start(node) {
                problems.push(format!("start node {node}: {error:#}"));
            }
        }
        problems
    }

    /// Stops every node gracefully (SIGTERM), reporting how each ended.
    pub async fn shutdown(&mut self) -> Vec<String> {
        let mut outcomes = Vec::new();
        for node in self.node_ids() {
            if !self.is_running(node) {
                continue;
            }
            match self.stop(node).await {
                Ok(how) => outcomes.push(format!("node {node}: {how}")),
                Err(error) => outcomes.push(format!("node {node}: {error:#}")),
            }
        }
        outcomes
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for process in &mut self.nodes {
            if let Some(child) = &mut process.child {
                // SIGKILL also ends a stopped (SIGSTOP) process.
                let _ = child.start_kill();
            }
            process.child = None;
        }
        // `network` drops after this, removing the namespaces.
    }
}

/// Network namespaces when asked for and possible, else `None` (loopback); why goes to `notes`.
fn choose_network(config: &ClusterConfig, notes: &mut Vec<String>) -> Option<NetnsNetwork> {
    if !config.prefer_namespaces {
        notes.push("--no-netns: using loopback (no partitions)".to_owned());
        return None;
    }
    if !netns::namespaces_available() {
        notes.push(
            "network namespaces need root and `ip netns`; using loopback (no partitions)"
                .to_owned(),
        );
        return None;
    }
    let removed = netns::remove_leftovers();
    if !removed.is_empty() {
        notes.push(format!(
            "removed leftovers of earlier runs: {}",
            removed.join(" ")
        ));
    }
    match NetnsNetwork::create(config.run_pid, config.nodes) {
        Ok(network) => {
            notes.push(format!("network: {}", network.description()));
            Some(network)
        }
        Err(error) => {
            notes.push(format!(
                "network namespaces failed ({error:#}); using loopback (no partitions)"
            ));
            None
        }
    }
}

async fn connect_admin(address: &str, certs_dir: &Path) -> anyhow::Result<AdminClient> {
    match tokio::time::timeout(
        ADMIN_CONNECT_TIMEOUT,
        AdminClient::connect(address, certs_dir),
    )
    .await
    {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(error)) => Err(anyhow::anyhow!("admin connect to {address}: {error}")),
        Err(_) => bail!("admin connect to {address}: no answer within {ADMIN_CONNECT_TIMEOUT:?}"),
    }
}

async fn probe_node(endpoints: &NodeEndpoints, running: bool, peers: &PeerClients) -> NodeProbe {
    let mut probe = NodeProbe::default();
    if !running {
        probe.ready_detail = "not running".to_owned();
        probe.status_detail = "not running".to_owned();
        return probe;
    }
    let address = endpoints.grpc.to_string();
    let (ready, live, status) = tokio::join!(
        http_status(endpoints.http, "/readyz", HEALTH_PROBE_TIMEOUT),
        http_status(endpoints.http, "/livez", HEALTH_PROBE_TIMEOUT),
        tokio::time::timeout(
            NODE_STATUS_TIMEOUT,
            peers.node_status(&address, NODE_STATUS_TIMEOUT)
        )
    );
    probe.ready = ready == Some(200) && live == Some(200);
    if !probe.ready {
        let describe = |answer: Option<u16>| {
            answer.map_or_else(|| "no answer".to_owned(), |code| code.to_string())
        };
        probe.ready_detail = format!("/readyz {}, /livez {}", describe(ready), describe(live));
    }
    match status {
        Ok(Ok(status)) => {
            probe.leaders = Some(
                status
                    .groups
                    .iter()
                    .map(|group| (u64::from(group.group.0), group.leader))
                    .collect(),
            );
        }
        Ok(Err(error)) => probe.status_detail = format!("node status: {error}"),
        Err(_) => {
            probe.status_detail = format!("node status: no answer within {NODE_STATUS_TIMEOUT:?}");
        }
    }
    probe
}

/// Healthy when every node is ready and all report the same known leader for every group.
fn judge(node_ids: &[u64], views: &BTreeMap<u64, NodeProbe>) -> ClusterProbe {
    let mut reasons = Vec::new();
    let mut opinions: BTreeMap<u64, BTreeMap<u64, usize>> = BTreeMap::new();
    let mut groups: BTreeSet<u64> = BTreeSet::new();
    for node in node_ids {
        let Some(view) = views.get(node) else {
            reasons.push(format!("node {node}: no probe result"));
            continue;
        };
        if !view.ready {
            reasons.push(format!("node {node}: {}", view.ready_detail));
        }
        match &view.leaders {
            None => reasons.push(format!("node {node}: {}", view.status_detail)),
            Some(leaders) if leaders.is_empty() => {
                reasons.push(format!("node {node}: reports no groups"));
            }
            Some(leaders) => {
                for (group, leader) in leaders {
                    groups.insert(*group);
                    match leader {
                        Some(leader) => {
                            *opinions
                                .entry(*group)
                                .or_default()
                                .entry(*leader)
                                .or_default() += 1;
                        }
                        None => reasons.push(format!("node {node}: no leader for group {group}")),
                    }
                }
            }
        }
    }
    for group in &groups {
        let Some(opinion) = opinions.get(group) else {
            continue;
        };
        if opinion.len() > 1 {
            reasons.push(format!(
                "group {group}: nodes disagree on the leader (leader: votes) {opinion:?}"
            ));
        }
        for leader in opinion.keys() {
            if !node_ids.contains(leader) {
                reasons.push(format!(
                    "group {group}: leader {leader} is not a cluster node"
                ));
            }
        }
    }
    let first_group = groups.first().and_then(|group| opinions.get(group));
    let majority_leader = first_group.and_then(|opinion| {
        let most = opinion.values().copied().max()?;
        let mut named_most = opinion.iter().filter(|(_, votes)| **votes == most);
        let (leader, _) = named_most.next()?;
        named_most.next().is_none().then_some(*leader)
    });
    let agreed_leader = first_group.and_then(|opinion| {
        let (leader, votes) = opinion.iter().next()?;
        (opinion.len() == 1 && *votes == node_ids.len()).then_some(*leader)
    });
    ClusterProbe {
        healthy: reasons.is_empty(),
        majority_leader,
        agreed_leader,
        reason: reasons.join("; "),
    }
}

/// `text` without ANSI escape sequences (`ESC [ … letter`): pmsd colours its log lines.
fn strip_ansi_escapes(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut characters = text.chars().peekable();
    while let Some(character) = characters.next() {
        if character == '\u{1b}' && characters.peek() == Some(&'[') {
            for next in characters.by_ref() {
                if next.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        plain.push(character);
    }
    plain
}

/// Largest `/metrics` response read.
pub const METRICS_RESPONSE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Deadline of one `/metrics` scrape.
pub const METRICS_TIMEOUT: Duration = Duration::from_secs(3);

/// A node's `/metrics` text (Prometheus text format), or `None` when it did not answer within
/// [`METRICS_TIMEOUT`].
pub async fn metrics_text(address: SocketAddr) -> Option<String> {
    let fetch = async {
        let mut stream = TcpStream::connect(address).await.ok()?;
        // HTTP/1.0: no chunked transfer encoding to undo.
        let request = format!("GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut body = Vec::new();
        stream
            .take(METRICS_RESPONSE_BYTES_MAX as u64)
            .read_to_end(&mut body)
            .await
            .ok()?;
        Some(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(METRICS_TIMEOUT, fetch)
        .await
        .ok()
        .flatten()
}

/// The value of the first sample of `metrics` named exactly `name` (labels included, e.g.
/// `pms_replica_catch_ups_total{result="caught_up"}`).
pub fn sample_value(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        rest.strip_prefix(' ')?.trim().parse::<f64>().ok()
    })
}

/// `GET path` over HTTP/1.1; the status code, or `None` when there was no complete status
/// line within `timeout`.
pub async fn http_status(address: SocketAddr, path: &str, timeout: Duration) -> Option<u16> {
    let attempt = async {
        let mut stream = TcpStream::connect(address).await.ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = Vec::with_capacity(256);
        let mut chunk = [0u8; 512];
        while !head.windows(2).any(|pair| pair == b"\r\n") && head.len() < HTTP_RESPONSE_BYTES_MAX {
            let read = stream.read(&mut chunk).await.ok()?;
            if read == 0 {
                break;
            }
            head.extend_from_slice(chunk.get(..read)?);
        }
        parse_status_line(&head)
    };
    tokio::time::timeout(timeout, attempt).await.ok().flatten()
}

/// The status code of `HTTP/1.x CODE REASON`.
fn parse_status_line(head: &[u8]) -> Option<u16> {
    let line_end = head.windows(2).position(|pair| pair == b"\r\n")?;
    let line = std::str::from_utf8(head.get(..line_end)?).ok()?;
    let mut parts = line.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

fn namespace_endpoints(network: &NetnsNetwork, nodes: usize) -> anyhow::Result<Vec<NodeEndpoints>> {
    (0..nodes)
        .map(|index| {
            let ip = IpAddr::V4(
                network
                    .node_ip(index)
                    .with_context(|| format!("no address for node index {index}"))?,
            );
            Ok(NodeEndpoints {
                id: u64::try_from(index + 1)?,
                sip_tls: SocketAddr::new(ip, NETNS_PORT_SIP_TLS),
                sip: SocketAddr::new(ip, NETNS_PORT_SIP),
                grpc: SocketAddr::new(ip, NETNS_PORT_GRPC),
                http: SocketAddr::new(ip, NETNS_PORT_HTTP),
            })
        })
        .collect()
}

fn loopback_endpoints(nodes: usize) -> anyhow::Result<Vec<NodeEndpoints>> {
    let mut taken = BTreeSet::new();
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut endpoints = Vec::with_capacity(nodes);
    for index in 0..nodes {
        endpoints.push(NodeEndpoints {
            id: u64::try_from(index + 1)?,
            sip_tls: SocketAddr::new(ip, free_port(&mut taken)?),
            sip: SocketAddr::new(ip, free_port(&mut taken)?),
            grpc: SocketAddr::new(ip, free_port(&mut taken)?),
            http: SocketAddr::new(ip, free_port(&mut taken)?),
        });
    }
    Ok(endpoints)
}

/// A loopback port free for TCP and UDP, not handed out before in this run (bound and released:
/// another process could take it in between, which is unlikely on a test machine).
fn free_port(taken: &mut BTreeSet<u16>) -> anyhow::Result<u16> {
    for _ in 0..FREE_PORT_ATTEMPTS_MAX {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        if taken.contains(&port) || UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_err() {
            continue;
        }
        taken.insert(port);
        return Ok(port);
    }
    bail!("no free loopback port after {FREE_PORT_ATTEMPTS_MAX} attempts")
}

/// `pmsctl cert create-ca`, `create-node` and `create-sip` (loopback, localhost and every node
/// address) and `create-client admin` into `certs_dir`.
fn create_certificates(
    pmsctl: &Path,
    certs_dir: &Path,
    endpoints: &[NodeEndpoints],
) -> anyhow::Result<()> {
    if certs_dir.join("ca.crt").exists() {
        return Ok(());
    }
    let mut hosts: Vec<String> = vec!["127.0.0.1".into(), "localhost".into()];
    for endpoint in endpoints {
        let host = endpoint.grpc.ip().to_string();
        if !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    let certs = certs_dir.to_string_lossy().into_owned();
    let mut create_node = vec!["cert", "create-node"];
    create_node.extend(hosts.iter().map(String::as_str));
    // The SIP listeners' certificate (what the TLS user agents verify), apart from node.crt.
    let mut create_sip = vec!["cert", "create-sip"];
    create_sip.extend(hosts.iter().map(String::as_str));
    for arguments in [
        vec!["cert", "create-ca"],
        create_node,
        create_sip,
        vec!["cert", "create-client", "admin"],
    ] {
        let mut command = std::process::Command::new(pmsctl);
        command.arg("--certs-dir").arg(&certs).args(&arguments);
        command::run_command(
            command,
            &format!(
                "{} --certs-dir {certs} {}",
                pmsctl.display(),
                arguments.join(" ")
            ),
        )?;
    }
    Ok(())
}

/// Finds a binary built next to this executable: `override_path`, else `$env_var`, else the
/// directory of the current executable or its parent (tests run from `target/debug/deps`,
/// binaries live in `target/debug`).
pub fn locate_binary(
    name: &str,
    override_path: Option<&Path>,
    env_var: &str,
) -> anyhow::Result<PathBuf> {
    if let Some(path) = override_path {
        anyhow::ensure!(path.is_file(), "{} does not exist", path.display());
        return Ok(path.to_path_buf());
    }
    if let Some(path) = std::env::var_os(env_var).map(PathBuf::from) {
        anyhow::ensure!(
            path.is_file(),
            "${env_var}={} does not exist",
            path.display()
        );
        return Ok(path);
    }
    let executable = std::env::current_exe().context("locating the current executable")?;
    let mut candidates = Vec::new();
    if let Some(dir) = executable.parent() {
        candidates.push(dir.join(name));
        if let Some(parent) = dir.parent() {
            candidates.push(parent.join(name));
        }
    }
    candidates
        .iter()
        .find(|candidate| candidate.is_file())
        .cloned()
        .with_context(|| {
            format!(
                "{name} not found (looked at {candidates:?}); build it with `cargo test --workspace --no-run` or pass --{name} PATH / ${env_var}"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(ready: bool, leaders: &[(u64, Option<u64>)]) -> NodeProbe {
        NodeProbe {
            ready,
            ready_detail: if ready { String::new() } else { "down".into() },
            leaders: Some(leaders.iter().copied().collect()),
            status_detail: String::new(),
        }
    }

    #[test]
    fn the_cluster_is_healthy_only_when_all_are_ready_and_agree_on_leaders() {
        let nodes = [1, 2, 3];
        let agreed: BTreeMap<u64, NodeProbe> = nodes
            .iter()
            .map(|node| (*node, view(true, &[(1, Some(2))])))
            .collect();
        let probe = judge(&nodes, &agreed);
        assert!(probe.healthy, "{}", probe.reason);
        assert_eq!(probe.majority_leader, Some(2));
        assert_eq!(probe.agreed_leader, Some(2));

        let mut one_down = agreed.clone();
        one_down.insert(3, view(false, &[(1, Some(2))]));
        assert!(!judge(&nodes, &one_down).healthy);

        let mut disagree = agreed.clone();
        disagree.insert(1, view(true, &[(1, Some(1))]));
        let probe = judge(&nodes, &disagree);
        assert!(!probe.healthy);
        assert_eq!(
            probe.majority_leader,
            Some(2),
            "the majority view names the leader"
        );
        assert_eq!(probe.agreed_leader, None);

        let survivors = [1, 2];
        let mut split: BTreeMap<u64, NodeProbe> = BTreeMap::new();
        split.insert(1, view(true, &[(1, Some(1))]));
        split.insert(2, view(true, &[(1, Some(3))]));
        let probe = judge(&survivors, &split);
        assert_eq!(probe.majority_leader, None, "a tie names no leader");
        assert_eq!(probe.agreed_leader, None);

        let mut leaderless = agreed;
        leaderless.insert(2, view(true, &[(1, None)]));
        assert!(!judge(&nodes, &leaderless).healthy);
    }

    #[test]
    fn colour_codes_are_stripped_from_log_lines() {
        assert_eq!(
            strip_ansi_escapes("\u{1b}[2m2026\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m x"),
            "2026  WARN x"
        );
        assert_eq!(strip_ansi_escapes("plain 😀"), "plain 😀");
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            parse_status_line(b"HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(parse_status_line(b"SIP/2.0 200 OK\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 200"), None);
    }
}
