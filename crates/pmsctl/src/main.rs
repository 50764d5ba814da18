//! The `pmsctl` command line: parses arguments with clap and hands each subcommand to the
//! library (`pmsctl::cert`, `pmsctl::admin`, `pmsctl::ua`).
//!
//! Invariants: results go to stdout, diagnostics to stderr; any failure, including a usage
//! error, prints one line to stderr and exits 1 (exit 2 is reserved for `send`/`listen`
//! timeouts); `send` and `listen` exit with the code the user agent returns.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use pmsctl::admin::AdminCommand;
use pmsctl::cert::CertCommand;
use pmsctl::ua::{ListenOptions, SendOptions, SipTarget, TlsTrust, WaitFor};

#[derive(Debug, Parser)]
#[command(
    name = "pmsctl",
    version,
    about = "Administer a PMS cluster and send or receive test messages"
)]
struct Cli {
    /// Directory with ca.crt, node.crt/key and client.<name>.crt/key.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        default_value = "./pms-data/certs"
    )]
    certs_dir: PathBuf,
    /// Address of a node's admin gRPC API.
    #[arg(
        long,
        global = true,
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:50051"
    )]
    admin: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the cluster CA, node, SIP and client certificates, and list them with their
    /// expiry.
    #[command(subcommand)]
    Cert(CertSubcommand),
    /// Provision, remove, enable, disable and list accounts.
    #[command(subcommand)]
    User(UserSubcommand),
    /// Look up messages.
    #[command(subcommand)]
    Message(MessageSubcommand),
    /// Inspect the cluster.
    #[command(subcommand)]
    Cluster(ClusterSubcommand),
    /// Send one MESSAGE and print each status change as a JSON line.
    Send(SendArgs),
    /// Register and print each incoming MESSAGE as a JSON line.
    Listen(ListenArgs),
    /// Stream a consistent backup of the node at --admin into a new directory.
    Backup {
        #[arg(value_name = "DIR")]
        dir: std::path::PathBuf,
    },
    /// Copy a backup into a new data dir (then start it with `pmsd --force-new-cluster`).
    Restore {
        #[arg(value_name = "BACKUP")]
        backup: std::path::PathBuf,
        #[arg(long, value_name = "DIR")]
        data_dir: std::path::PathBuf,
    },
}

#[derive(Debug, Subcommand)]
#[allow(clippy::enum_variant_names)] // The variants are the CLI's words: create-ca, create-node, …
enum CertSubcommand {
    /// Create ca.crt and ca.key.
    CreateCa {
        /// Days the CA is valid, 1 to 36500 (default: 3650, ten years). Certificates it
        /// signs never outlive it.
        #[arg(long, value_name = "DAYS")]
        lifetime_days: Option<u32>,
    },
    /// Create node.crt and node.key valid for these host names and addresses.
    CreateNode {
        /// Host names and IP addresses other nodes and pmsctl reach this node at.
        #[arg(required = true, value_name = "HOST")]
        hosts: Vec<String>,
        /// Days the certificate is valid, 1 to 36500, and never past ca.crt's expiry
        /// (default: 1825, five years, cut at the CA's expiry).
        #[arg(long, value_name = "DAYS")]
        lifetime_days: Option<u32>,
    },
    /// Create sip.crt and sip.key, the SIP TLS listener's certificate, for the names phones
    /// dial (development: signed by the cluster CA; production uses a public CA's).
    CreateSip {
        /// Host names and IP addresses phones dial (the first one is the common name).
        #[arg(required = true, value_name = "HOST")]
        hosts: Vec<String>,
        /// Days the certificate is valid, 1 to 36500, and never past ca.crt's expiry
        /// (default: 1825, five years, cut at the CA's expiry).
        #[arg(long, value_name = "DAYS")]
        lifetime_days: Option<u32>,
    },
    /// Create client.<NAME>.crt and .key (use `admin` for pmsctl).
    CreateClient {
        /// The client's name: the certificate's common name and part of its file names.
        name: String,
        /// Days the certificate is valid, 1 to 36500, and never past ca.crt's expiry
        /// (default: 1825, five years, cut at the CA's expiry).
        #[arg(long, value_name = "DAYS")]
        lifetime_days: Option<u32>,
    },
    /// Create the cluster's master key file (every node needs the same one).
    CreateMasterKey {
        #[arg(value_name = "FILE")]
        path: std::path::PathBuf,
    },
    /// List every certificate (*.crt) in --certs-dir: subject, SANs, issuer, not-before,
    /// not-after (RFC 3339) and days left, marking those that expire within 30 days or
    /// already expired. Exits 1 if a file cannot be read.
    List {
        /// One JSON object per certificate and line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum UserSubcommand {
    /// Provision an account (secure messaging enabled unless --disabled).
    Add {
        name: String,
        #[arg(long, env = "PMS_PASSWORD", hide_env_values = true)]
        password: String,
        /// Create the account with secure messaging disabled.
        #[arg(long)]
        disabled: bool,
        /// The digest algorithms this account may use, in the order the registrar challenges
        /// with them (e.g. `md5,sha256` for a device that answers only the first challenge and
        /// cannot do SHA-256). Default: the node's policy (`pmsd --digest-algorithms`).
        #[arg(long, value_name = "LIST")]
        digest_algorithms: Option<String>,
    },
    /// Change an account's digest policy: a list such as `md5,sha256` (challenge order), or
    /// `default` to follow the node's policy again. PMS stores only the HA1 values the policy
    /// allows, so allowing an algorithm the account has no HA1 for needs `--password`.
    SetDigest {
        name: String,
        #[arg(value_name = "LIST|default")]
        algorithms: String,
        /// The account's password, to compute the HA1 values of newly allowed algorithms.
        #[arg(long)]
        password: Option<String>,
    },
    /// Remove an account and shred its stored messages.
    Remove { name: String },
    /// Enable secure messaging for an account.
    Enable { name: String },
    /// Disable secure messaging for an account.
    Disable { name: String },
    /// List accounts (a table, or JSON lines with --json).
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum MessageSubcommand {
    /// Print a message's status as JSON.
    Status { id: String },
}

#[derive(Debug, Subcommand)]
enum ClusterSubcommand {
    /// Print the cluster as the node at --admin sees it: every member's role per group, last
    /// applied index and lag, or why it did not answer.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Add a node to every group: as a learner until it caught up, then as a voter.
    AddNode {
        /// The new node's id (its --node-id).
        id: u64,
        /// Its gRPC address as the other nodes reach it (its --grpc).
        #[arg(value_name = "HOST:PORT")]
        address: String,
    },
    /// Remove a node from every group.
    RemoveNode {
        /// The node's id.
        id: u64,
    },
    /// Move the cluster to a new master key and rewrap every account under it. First restart
    /// every node, one at a time, with the new key as --master-key-file and the old one as
    /// --previous-master-key-file (docs/operations.md, "Master-key rotation").
    RotateMasterKey,
}

#[derive(Debug, Args)]
struct SipArgs {
    /// The server's SIP TLS listener.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:5061")]
    server: String,
    /// SIP domain of the accounts.
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// Trust this CA certificate (default: <certs-dir>/ca.crt).
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    ca: Option<PathBuf>,
    /// Accept any server certificate (development only).
    #[arg(long)]
    insecure: bool,
    #[arg(long)]
    user: String,
    #[arg(long, env = "PMS_PASSWORD", hide_env_values = true)]
    password: String,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum WaitArg {
    Enqueued,
    Delivered,
}

#[derive(Debug, Args)]
struct SendArgs {
    #[command(flatten)]
    sip: SipArgs,
    /// Recipient user (or SIP URI).
    #[arg(long)]
    to: String,
    /// Validity of the message in seconds.
    #[arg(long, value_name = "SECS")]
    expires: Option<u64>,
    /// The status to wait for before exiting 0.
    #[arg(long, value_enum, default_value = "enqueued")]
    wait: WaitArg,
    /// Give up (exit 2) after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    timeout: u64,
    #[arg(long, value_name = "TYPE", default_value = "text/plain;charset=UTF-8")]
    content_type: String,
    text: String,
}

#[derive(Debug, Args)]
struct ListenArgs {
    #[command(flatten)]
    sip: SipArgs,
    /// Exit 0 after this many messages.
    #[arg(long)]
    count: Option<usize>,
    /// Exit 2 if the messages did not arrive within this many seconds.
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
}

impl SipArgs {
    fn target(&self, certs_dir: &Path) -> SipTarget {
        let trust = match (&self.ca, self.insecure) {
            (_, true) => TlsTrust::Insecure,
            (Some(ca), false) => TlsTrust::CaFile(ca.clone()),
            (None, false) => TlsTrust::CaFile(certs_dir.join("ca.crt")),
        };
        SipTarget {
            server: self.server.clone(),
            trust,
            domain: self.domain.clone(),
        }
    }
}

fn admin_command(command: Command) -> Option<AdminCommand> {
    Some(match command {
        Command::User(UserSubcommand::Add {
            name,
            password,
            disabled,
            digest_algorithms,
        }) => AdminCommand::UserAdd {
            user: name,
            password,
            messaging_enabled: !disabled,
            digest_algorithms,
        },
        Command::User(UserSubcommand::SetDigest {
            name,
            algorithms,
            password,
        }) => AdminCommand::UserSetDigestAlgorithms {
            user: name,
            algorithms,
            password,
        },
        Command::User(UserSubcommand::Remove { name }) => AdminCommand::UserRemove { user: name },
        Command::User(UserSubcommand::Enable { name }) => AdminCommand::UserSetMessagingEnabled {
            user: name,
            enabled: true,
        },
        Command::User(UserSubcommand::Disable { name }) => AdminCommand::UserSetMessagingEnabled {
            user: name,
            enabled: false,
        },
        Command::User(UserSubcommand::List { json }) => AdminCommand::UserList { json },
        Command::Message(MessageSubcommand::Status { id }) => {
            AdminCommand::MessageStatus { message_id: id }
        }
        Command::Cluster(ClusterSubcommand::Status { json }) => {
            AdminCommand::ClusterStatus { json }
        }
        Command::Cluster(ClusterSubcommand::AddNode { id, address }) => {
            AdminCommand::ClusterAddNode { node: id, address }
        }
        Command::Cluster(ClusterSubcommand::RemoveNode { id }) => {
            AdminCommand::ClusterRemoveNode { node: id }
        }
        Command::Cluster(ClusterSubcommand::RotateMasterKey) => AdminCommand::RotateMasterKey,
        Command::Cert(_)
        | Command::Send(_)
        | Command::Listen(_)
        | Command::Backup { .. }
        | Command::Restore { .. } => return None,
    })
}

/// Runs the command; `Ok` carries the exit code.
async fn run(cli: Cli) -> anyhow::Result<u8> {
    let stdout = &mut std::io::stdout();
    match cli.command {
        Command::Cert(subcommand) => {
            let command = match subcommand {
                CertSubcommand::CreateCa { lifetime_days } => {
                    CertCommand::CreateCa { lifetime_days }
                }
                CertSubcommand::CreateNode {
                    hosts,
                    lifetime_days,
                } => CertCommand::CreateNode {
                    hosts,
                    lifetime_days,
                },
                CertSubcommand::CreateSip {
                    hosts,
                    lifetime_days,
                } => CertCommand::CreateSip {
                    hosts,
                    lifetime_days,
                },
                CertSubcommand::CreateClient {
                    name,
                    lifetime_days,
                } => CertCommand::CreateClient {
                    name,
                    lifetime_days,
                },
                CertSubcommand::CreateMasterKey { path } => CertCommand::CreateMasterKey { path },
                CertSubcommand::List { json } => CertCommand::List { json },
            };
            pmsctl::cert::run(&cli.certs_dir, &command, stdout)?;
            Ok(0)
        }
        Command::Send(args) => {
            let options = SendOptions {
                target: args.sip.target(&cli.certs_dir),
                user: args.sip.user,
                password: args.sip.password,
                to: args.to,
                text: args.text,
                content_type: args.content_type,
                expires_secs: args.expires,
                wait: match args.wait {
                    WaitArg::Enqueued => WaitFor::Enqueued,
                    WaitArg::Delivered => WaitFor::Delivered,
                },
                timeout_secs: args.timeout,
            };
            Ok(exit_code(pmsctl::ua::send(options, stdout).await))
        }
        Command::Listen(args) => {
            let options = ListenOptions {
                target: args.sip.target(&cli.certs_dir),
                user: args.sip.user,
                password: args.sip.password,
                count: args.count,
                timeout_secs: args.timeout,
            };
            Ok(exit_code(pmsctl::ua::listen(options, stdout).await))
        }
        Command::Backup { dir } => {
            pmsctl::backup::backup(&cli.admin, &cli.certs_dir, &dir, stdout)
                .await
                .with_context(|| format!("backup from the node at {}", cli.admin))?;
            Ok(0)
        }
        Command::Restore { backup, data_dir } => {
            pmsctl::backup::restore(&backup, &data_dir, stdout)?;
            Ok(0)
        }
        command => {
            let command = admin_command(command).context("unhandled subcommand")?;
            pmsctl::admin::run(&cli.admin, &cli.certs_dir, command, stdout)
                .await
                .with_context(|| format!("admin API at {}", cli.admin))?;
            Ok(0)
        }
    }
}

/// The user agent's exit code as a process exit code (anything out of range is an error).
fn exit_code(code: i32) -> u8 {
    u8::try_from(code).unwrap_or(1)
}

/// One line: newlines inside messages (from servers or libraries) are folded into spaces.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            use clap::error::ErrorKind;
            if matches!(
                error.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                // Help and version go to stdout with clap's own exit code (0, or 2 when a
                // subcommand is missing).
                error.exit();
            }
            // clap's message is several lines: keep the part before the usage block.
            let rendered = error.to_string();
            let message: Vec<&str> = rendered
                .lines()
                .take_while(|line| !line.trim().is_empty())
                .collect();
            eprintln!(
                "pmsctl: {} (see pmsctl --help)",
                one_line(&message.join(" "))
            );
            return ExitCode::from(1);
        }
    };
    match run(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            let _ = std::io::stdout().flush();
            eprintln!("pmsctl: error: {}", one_line(&format!("{error:#}")));
            ExitCode::from(1)
        }
    }
}
