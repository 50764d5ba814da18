//! Per-node Linux network namespaces joined by a bridge, so that the nemesis can cut one node
//! off from the others with iptables while the harness (in the root namespace, on the bridge)
//! still reaches every node.
//!
//! Layout for run `R` (the harness's process id) with N nodes:
//! - namespace `pmschaos-R-n` per node n (1-based), with `lo` up and `pmsvRnN` (veth) holding
//!   `10.A.B.n/24`;
//! - the veth peers `pmsvRhN` enslaved to the bridge `pmscR` in the root namespace, which holds
//!   `10.A.B.254/24`.
//!
//! Invariants:
//! - Invariant: everything created is removed when [`NetnsNetwork`] drops (also on panic and on
//!   Ctrl-C, which drops the run future): the namespaces (their veths go with them) and the
//!   bridge. A failed setup removes what it made before returning the error.
//! - Invariant: leftovers are removed only when their run's process is gone
//!   ([`remove_leftovers`]), so two concurrent runs never tear down each other's network.
//! - Invariant: every external command runs with a bounded time (`command::COMMAND_TIMEOUT`)
//!   and its failure is reported with its stderr, never ignored silently during setup.

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context as _, bail};

use crate::command::run;

/// Prefix of every namespace this harness creates.
pub const NAMESPACE_PREFIX: &str = "pmschaos-";
/// Prefix of the bridge (interface names are at most 15 bytes: `pmsc` + a pid fits).
pub const BRIDGE_PREFIX: &str = "pmsc";
/// Prefix of the veth pairs.
pub const VETH_PREFIX: &str = "pmsv";
/// Longest Linux interface name.
pub const INTERFACE_NAME_BYTES_MAX: usize = 15;
/// Last octet of the bridge's address in the nodes' subnet.
pub const BRIDGE_HOST_OCTET: u8 = 254;
/// Most nodes one network holds (node octets 1..=NODES_MAX; veth names stay short).
pub const NODES_MAX: usize = 9;
/// Subnets tried before giving up (one per candidate `10.A.B.0/24`).
pub const SUBNET_CANDIDATES_MAX: u32 = 32;
/// Leftover namespaces and bridges removed at most per start.
pub const LEFTOVERS_MAX: usize = 256;

/// Whether this process may create namespaces: effective uid 0 and `ip netns` works.
pub fn namespaces_available() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false);
    root && run(&["ip", "netns", "list"]).is_ok()
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces and bridges of earlier runs whose process is gone, killing any process
/// still running inside such a namespace first. Returns what was removed.
pub fn remove_leftovers() -> Vec<String> {
    let mut removed = Vec::new();
    let namespaces = run(&["ip", "netns", "list"]).unwrap_or_default();
    for line in namespaces.lines().take(LEFTOVERS_MAX) {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(run_pid) = name
            .strip_prefix(NAMESPACE_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if process_alive(run_pid) {
            continue;
        }
        for pid in run(&["ip", "netns", "pids", name])
            .unwrap_or_default()
            .split_whitespace()
        {
            let _ = run(&["kill", "-KILL", pid]);
        }
        if run(&["ip", "netns", "del", name]).is_ok() {
            removed.push(name.to_owned());
        }
    }
    let links = run(&["ip", "-o", "link", "show", "type", "bridge"]).unwrap_or_default();
    for line in links.lines().take(LEFTOVERS_MAX) {
        // `7: pmsc1234: <BROADCAST,...`
        let Some(name) = line.split(':').nth(1).map(str::trim) else {
            continue;
        };
        let Some(run_pid) = name
            .strip_prefix(BRIDGE_PREFIX)
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !process_alive(run_pid) && run(&["ip", "link", "del", name]).is_ok() {
            removed.push(name.to_owned());
        }
    }
    removed
}

/// The namespaces, veths and bridge of one run.
#[derive(Debug)]
pub struct NetnsNetwork {
    bridge: String,
    /// One per node, index 0 = node 1; only those actually created.
    namespaces: Vec<String>,
    node_ips: Vec<Ipv4Addr>,
    bridge_ip: Ipv4Addr,
    bridge_created: bool,
    /// The root namespace's FORWARD rule that lets the bridge's traffic through.
    forward_rule_added: bool,
}

impl NetnsNetwork {
    /// Creates the network for `nodes` nodes of run `run_pid`.
    pub fn create(run_pid: u32, nodes: usize) -> anyhow::Result<NetnsNetwork> {
        anyhow::ensure!(
            (1..=NODES_MAX).contains(&nodes),
            "network namespaces support 1..={NODES_MAX} nodes, not {nodes}"
        );
        let bridge = format!("{BRIDGE_PREFIX}{run_pid}");
        anyhow::ensure!(
            format!("{VETH_PREFIX}{run_pid}h{nodes}").len() <= INTERFACE_NAME_BYTES_MAX,
            "interface names for run {run_pid} would exceed {INTERFACE_NAME_BYTES_MAX} bytes"
        );
        let (a, b) = free_subnet(run_pid)?;
        let mut network = NetnsNetwork {
            bridge,
            namespaces: Vec::new(),
            node_ips: (1..=nodes)
                .map(|node| Ipv4Addr::new(10, a, b, u8::try_from(node).unwrap_or(1)))
                .collect(),
            bridge_ip: Ipv4Addr::new(10, a, b, BRIDGE_HOST_OCTET),
            bridge_created: false,
            forward_rule_added: false,
        };
        // On error `network` drops here and removes what was made.
        network.build(run_pid, nodes)?;
        Ok(network)
    }

    fn build(&mut self, run_pid: u32, nodes: usize) -> anyhow::Result<()> {
        let bridge = self.bridge.clone();
        run(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        self.bridge_created = true;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", self.bridge_ip),
            "dev",
            &bridge,
        ])?;
        run(&["ip", "link", "set", &bridge, "up"])?;
        // A Docker engine sets the root namespace's FORWARD policy to DROP and has bridged
        // frames pass through iptables (br_netfilter): without this rule the nodes cannot reach
        // each other across the bridge.
        run(&[
            "iptables", "-I", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT",
        ])?;
        self.forward_rule_added = true;
        for node in 1..=nodes {
            let namespace = format!("{NAMESPACE_PREFIX}{run_pid}-{node}");
            run(&["ip", "netns", "add", &namespace])?;
            self.namespaces.push(namespace.clone());
            let host_side = format!("{VETH_PREFIX}{run_pid}h{node}");
            let node_side = format!("{VETH_PREFIX}{run_pid}n{node}");
            run(&[
                "ip", "link", "add", &host_side, "type", "veth", "peer", "name", &node_side,
            ])?;
            run(&["ip", "link", "set", &node_side, "netns", &namespace])?;
            run(&["ip", "link", "set", &host_side, "master", &bridge])?;
            run(&["ip", "link", "set", &host_side, "up"])?;
            let ip = self.node_ips[node - 1];
            let exec = |args: &[&str]| {
                let mut argv = vec!["ip", "netns", "exec", namespace.as_str()];
                argv.extend_from_slice(args);
                run(&argv)
            };
            exec(&["ip", "link", "set", "lo", "up"])?;
            exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", &node_side])?;
            exec(&["ip", "link", "set", &node_side, "up"])?;
            exec(&["iptables", "-L", "-n"])
                .context("iptables inside the namespace (needed for partitions)")?;
        }
        Ok(())
    }

    pub fn node_ip(&self, node_index: usize) -> Option<Ipv4Addr> {
        self.node_ips.get(node_index).copied()
    }

    pub fn namespace(&self, node_index: usize) -> Option<&str> {
        self.namespaces.get(node_index).map(String::as_str)
    }

    pub fn description(&self) -> String {
        format!(
            "bridge {} {}/24, namespaces {}",
            self.bridge,
            self.bridge_ip,
            self.namespaces.join(" ")
        )
    }

    /// Drops every packet between node `node_index` and the other nodes (both directions, in
    /// the node's namespace); the bridge address (the harness) stays reachable.
    pub fn partition(&self, node_index: usize) -> anyhow::Result<()> {
        let namespace = self
            .namespace(node_index)
            .with_context(|| format!("no namespace for node index {node_index}"))?;
        for (other_index, other_ip) in self.node_ips.iter().enumerate() {
            if other_index == node_index {
                continue;
            }
            let other = other_ip.to_string();
            run(&[
                "ip", "netns", "exec", namespace, "iptables", "-A", "INPUT", "-s", &other, "-j",
                "DROP",
            ])?;
            run(&[
                "ip", "netns", "exec", namespace, "iptables", "-A", "OUTPUT", "-d", &other, "-j",
                "DROP",
            ])?;
        }
        Ok(())
    }

    /// Resets every TCP segment that node `from_index` sends to `port` of node `node_index`
    /// (in the receiving node's namespace): that server goes deaf to that node alone, and the
    /// sender notices at once, while the receiving node's own outgoing connections keep working
    /// (their answers arrive on other ports). [`heal`](Self::heal) removes it.
    pub fn refuse_port(
        &self,
        node_index: usize,
        port: u16,
        from_index: usize,
    ) -> anyhow::Result<()> {
        let namespace = self
            .namespace(node_index)
            .with_context(|| format!("no namespace for node index {node_index}"))?;
        let from = self
            .node_ip(from_index)
            .with_context(|| format!("no address for node index {from_index}"))?
            .to_string();
        run(&[
            "ip",
            "netns",
            "exec",
            namespace,
            "iptables",
            "-A",
            "INPUT",
            "-s",
            &from,
            "-p",
            "tcp",
            "--dport",
            &port.to_string(),
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ])?;
        Ok(())
    }

    /// Removes the partition rules of node `node_index`.
    pub fn heal(&self, node_index: usize) -> anyhow::Result<()> {
        let namespace = self
            .namespace(node_index)
            .with_context(|| format!("no namespace for node index {node_index}"))?;
        run(&["ip", "netns", "exec", namespace, "iptables", "-F", "INPUT"])?;
        run(&["ip", "netns", "exec", namespace, "iptables", "-F", "OUTPUT"])?;
        Ok(())
    }
}

impl Drop for NetnsNetwork {
    fn drop(&mut self) {
        for namespace in &self.namespaces {
            for pid in run(&["ip", "netns", "pids", namespace])
                .unwrap_or_default()
                .split_whitespace()
            {
                let _ = run(&["kill", "-KILL", pid]);
            }
            let _ = run(&["ip", "netns", "del", namespace]);
        }
        if self.forward_rule_added {
            let _ = run(&[
                "iptables",
                "-D",
                "FORWARD",
                "-i",
                &self.bridge,
                "-o",
                &self.bridge,
                "-j",
                "ACCEPT",
            ]);
        }
        if self.bridge_created {
            let _ = run(&["ip", "link", "del", &self.bridge]);
        }
    }
}

/// A `10.A.B.0/24` no interface of this machine already uses, derived from the run's pid.
fn free_subnet(run_pid: u32) -> anyhow::Result<(u8, u8)> {
    let addresses = run(&["ip", "-o", "-4", "addr", "show"]).unwrap_or_default();
    for attempt in 0..SUBNET_CANDIDATES_MAX {
        let mixed = run_pid.wrapping_add(attempt.wrapping_mul(7919));
        let a = 200 + u8::try_from((mixed / 256) % 50).unwrap_or(0);
        let b = u8::try_from(mixed % 256).unwrap_or(0);
        if !addresses.contains(&format!(" 10.{a}.{b}.")) {
            return Ok((a, b));
        }
    }
    bail!("no free 10.x.y.0/24 subnet after {SUBNET_CANDIDATES_MAX} candidates")
}
