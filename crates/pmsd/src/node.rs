//! Wiring of one node: storage, replication (openraft over the gRPC network to `--peers`), the
//! gRPC server (Raft, forwarding, deliveries, admin) and HTTP endpoints, then — once the group
//! has a leader — the SIP edge; stopped in reverse on SIGTERM/SIGINT. SIGHUP reloads
//! `node.crt` and `sip.crt` (see `certificates`).
//!
//! Runtimes: one multi-thread tokio runtime drives everything; the actix System runs its
//! arbiter on the runtime's main thread (`System::with_tokio_rt`), so actors (sessions,
//! mailboxes, expiry) live there, while openraft, RocksDB, TLS handshakes, socket reads and
//! writes, tonic and the HTTP server run on tokio's worker threads.
//!
//! Invariant: SIP listeners open only after the group has a leader and stale bindings of earlier
//! incarnations are removed; they close first on shutdown, and in-flight transactions finish
//! (bounded by `DRAIN_TIMEOUT`) before Raft and RocksDB are flushed and stopped.
//! Invariant: the SIP TLS listener presents `sip.crt`, never `node.crt` (the cluster identity,
//! shown only on the gRPC port); a node without `sip.crt` whose certs dir cannot make one (no
//! `ca.key`) refuses to start and says what to do.
//! Invariant: a stop requested at any point of start-up (SIGTERM/SIGINT, see `signals`) is
//! honoured at the next wait: every wait of start-up (a leader, a snapshot, the cluster's
//! answers) gives way to it, and what already runs is stopped and flushed before `run`
//! returns `Ok`, so the process exits 0 instead of being killed or ignoring the signal.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix::Actor;
use anyhow::Context as _;
use pms_edge::listeners::{EdgeListeners, start as start_listeners};
use pms_edge::mailbox::{ExpiryActor, MailboxSupervisorActor};
use pms_edge::{EdgeConfig, SipService, keyring::Keyring};
use pms_mailbox::{Command, MailboxService, query};
use pms_replication::{GroupConfig, Replication};
use pms_storage::{RocksStore, Store};
use pms_transport::{ClusterIdentity, GrpcNetworkFactory, LeaderContacts, PeerClients};
use pms_types::metrics::Metrics;
use pms_types::{Clock, GroupId, SystemClock};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::backends::{AdminApi, ReplicatedMailboxes};
use crate::certificates::{NodeCertificates, reload_on_request};
use crate::cluster::{ClusterRouter, EdgeFlowDelivery, GrpcRemoteFlows, wake_on_apply};
use crate::config::Config;
use crate::http::{HttpState, serve_http};
use crate::signals::{ReloadRequested, StopRequested};

/// The file in the data dir that records the mailbox group count fixed at bootstrap.
pub const MAILBOX_GROUPS_FILE: &str = "mailbox-groups";
/// How long shutdown waits for in-flight SIP transactions.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long startup waits for a leader before it says so in the log (and waits again).
const LEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How often startup retries its first command while the cluster settles.
const STARTUP_PROPOSE_TRIES_MAX: u32 = 30;

/// What the log says when a stop requested during start-up was carried out.
const STOPPED_BEFORE_SERVING: &str =
    "stopped cleanly before serving: a stop was requested during start-up";

/// Runs the node until `stop` is requested (SIGTERM or SIGINT), reloading its certificates at
/// every `reload` (SIGHUP). Must run inside the actix System.
pub async fn run(
    config: Config,
    stop: StopRequested,
    reload: ReloadRequested,
) -> anyhow::Result<()> {
    let members = initial_members(&config)?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    // Invariant: the data dir is the node's alone (0700), also when it existed before.
    std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| {
            format!(
                "making data dir {} private (0700)",
                config.data_dir.display()
            )
        })?;
    // Invariant: a data dir serves only the node it was first started as (before anything in
    // it is opened or generated).
    let recorded_cluster = crate::identity::check_node(&config.data_dir, config.node_id)?;
    prepare_certificates(&config)?;
    let metrics = Arc::new(Metrics::new());
    let certificates = Arc::new(NodeCertificates::load(&config.certs_dir, metrics.clone())?);
    tokio::spawn(reload_on_request(certificates.clone(), reload));
    if config.allows_md5() {
        info!(
            "digest policy allows MD5 for clients that cannot do SHA-256 (--digest-algorithms sha256 refuses it)"
        );
    }
    // Invariant: only a node that starts a cluster alone may generate a master key; a member
    // of a larger cluster generating its own would seal what no other node can open.
    let alone = !config.join && members.keys().all(|node| *node == config.node_id.0);
    if !alone && !config.master_key_file.exists() {
        let path = config.master_key_file.display();
        anyhow::bail!(
            "master key file {path} does not exist, and this node is one of several (--peers or --join): every node of a cluster needs the same master key. Copy the cluster's key file to {path} (chmod 600), or point --master-key-file at it; a new cluster's key is made once with `pmsctl cert create-master-key FILE`"
        );
    }
    if config.master_key_file_given && !config.master_key_file.exists() {
        let path = config.master_key_file.display();
        anyhow::bail!(
            "master key file {path} does not exist. It was given (--master-key-file, PMS_MASTER_KEY_FILE or master_key_file), so it is never generated: if it is a mounted secret (Kubernetes), check that the secret exists and is mounted at {path}; a new cluster's key is made once with `pmsctl cert create-master-key {path}`. Only the development default (<data-dir>/master.key, no option given) is generated"
        );
    }
    let (master_key, created) = pms_crypto::MasterKey::load_or_create(&config.master_key_file)
        .with_context(|| format!("master key {}", config.master_key_file.display()))?;
    if created {
        warn!(
            path = %config.master_key_file.display(),
            "DEVELOPMENT ONLY: generated a new master key next to the data. Production keeps the master key away from the data dir (--master-key-file on a secret mount)."
        );
    } else if pms_crypto::permissions_too_open(&config.master_key_file) {
        let path = config.master_key_file.display();
        anyhow::bail!(
            "master key file {path} is readable by group or others: make it private with `chmod 600 {path}` (on Kubernetes, copy it from its Secret into a file only the pms user can read, as deploy/helm/pms does in an init container: a mounted Secret is group-readable once fsGroup is set), then start again"
        );
    }
    let previous_master_key = load_previous_master_key(&config)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store: Arc<dyn Store> = Arc::new(
        RocksStore::open(config.data_dir.join("db"))
            .with_context(|| format!("opening RocksDB in {}", config.data_dir.display()))?,
    );
    let cluster_identity = Arc::new(ClusterIdentity::new(recorded_cluster.clone()));
    let peers = Arc::new(
        PeerClients::new(&config.certs_dir)
            .context("loading the node certificate for peers")?
            .with_node_certificate(certificates.node.clone())
            .with_identity(cluster_identity.clone()),
    );
    let leader_contacts: Arc<LeaderContacts> = peers.contacts().clone();
    check_mailbox_groups(&config)?;
    let groups: Vec<GroupId> = std::iter::once(GroupId::DIRECTORY)
        .chain((1..=config.mailbox_groups).map(GroupId))
        .collect();
    if stop.is_requested() {
        // Nothing but the store is open yet.
        store.persist_memory().context("flushing RocksDB")?;
        info!("{STOPPED_BEFORE_SERVING}");
        return Ok(());
    }
    if config.force_new_cluster {
        force_new_cluster(&*store, &groups, &config)?;
    }
    let replication = Arc::new(
        Replication::open(
            config.node_id.0,
            store.clone(),
            &groups,
            config.mailbox_groups,
            |group| GrpcNetworkFactory::new(group, peers.clone()),
            &GroupConfig {
                snapshot_logs_since_last: config.raft_snapshot_logs,
                logs_kept_after_snapshot: config.raft_logs_kept,
                ..GroupConfig::default()
            },
        )
        .await
        .context("opening the Raft group")?,
    );
    if recorded_cluster.is_none() {
        // A data dir from before identity files: its directory replica may know the cluster.
        adopt_replicated_cluster_id(&replication, &cluster_identity, &config)?;
    }
    // The address other nodes reach this one at: its entry in --peers, else --grpc.
    let grpc_address = members
        .get(&config.node_id.0)
        .cloned()
        .unwrap_or_else(|| config.grpc.to_string());
    if config.join {
        info!(node = %config.node_id, address = %grpc_address, "joining an existing cluster: waiting for `pmsctl cluster add-node`");
    } else {
        replication
            .initialize(&members)
            .await
            .context("bootstrapping the Raft group")?;
    }
    if stop.is_requested() {
        replication.shutdown().await;
        store.persist_memory().context("flushing RocksDB")?;
        info!("{STOPPED_BEFORE_SERVING}");
        return Ok(());
    }
    let router = Arc::new(ClusterRouter::new(replication.clone(), peers.clone()));
    let mut keyring = Keyring::new(master_key, metrics.clone());
    if let Some(previous) = previous_master_key {
        keyring = keyring.with_previous(previous);
    }
    let keyring = Arc::new(keyring);
    tokio::spawn(crate::shred::shred_removed_accounts(
        replication.clone(),
        keyring.clone(),
        metrics.clone(),
        config.data_dir.join(crate::shred::SHRED_PENDING_FILE),
    ));

    // The gRPC server (Raft, forwarding, deliveries, admin) starts before this node waits for a
    // leader: the other nodes need it to elect one.
    let (shutdown_sender, shutdown) = watch::channel(false);
    let flow_delivery = Arc::new(EdgeFlowDelivery::default());
    let admin = Arc::new(AdminApi {
        replication: replication.clone(),
        router: router.clone(),
        keyring: keyring.clone(),
        realm: config.domain.clone(),
        grpc_address: grpc_address.clone(),
        clock: clock.clone(),
        digest_algorithms: config.digest_algorithms.clone(),
        data_dir: config.data_dir.clone(),
        node_id: config.node_id,
    });
    let grpc_server = pms_transport::AdminServer::bind_with_certificate(
        config.grpc,
        &config.certs_dir,
        certificates.node.clone(),
        admin,
    )
    .await
    .context("binding the gRPC port")?
    .with_metrics(metrics.clone())
    .with_service(pms_transport::internal_service(
        config.node_id,
        grpc_address.clone(),
        replication.clone(),
        flow_delivery.clone(),
        pms_transport::InternalShared {
            identity: cluster_identity.clone(),
            contacts: leader_contacts.clone(),
            master_key_fingerprint: keyring.current().fingerprint(),
        },
    ));
    let grpc_task = tokio::spawn(grpc_server.serve(wait_for(shutdown.clone())));

    let draining = Arc::new(AtomicBool::new(false));
    // Set once this node's master key and cluster id matched the cluster's.
    let identity_verified = Arc::new(AtomicBool::new(false));
    // Set once the SIP listeners accept: ready means phones can be served.
    let serving = Arc::new(AtomicBool::new(false));
    let http_state = Arc::new(HttpState {
        metrics: metrics.clone(),
        ready: {
            let replication = replication.clone();
            let draining = draining.clone();
            let serving = serving.clone();
            let identity_verified = identity_verified.clone();
            let leader_contacts = leader_contacts.clone();
            // Invariant: ready = listeners up, master key and cluster id verified, and every
            // group has this node as a member and a leader it heard from recently (a leader
            // that lost its quorum, or a dead one a follower still names, is not enough).
            Box::new(move || {
                serving.load(Ordering::Relaxed)
                    && identity_verified.load(Ordering::Relaxed)
                    && !draining.load(Ordering::Relaxed)
                    && replication.groups().all(|group| {
                        group.is_member()
                            && group.fatal_error().is_none()
                            && leader_contacts.leader_reachable(group)
                    })
            })
        },
        live: {
            let replication = replication.clone();
            Box::new(move || {
                replication
                    .groups()
                    .all(|group| group.fatal_error().is_none())
            })
        },
    });
    let http_listener = TcpListener::bind(config.http)
        .await
        .with_context(|| format!("binding HTTP {}", config.http))?;
    let http_task = tokio::spawn(serve_http(
        http_listener,
        http_state,
        wait_for(shutdown.clone()),
    ));

    // The ways out of start-up once the servers run: stop what started (gRPC, HTTP, the
    // groups), flush RocksDB, then return `error` (a step failed) or `Ok` (a stop was
    // requested).
    macro_rules! stop_and_return {
        ($result:expr $(, $then:expr)?) => {{
            stop_before_serving(
                &shutdown_sender,
                grpc_task,
                http_task,
                &replication,
                &*store,
            )
            .await?;
            $($then;)?
            return $result;
        }};
    }
    macro_rules! stop_and_fail {
        ($error:expr) => {
            stop_and_return!(Err($error))
        };
    }
    macro_rules! stop_cleanly {
        () => {
            stop_and_return!(Ok(()), info!("{STOPPED_BEFORE_SERVING}"))
        };
    }

    info!(node = %config.node_id, members = members.len(), groups = groups.len(), "waiting for a Raft leader of every group");
    match stop.unless_requested(wait_for_leaders(&replication)).await {
        Some(leaders) => leaders?,
        None => stop_cleanly!(),
    }
    if config.force_new_cluster {
        // Nodes added later catch up from a snapshot: it must cover everything kept.
        for group in replication.groups() {
            let Some(snapshot) = stop
                .unless_requested(group.snapshot_now(FORCED_SNAPSHOT_TIMEOUT))
                .await
            else {
                stop_cleanly!()
            };
            snapshot.with_context(|| {
                format!("snapshot of group {} after --force-new-cluster", group.id())
            })?;
        }
        warn!(
            "--force-new-cluster done: this node is the only member of every group; add the others with `pmsctl cluster add-node`, and start this node without the flag from now on"
        );
    }
    crate::node_metrics::install(&replication, &metrics);
    tokio::spawn(spread_leaders(replication.clone()));

    let incarnation: u64 = rand::random();
    let mailboxes: Arc<dyn MailboxService> = Arc::new(ReplicatedMailboxes {
        replication: replication.clone(),
        router: router.clone(),
    });
    match stop
        .unless_requested(check_master_key(&*mailboxes, &keyring, &config))
        .await
    {
        Some(Ok(())) => {}
        Some(Err(error)) => stop_and_fail!(error),
        None => stop_cleanly!(),
    }
    let cluster_id = match stop
        .unless_requested(agree_on_cluster_id(&*mailboxes, &cluster_identity, &config))
        .await
    {
        Some(Ok(cluster_id)) => cluster_id,
        Some(Err(error)) => stop_and_fail!(error),
        None => stop_cleanly!(),
    };
    info!(cluster = %cluster_id, node = %config.node_id, "cluster identity recorded in the data dir");
    identity_verified.store(true, Ordering::Relaxed);
    // Connections of an earlier run are gone: their bindings must not attract deliveries.
    for group in (1..=config.mailbox_groups).map(GroupId) {
        let unbound = stop
            .unless_requested(unbind_stale_flows(
                &*mailboxes,
                group,
                config.node_id,
                incarnation,
            ))
            .await;
        match unbound {
            Some(Ok(())) => {}
            Some(Err(error)) => stop_and_fail!(error),
            None => stop_cleanly!(),
        }
    }

    let mut edge_config = edge_config(&config, incarnation);
    // Every node of the cluster (and every restart) verifies the same nonces.
    edge_config.digest_secret = Some(keyring.master().derive_secret("sip-digest-nonce"));
    let service = Arc::new(SipService::new(
        edge_config,
        mailboxes.clone(),
        keyring.clone(),
        metrics.clone(),
        clock.clone(),
    ));
    let supervisor = MailboxSupervisorActor::new(service.clone()).start();
    service.set_supervisor(supervisor);
    service.set_remote_flows(Arc::new(GrpcRemoteFlows {
        replication: replication.clone(),
        peers: peers.clone(),
    }));
    let _ = flow_delivery.service.set(service.clone());
    let _expiry = ExpiryActor::new(service.clone()).start();
    tokio::spawn(crate::node_metrics::report_storage(
        store.clone(),
        replication.clone(),
        config.data_dir.clone(),
        metrics.clone(),
    ));
    tokio::spawn(crate::prune::prune_on_schedule(
        replication.clone(),
        mailboxes.clone(),
        clock.clone(),
        crate::prune::PruneSchedule {
            interval: Duration::from_secs(config.prune_interval_secs),
            dedup_retention: Duration::from_secs(config.dedup_retention_secs),
            status_retention: Duration::from_secs(config.status_retention_secs),
        },
    ));
    for group in (1..=config.mailbox_groups).map(GroupId) {
        tokio::spawn(wake_on_apply(replication.clone(), group, service.clone()));
    }

    let listeners = match bind_sip_listeners(&config, &certificates).await {
        Ok(listeners) => listeners,
        Err(error) => {
            // A busy port or a bad certificate: stop what started, cleanly, and say why.
            stop_and_fail!(error)
        }
    };
    start_listeners(listeners, service.clone(), shutdown.clone());
    serving.store(true, Ordering::Relaxed);
    let listening = |address: Option<std::net::SocketAddr>| {
        address.map_or_else(|| "off".to_owned(), |address| address.to_string())
    };
    if config.sip_tcp.is_none() && config.sip_udp.is_none() {
        info!("SIP over TLS only: the TCP and UDP listeners are off");
    } else {
        warn!(
            sip_tcp = %listening(config.sip_tcp),
            sip_udp = %listening(config.sip_udp),
            "plaintext SIP listeners are on: requests and messages on them cross the network in clear (--sip-tcp off --sip-udp off for TLS only)"
        );
    }
    if config.allow_plaintext_delivery {
        warn!(
            "--allow-plaintext-delivery: messages that arrived over TLS may be delivered over TCP or UDP in clear"
        );
    }

    info!(
        node = %config.node_id,
        sip_tls = %config.sip_tls,
        sip_tcp = %listening(config.sip_tcp),
        sip_udp = %listening(config.sip_udp),
        allow_plaintext_delivery = config.allow_plaintext_delivery,
        grpc = %config.grpc,
        http = %config.http,
        domain = %config.domain,
        "pmsd ready"
    );
    stop.requested().await;

    info!("shutting down: no new connections, draining in-flight transactions");
    draining.store(true, Ordering::Relaxed);
    let _ = shutdown_sender.send(true);
    service.drain(DRAIN_TIMEOUT).await;
    hand_over_leadership(&replication).await;
    let _ = grpc_task.await;
    let _ = http_task.await;
    replication.shutdown().await;
    store.persist_memory().context("flushing RocksDB")?;
    info!("stopped cleanly");
    Ok(())
}

/// Binds the SIP listeners: TLS always (presenting `sip.crt` as `certificates` holds it at each
/// handshake), TCP and UDP unless `off`.
async fn bind_sip_listeners(
    config: &Config,
    certificates: &NodeCertificates,
) -> anyhow::Result<EdgeListeners> {
    let tls_config = pms_crypto::sip_server_config_with(certificates.sip.clone())
        .context("SIP TLS certificate (sip.crt, sip.key)")?;
    // Invariant: TLS always listens; TCP and UDP only when configured (`off` turns them off).
    let tcp = match config.sip_tcp {
        Some(address) => Some(
            TcpListener::bind(address)
                .await
                .with_context(|| format!("binding SIP TCP {address}"))?,
        ),
        None => None,
    };
    let udp = match config.sip_udp {
        Some(address) => Some(
            UdpSocket::bind(address)
                .await
                .with_context(|| format!("binding SIP UDP {address}"))?,
        ),
        None => None,
    };
    Ok(EdgeListeners {
        tls: Some((
            TcpListener::bind(config.sip_tls)
                .await
                .with_context(|| format!("binding SIP TLS {}", config.sip_tls))?,
            tokio_rustls::TlsAcceptor::from(tls_config),
        )),
        tcp,
        udp,
    })
}

/// Stops what `run` started before the SIP edge serves (the gRPC and HTTP servers, the
/// groups) and flushes RocksDB: the way out of a start-up that fails or is interrupted, so
/// the process exits with its error instead of tearing running tasks down in a panic.
async fn stop_before_serving<G, H>(
    shutdown: &watch::Sender<bool>,
    grpc_task: tokio::task::JoinHandle<G>,
    http_task: tokio::task::JoinHandle<H>,
    replication: &Replication,
    store: &dyn Store,
) -> anyhow::Result<()> {
    let _ = shutdown.send(true);
    let _ = grpc_task.await;
    let _ = http_task.await;
    replication.shutdown().await;
    store.persist_memory().context("flushing RocksDB")
}

/// The initial members of every group: `--peers` (which must name this node), or this node
/// alone at its `--grpc` address.
fn initial_members(config: &Config) -> anyhow::Result<BTreeMap<u64, String>> {
    if config.peers.is_empty() {
        return Ok(BTreeMap::from([(
            config.node_id.0,
            config.grpc.to_string(),
        )]));
    }
    let members: BTreeMap<u64, String> = config
        .peers
        .iter()
        .map(|peer| (peer.node_id.0, peer.grpc_address.clone()))
        .collect();
    anyhow::ensure!(
        members.contains_key(&config.node_id.0),
        "--peers does not name this node (--node-id {}): list every initial member, this one included",
        config.node_id
    );
    Ok(members)
}

/// Waits until every group has a leader, however long the other nodes take to come up.
async fn wait_for_leaders(replication: &Replication) -> anyhow::Result<()> {
    for group in replication.groups() {
        loop {
            match group.wait_for_leader(LEADER_TIMEOUT).await {
                Ok(_) => break,
                Err(pms_replication::ReplicationError::NoLeader { .. }) => {
                    warn!(group = %group.id(), "no Raft leader yet: is a majority of --peers running and reachable?");
                }
                Err(error) => return Err(error).context("waiting for a Raft leader"),
            }
        }
    }
    Ok(())
}

/// How often a leader looks whether another member should lead one of its groups.
const LEADER_SPREAD_INTERVAL: Duration = Duration::from_secs(5);

/// Spreads group leadership over the voters: the preferred leader of group `g` is the voter
/// at position `g mod voters` (by id). A leader hands a group over only to a preferred voter
/// that has replicated its whole log, so no write waits for a lagging node.
async fn spread_leaders(replication: Arc<Replication>) {
    let mut interval = tokio::time::interval(LEADER_SPREAD_INTERVAL);
    loop {
        interval.tick().await;
        for group in replication.groups() {
            let status = group.status();
            if status.role != pms_replication::GroupRole::Leader {
                continue;
            }
            let voters: Vec<&pms_replication::GroupMember> = status
                .members
                .iter()
                .filter(|member| member.voter)
                .collect();
            let Some(preferred) = usize::try_from(group.id().0)
                .ok()
                .and_then(|index| voters.get(index % voters.len().max(1)))
            else {
                continue;
            };
            let caught_up = preferred.matched_index.is_some()
                && preferred.matched_index == status.last_log_index;
            if preferred.node != replication.node_id() && caught_up {
                info!(group = %group.id(), to = preferred.node, "handing leadership to the group's preferred leader");
                group.transfer_leadership(preferred.node).await;
            }
        }
    }
}

/// How long a stopping node waits for the groups it leads to elect another leader.
const HAND_OVER_WAIT: Duration = Duration::from_secs(3);

/// Before a clean stop, hands every group this node leads to the voter that has replicated
/// most of it, so the cluster does not wait an election timeout for a new leader.
async fn hand_over_leadership(replication: &Replication) {
    let deadline = tokio::time::Instant::now() + HAND_OVER_WAIT;
    let mut handed_over = Vec::new();
    for group in replication.groups() {
        let status = group.status();
        if status.role != pms_replication::GroupRole::Leader {
            continue;
        }
        let successor = status
            .members
            .iter()
            .filter(|member| member.voter && member.node != replication.node_id())
            .max_by_key(|member| member.matched_index);
        if let Some(successor) = successor {
            group.transfer_leadership(successor.node).await;
            handed_over.push(group.id());
        }
    }
    while tokio::time::Instant::now() < deadline
        && handed_over.iter().any(|group| {
            replication
                .group(*group)
                .is_some_and(|group| group.is_leader())
        })
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Refuses to start with a mailbox group count other than the one this data dir was
/// bootstrapped with (users would hash to other groups and their mailboxes would vanish).
fn check_mailbox_groups(config: &Config) -> anyhow::Result<()> {
    let path = config.data_dir.join(MAILBOX_GROUPS_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let recorded: u32 = text
                .trim()
                .parse()
                .with_context(|| format!("{} is not a number", path.display()))?;
            anyhow::ensure!(
                recorded == config.mailbox_groups,
                "this data dir was bootstrapped with --mailbox-groups {recorded}, not {}; the count cannot change",
                config.mailbox_groups
            );
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(&path, format!("{}\n", config.mailbox_groups))
                .with_context(|| format!("writing {}", path.display()))
        }
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

/// How long the snapshot after `--force-new-cluster` may take per group.
const FORCED_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Makes this node the only member of every group of its data dir (`--force-new-cluster`),
/// saying per group what it kept and what it dropped.
fn force_new_cluster(store: &dyn Store, groups: &[GroupId], config: &Config) -> anyhow::Result<()> {
    let address = config
        .peers
        .iter()
        .find(|peer| peer.node_id == config.node_id)
        .map_or_else(|| config.grpc.to_string(), |peer| peer.grpc_address.clone());
    for group in groups {
        let forced = pms_replication::recovery::force_single_member(
            store,
            *group,
            config.node_id.0,
            &address,
        )
        .with_context(|| format!("--force-new-cluster on group {group}"))?;
        warn!(
            group = %forced.group,
            previous_members = ?forced.previous_members,
            kept_up_to_index = ?forced.last_applied_index,
            dropped_unapplied_entries = forced.dropped_entries,
            "--force-new-cluster: this node is now the group's only member"
        );
    }
    Ok(())
}

/// `--previous-master-key-file`, loaded (it must exist and be private), if given.
fn load_previous_master_key(config: &Config) -> anyhow::Result<Option<pms_crypto::MasterKey>> {
    let Some(path) = &config.previous_master_key_file else {
        return Ok(None);
    };
    let shown = path.display();
    if !path.exists() {
        anyhow::bail!(
            "previous master key file {shown} does not exist: give --previous-master-key-file only during a master-key rotation, pointing at the cluster's old key file (docs/operations.md, \"Master-key rotation\")"
        );
    }
    if pms_crypto::permissions_too_open(path) {
        anyhow::bail!(
            "previous master key file {shown} is readable by group or others: make it private with `chmod 600 {shown}`, then start again"
        );
    }
    let key = pms_crypto::MasterKey::from_file(path)
        .with_context(|| format!("previous master key {shown}"))?;
    Ok(Some(key))
}

/// Records this node's master-key fingerprint in the directory if the cluster has none yet
/// (bootstrap), else makes sure the cluster's key is loaded: `--master-key-file`, or during a
/// rotation `--previous-master-key-file` (which then stays the active key until `pmsctl
/// cluster rotate-master-key` moves the cluster to the new one). A node without the cluster's
/// key would answer 500 to every message whose data key another node wrapped.
async fn check_master_key(
    mailboxes: &dyn MailboxService,
    keyring: &Keyring,
    config: &Config,
) -> anyhow::Result<()> {
    let fingerprint = keyring.current().fingerprint();
    let command = Command::CheckMasterKey {
        fingerprint: fingerprint.clone(),
    };
    let mut tries = 0;
    loop {
        match mailboxes.propose(GroupId::DIRECTORY, command.clone()).await {
            Ok(pms_mailbox::CommandResponse::MasterKeyMismatch { recorded }) => {
                if keyring.activate(&recorded) {
                    warn!(
                        cluster = %recorded,
                        new = %fingerprint,
                        "master-key rotation prepared on this node: it uses the cluster's key (--previous-master-key-file) until `pmsctl cluster rotate-master-key` moves the cluster to the new one (--master-key-file)"
                    );
                    return Ok(());
                }
                anyhow::bail!(
                    "the master key in {} (fingerprint {fingerprint}) is not this cluster's (fingerprint {recorded}): start this node with the key file the other nodes use (--master-key-file). When rotating the master key, give the new key as --master-key-file and the cluster's key as --previous-master-key-file until `pmsctl cluster rotate-master-key` finished. This node's data is unchanged",
                    config.master_key_file.display()
                );
            }
            Ok(_) => {
                info!(%fingerprint, "master key matches the cluster's");
                if keyring.previous().is_some() {
                    info!(
                        "--previous-master-key-file is loaded but no longer the cluster's key: once `pmsctl cluster rotate-master-key` reported every account rewrapped, restart without it and destroy the old key"
                    );
                }
                return Ok(());
            }
            Err(pms_mailbox::ProposeError::Retry { reason })
                if tries < STARTUP_PROPOSE_TRIES_MAX =>
            {
                tries += 1;
                warn!(%reason, tries, "checking the master key against the cluster's: retrying");
            }
            Err(error) => {
                return Err(error).context("checking the master key against the cluster's");
            }
        }
    }
}

/// Reads the cluster id the local directory replica recorded (a data dir from before identity
/// files) into `identity` and the identity file.
fn adopt_replicated_cluster_id(
    replication: &Replication,
    identity: &ClusterIdentity,
    config: &Config,
) -> anyhow::Result<()> {
    let Some(directory) = replication.group(GroupId::DIRECTORY) else {
        return Ok(());
    };
    if let Some(cluster_id) = query::cluster_id(directory.read(), GroupId::DIRECTORY)
        .context("reading the cluster id from the directory replica")?
    {
        info!(cluster = %cluster_id, "adopting the cluster id recorded in this node's directory replica");
        crate::identity::record_cluster(&config.data_dir, config.node_id, &cluster_id)?;
        identity.set(cluster_id);
    }
    Ok(())
}

/// Agrees with the cluster on its id: the first node to ask records one in the directory (a new
/// cluster), every node adopts the recorded one, and a data dir of another cluster is refused.
/// Records the id in the data dir.
async fn agree_on_cluster_id(
    mailboxes: &dyn MailboxService,
    identity: &ClusterIdentity,
    config: &Config,
) -> anyhow::Result<String> {
    let candidate = identity
        .get()
        .unwrap_or_else(crate::identity::new_cluster_id);
    let command = Command::RecordClusterId {
        cluster_id: candidate,
    };
    let mut tries = 0;
    let recorded = loop {
        match mailboxes.propose(GroupId::DIRECTORY, command.clone()).await {
            Ok(pms_mailbox::CommandResponse::ClusterId { cluster_id }) => break cluster_id,
            Ok(other) => anyhow::bail!("recording the cluster id: unexpected answer {other:?}"),
            Err(pms_mailbox::ProposeError::Retry { reason })
                if tries < STARTUP_PROPOSE_TRIES_MAX =>
            {
                tries += 1;
                warn!(%reason, tries, "recording the cluster id: retrying");
            }
            Err(error) => return Err(error).context("recording the cluster id"),
        }
    };
    crate::identity::record_cluster(&config.data_dir, config.node_id, &recorded)?;
    identity.set(recorded.clone());
    Ok(recorded)
}

/// Removes the bindings of this node's earlier runs, retrying while the cluster settles.
async fn unbind_stale_flows(
    mailboxes: &dyn MailboxService,
    group: GroupId,
    node: pms_types::NodeId,
    incarnation: u64,
) -> anyhow::Result<()> {
    let command = Command::UnbindStaleFlows {
        flow_node: node,
        live_incarnation: incarnation,
    };
    let mut tries = 0;
    loop {
        match mailboxes.propose(group, command.clone()).await {
            Ok(_) => return Ok(()),
            Err(pms_mailbox::ProposeError::Retry { reason })
                if tries < STARTUP_PROPOSE_TRIES_MAX =>
            {
                tries += 1;
                warn!(%reason, tries, "removing bindings of the previous run: retrying");
            }
            Err(error) => return Err(error).context("removing bindings of the previous run"),
        }
    }
}

fn edge_config(config: &Config, incarnation: u64) -> EdgeConfig {
    let mut edge = EdgeConfig::new(config.domain.clone(), config.node_id, incarnation);
    edge.mailbox_groups = config.mailbox_groups;
    edge.digest_algorithms = config
        .digest_algorithms
        .iter()
        .copied()
        .map(pms_edge::config::sip_digest_algorithm)
        .collect();
    edge.header_bytes_max = config.sip_header_bytes_max;
    edge.body_bytes_max = config.sip_body_bytes_max;
    edge.message_expires_default_secs = config.message_expires_default_secs;
    edge.message_expires_max_secs = config.message_expires_max_secs;
    edge.sync_window_ms = config.sync_window_ms;
    edge.flow_timer_secs = config.flow_timer_secs;
    edge.mailbox_messages_per_sender_max = config.mailbox_messages_per_sender_max;
    edge.sender_rate.burst = config.sender_recipient_burst;
    edge.sender_rate.interval_ms = config.sender_recipient_interval_ms;
    edge.unauthenticated_timeout_secs = config.sip_unauthenticated_timeout_secs;
    edge.unauthenticated_max = config.sip_unauthenticated_max;
    edge.unauthenticated_per_source_max = config.sip_unauthenticated_per_source_max;
    edge.allow_plaintext_delivery = config.allow_plaintext_delivery;
    edge
}

/// Creates the development certificates when the default certs dir has no CA (loudly); a certs
/// dir the operator named must already hold the cluster's CA.
fn prepare_certificates(config: &Config) -> anyhow::Result<()> {
    // Invariant: a given certs dir is never filled with a new CA (a secret that did not mount
    // would otherwise make a node of its own cluster).
    if config.certs_dir_given && !config.certs_dir.join("ca.crt").exists() {
        let dir = config.certs_dir.display();
        anyhow::bail!(
            "certs dir {dir} has no ca.crt. It was given (--certs-dir, PMS_CERTS_DIR or certs_dir), so nothing is generated there: if it is a mounted secret (Kubernetes), check that the secret exists and is mounted at {dir}; otherwise put the cluster's ca.crt, node.crt/node.key and sip.crt/sip.key there (made with `pmsctl cert create-ca | create-node | create-sip`, see docs/cluster.md). Only the development default (<data-dir>/certs, no option given) is generated"
        );
    }
    let hosts: Vec<String> = ["127.0.0.1", "localhost", "::1"]
        .into_iter()
        .map(str::to_owned)
        .chain(std::iter::once(config.domain.clone()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if !config.certs_dir.join("ca.crt").exists() {
        let created =
            pms_crypto::ensure_dev_certs(&config.certs_dir, &hosts).with_context(|| {
                format!(
                    "creating development certificates in {}",
                    config.certs_dir.display()
                )
            })?;
        if created {
            warn!(
                certs_dir = %config.certs_dir.display(),
                "DEVELOPMENT ONLY: generated a CA, a node certificate, a SIP certificate and an admin client certificate. Production makes them with `pmsctl cert create-ca | create-node | create-client admin`, keeps ca.key offline, and gives the SIP listener a certificate from a public CA as sip.crt/sip.key."
            );
        }
    }
    // A development certs dir from before the SIP listener had its own certificate.
    if !config.certs_dir.join(pms_crypto::SIP_CERT_FILE).exists() {
        let created =
            pms_crypto::ensure_dev_sip_cert(&config.certs_dir, &hosts).with_context(|| {
                format!(
                    "creating a development SIP certificate in {}",
                    config.certs_dir.display()
                )
            })?;
        if created {
            warn!(
                certs_dir = %config.certs_dir.display(),
                "DEVELOPMENT ONLY: the certs dir had no sip.crt; created sip.crt/sip.key signed by the cluster CA for the SIP TLS listener (node.crt is no longer shown to phones). Production uses a certificate from a public CA as sip.crt/sip.key."
            );
        }
    }
    for file in ["ca.crt", "node.crt", "node.key"] {
        let path: &Path = &config.certs_dir.join(file);
        anyhow::ensure!(path.exists(), "{} is missing", path.display());
    }
    let sip_cert = config.certs_dir.join(pms_crypto::SIP_CERT_FILE);
    let sip_key = config.certs_dir.join(pms_crypto::SIP_KEY_FILE);
    anyhow::ensure!(
        sip_cert.exists() && sip_key.exists(),
        "{} or {} is missing: the SIP TLS listener has its own certificate, separate from node.crt. \
         Put the certificate phones should see there (production: from a public CA, full chain in sip.crt), \
         or create one signed by the cluster CA with `pmsctl cert create-sip --certs-dir {} HOST...` \
         (needs ca.key), then start again",
        sip_cert.display(),
        sip_key.display(),
        config.certs_dir.display()
    );
    Ok(())
}

async fn wait_for(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
