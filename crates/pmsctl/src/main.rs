//! The `pmsctl` command line: parses arguments with clap and hands each subcommand to the
//! library (`pmsctl::cert`, `pmsctl::admin`, `pmsctl::ua`).
//!
//! Invariants: results go to stdout, diagnostics to stderr; any failure prints one line to
//! stderr (`{"error": …}` with `--json`), and no phrase of an error's cause chain is printed
//! twice. Exit codes: 0 success, 1 failure, 2 usage error (clap's, or an argument found
//! invalid before anything was done), 3 `cluster status` found the cluster degraded, 4
//! `send`/`listen` timed out. A value taken from `PMS_ADMIN` or `PMS_CERTS_DIR` is named by
//! its variable in errors, not by the flag the user did not type.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use pmsctl::admin::{AdminCommand, AdminCommandError};
use pmsctl::cert::{CertCommand, CertError};
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
        env = "PMS_CERTS_DIR",
        default_value = "./pms-data/certs"
    )]
    certs_dir: PathBuf,
    /// Address of a node's admin gRPC API.
    #[arg(
        long,
        global = true,
        value_name = "HOST:PORT",
        env = "PMS_ADMIN",
        default_value = "127.0.0.1:50051"
    )]
    admin: String,
    /// Print results as JSON, one object per line, and errors as {"error": …} on stderr
    /// (`send` and `listen` always print JSON lines).
    #[arg(long, global = true)]
    json: bool,
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
        /// The directory to create (or an empty one); nothing is overwritten.
        #[arg(value_name = "DIR")]
        dir: std::path::PathBuf,
    },
    /// Copy a backup into a new data dir (then start it with `pmsd --force-new-cluster`).
    Restore {
        /// A directory written by `pmsctl backup`.
        #[arg(value_name = "BACKUP")]
        backup: std::path::PathBuf,
        /// The new node's data dir (absent or empty).
        #[arg(long, value_name = "DIR")]
        data_dir: std::path::PathBuf,
    },
    /// Print a shell completion script: `source <(pmsctl completion bash)`, or save it where
    /// the shell loads completions from.
    Completion {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
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
        /// The key file to create (mode 0600); it must not exist.
        #[arg(value_name = "FILE")]
        path: std::path::PathBuf,
    },
    /// List every certificate (*.crt) in --certs-dir: subject, SANs, issuer, not-before,
    /// not-after (RFC 3339) and days left, marking those that expire within 30 days or
    /// already expired. Exits 1 if a file cannot be read.
    List,
}

#[derive(Debug, Subcommand)]
enum UserSubcommand {
    /// Provision an account (secure messaging enabled unless --disabled).
    Add {
        /// The account's user name (the user part of its SIP URI).
        name: String,
        /// The account's SIP digest password.
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
        /// The account's user name.
        name: String,
        /// Algorithms in challenge order (`md5`, `sha256`), or `default`.
        #[arg(value_name = "LIST|default")]
        algorithms: String,
        /// The account's password, to compute the HA1 values of newly allowed algorithms.
        #[arg(long)]
        password: Option<String>,
    },
    /// Remove an account and shred its stored messages.
    Remove {
        /// The account's user name.
        name: String,
    },
    /// Enable secure messaging for an account.
    Enable {
        /// The account's user name.
        name: String,
    },
    /// Disable secure messaging for an account.
    Disable {
        /// The account's user name.
        name: String,
    },
    /// List accounts (a table, or JSON lines with --json).
    List,
}

#[derive(Debug, Subcommand)]
enum MessageSubcommand {
    /// Print a message's status as JSON.
    Status {
        /// The message id `pmsctl send` printed (`message_id`).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterSubcommand {
    /// Print the cluster as the node at --admin sees it: every member's role per group, last
    /// applied index and lag, or why it did not answer. Exits 3 when the cluster is degraded
    /// (a member unreachable, a group without leader).
    Status,
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
    /// The account to register or send as.
    #[arg(long)]
    user: String,
    /// The account's SIP digest password.
    #[arg(long, env = "PMS_PASSWORD", hide_env_values = true)]
    password: String,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum WaitArg {
    /// The cluster stored the message (202 Accepted).
    Enqueued,
    /// A recipient device acknowledged it (delivery report).
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
    /// Give up (exit 4) after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    timeout: u64,
    /// The body's Content-Type.
    #[arg(long, value_name = "TYPE", default_value = "text/plain;charset=UTF-8")]
    content_type: String,
    /// The message body (put `--` before it if it starts with `-`).
    text: String,
}

#[derive(Debug, Args)]
struct ListenArgs {
    #[command(flatten)]
    sip: SipArgs,
    /// Exit 0 after this many messages.
    #[arg(long)]
    count: Option<usize>,
    /// Exit 4 if the messages did not arrive within this many seconds.
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
        Command::User(UserSubcommand::List) => AdminCommand::UserList { json: false },
        Command::Message(MessageSubcommand::Status { id }) => {
            AdminCommand::MessageStatus { message_id: id }
        }
        Command::Cluster(ClusterSubcommand::Status) => AdminCommand::ClusterStatus { json: false },
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
        | Command::Restore { .. }
        | Command::Completion { .. } => return None,
    })
}

/// Exit code: an argument was refused (by clap, or by a check before anything was done).
const EXIT_USAGE: u8 = 2;
/// Exit code: `cluster status` found the cluster degraded (it printed the status first).
const EXIT_DEGRADED: u8 = 3;
/// Exit code: any other failure.
const EXIT_FAILURE: u8 = 1;

/// A global option's value was refused; the message names where it came from.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

/// Where the global options came from, so that errors name what the user actually set.
struct Origins {
    admin_from_env: bool,
    certs_dir_from_env: bool,
}

impl Origins {
    /// The admin address as errors show it: `ADDR`, or `ADDR (from PMS_ADMIN)`.
    fn admin_label(&self, admin: &str) -> String {
        if self.admin_from_env {
            format!("{admin} (from PMS_ADMIN)")
        } else {
            admin.to_owned()
        }
    }
}

/// Checks `--admin`/`PMS_ADMIN` is `HOST:PORT` before connecting.
fn check_admin_address(admin: &str, origins: &Origins) -> Result<(), UsageError> {
    let valid = admin
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if valid {
        return Ok(());
    }
    Err(UsageError(if origins.admin_from_env {
        format!("PMS_ADMIN={admin}: not HOST:PORT (fix or unset the variable, or give --admin)")
    } else {
        format!("--admin {admin:?}: not HOST:PORT")
    }))
}

/// Runs the command; `Ok` carries the exit code.
async fn run(cli: Cli, origins: &Origins) -> anyhow::Result<u8> {
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
                CertSubcommand::List => CertCommand::List { json: false },
            };
            pmsctl::cert::run(&cli.certs_dir, &command, cli.json, stdout)?;
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
            check_admin_address(&cli.admin, origins)?;
            pmsctl::backup::backup(&cli.admin, &cli.certs_dir, &dir, cli.json, stdout)
                .await
                .with_context(|| {
                    format!(
                        "backup from the node at {}",
                        origins.admin_label(&cli.admin)
                    )
                })?;
            Ok(0)
        }
        Command::Restore { backup, data_dir } => {
            pmsctl::backup::restore(&backup, &data_dir, cli.json, stdout)?;
            Ok(0)
        }
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "pmsctl", stdout);
            Ok(0)
        }
        command => {
            let command = admin_command(command).context("unhandled subcommand")?;
            // Arguments are checked before the address, so a typo is reported as such.
            check_admin_address(&cli.admin, origins)?;
            pmsctl::admin::run(&cli.admin, &cli.certs_dir, command, cli.json, stdout)
                .await
                .with_context(|| format!("admin API at {}", origins.admin_label(&cli.admin)))?;
            Ok(0)
        }
    }
}

/// The user agent's exit code as a process exit code (anything out of range is an error).
fn exit_code(code: i32) -> u8 {
    u8::try_from(code).unwrap_or(EXIT_FAILURE)
}

/// The exit code a failure ends with: usage errors 2, a degraded cluster 3, anything else 1.
fn failure_exit_code(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if cause.downcast_ref::<UsageError>().is_some() {
            return EXIT_USAGE;
        }
        match cause.downcast_ref::<AdminCommandError>() {
            Some(AdminCommandError::InvalidArgument(_)) => return EXIT_USAGE,
            Some(AdminCommandError::Degraded(_)) => return EXIT_DEGRADED,
            _ => {}
        }
        if let Some(
            CertError::InvalidClientName { .. }
            | CertError::InvalidHost { .. }
            | CertError::Crypto(pms_crypto::Error::InvalidLifetime { .. }),
        ) = cause.downcast_ref::<CertError>()
        {
            return EXIT_USAGE;
        }
    }
    EXIT_FAILURE
}

/// One line: newlines inside messages (from servers or libraries) are folded into spaces.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The error and its causes on one line, `: `-separated, leaving out a cause whose text is
/// already printed (many errors repeat their source's text in their own).
fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = one_line(&cause.to_string());
        if part.is_empty() || text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// Prints a failure to stderr: `pmsctl: error: …`, or `{"error": …}` with `--json`.
fn print_error(json: bool, prefix: &str, text: &str) {
    let _ = std::io::stdout().flush();
    if json {
        eprintln!("{}", serde_json::json!({ "error": text }));
    } else {
        eprintln!("pmsctl: {prefix}{text}");
    }
}

/// Parses the command line; `Err` carries the exit code after printing the usage error.
fn parse() -> Result<(Cli, Origins), ExitCode> {
    let usage_error = |error: clap::Error| {
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
        let message = one_line(&message.join(" "));
        let message = message.strip_prefix("error: ").unwrap_or(&message);
        let json = std::env::args_os().any(|argument| argument == "--json");
        print_error(json, "error: ", &format!("{message} (see pmsctl --help)"));
        ExitCode::from(EXIT_USAGE)
    };
    let matches = Cli::command().try_get_matches().map_err(usage_error)?;
    let cli = Cli::from_arg_matches(&matches).map_err(usage_error)?;
    let from_env = |id: &str| matches.value_source(id) == Some(ValueSource::EnvVariable);
    let origins = Origins {
        admin_from_env: from_env("admin"),
        certs_dir_from_env: from_env("certs_dir"),
    };
    Ok((cli, origins))
}

#[tokio::main]
async fn main() -> ExitCode {
    let (cli, origins) = match parse() {
        Ok(parsed) => parsed,
        Err(code) => return code,
    };
    let json = cli.json;
    let certs_dir = cli.certs_dir.display().to_string();
    match run(cli, &origins).await {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            let mut text = error_text(&error);
            if origins.certs_dir_from_env && text.contains(&certs_dir) {
                text.push_str(" (certs dir from PMS_CERTS_DIR)");
            }
            print_error(json, "error: ", &text);
            ExitCode::from(failure_exit_code(&error))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every argument of every (sub)command, as `command path: argument`, that `--help` shows
    /// without a description.
    fn arguments_without_help(command: &clap::Command, path: &str, found: &mut Vec<String>) {
        for argument in command.get_arguments() {
            let builtin = matches!(argument.get_id().as_str(), "help" | "version");
            if !builtin && argument.get_help().is_none() && argument.get_long_help().is_none() {
                found.push(format!("{path}: {}", argument.get_id()));
            }
        }
        for subcommand in command.get_subcommands() {
            if subcommand.get_name() == "help" {
                continue;
            }
            if subcommand.get_about().is_none() {
                found.push(format!("{path} {}: (no about)", subcommand.get_name()));
            }
            let path = format!("{path} {}", subcommand.get_name());
            arguments_without_help(subcommand, &path, found);
        }
    }

    #[test]
    fn every_argument_and_subcommand_has_help_text() {
        let command = Cli::command();
        command.clone().debug_assert();
        let mut found = Vec::new();
        arguments_without_help(&command, "pmsctl", &mut found);
        assert!(found.is_empty(), "no help text: {found:#?}");
    }

    #[test]
    fn a_cause_already_in_the_line_is_not_printed_again() {
        let error = anyhow::Error::from(std::io::Error::other("tcp connect error"))
            .context("transport error: tcp connect error")
            .context("admin API at 127.0.0.1:1");
        assert_eq!(
            error_text(&error),
            "admin API at 127.0.0.1:1: transport error: tcp connect error"
        );
    }
}
