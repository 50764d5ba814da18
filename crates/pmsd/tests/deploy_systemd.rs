//! The systemd deployment in `deploy/systemd/` (issue 10), checked with systemd's own tools:
//! `systemd-analyze verify` has nothing to say about `pmsd.service`, `systemd-analyze
//! security` rates its sandbox at most [`EXPOSURE_MAX`] with every weakness it reports one we
//! chose (and say why), its descriptor limit covers the node's connection limits, its command
//! line starts the built `pmsd` with the production example config, and the sysusers.d snippet
//! makes the `pms` user it runs as.
//!
//! `systemd-analyze verify` exits 0 after an unknown key or a bad value (it logs the line and
//! ignores it), so its stderr is read: any line about the unit fails the test.
//! The unit names the installed binary (`/usr/local/bin/pmsd`); the tests check a copy in a
//! temporary directory that names the binary cargo built instead (verify checks that
//! `ExecStart=`'s executable exists).
//!
//! A missing `systemd-analyze` or `systemd-sysusers` fails every test here: the README's test
//! command (`scripts/install-packages test`) installs the `systemd` package.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use pms_types::limits;

/// Where the unit runs `pmsd` from once installed (docs/cluster.md, "Running under systemd").
const INSTALLED_PMSD: &str = "/usr/local/bin/pmsd";
/// The highest overall exposure `systemd-analyze security` may give the unit. Measured: 1.1
/// ("OK") with systemd 252 (Debian 12); the margin is for other systemd versions' weights.
/// Every single weakness is held by [`ACCEPTED_EXPOSURES`] anyway.
const EXPOSURE_MAX: f64 = 1.5;
/// The checks of `systemd-analyze security` the unit is allowed to fail, and why.
const ACCEPTED_EXPOSURES: &[(&str, &str)] = &[
    (
        "PrivateNetwork=",
        "pmsd serves phones and its peers over the host's network",
    ),
    (
        "RestrictAddressFamilies=~AF_(INET|INET6)",
        "SIP, gRPC and HTTP are IPv4/IPv6",
    ),
    (
        "RestrictAddressFamilies=~AF_UNIX",
        "the host name resolver (nscd, systemd-resolved) is reached over AF_UNIX",
    ),
    (
        "IPAddressDeny=",
        "phones connect from any address; restrict the gRPC port with a firewall",
    ),
    (
        "RootDirectory=/RootImage=",
        "pmsd runs from the host's file system (read-only: ProtectSystem=strict)",
    ),
    (
        "DeviceAllow=",
        "ProtectClock= itself allows reading the real-time clock (char-rtc:r)",
    ),
];
/// Descriptors a node needs besides its SIP connections: RocksDB keeps every table file
/// open (`max_open_files` -1; 64 MiB files, so 4,096 of them is a 256 GiB data dir), plus
/// gRPC peers and admin clients, listeners, the WAL, the journal streams.
const DESCRIPTORS_BESIDES_SIP: usize = 4_096 + 1_024;
/// How long `pmsd` may take to refuse a certs dir without `ca.crt` (it opens nothing before).
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(30);

fn repository_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
}

fn unit_text() -> String {
    let path = repository_file("deploy/systemd/pmsd.service");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
}

/// Runs a systemd tool, failing the test (with how to install it) when it is missing.
fn run_systemd_tool(program: &str, args: &[&str], extra: &[&Path]) -> Output {
    let output = Command::new(program)
        .args(args)
        .args(extra)
        .stdin(Stdio::null())
        .output();
    match output {
        Ok(output) => output,
        Err(error) => panic!(
            "cannot run `{program}` ({error}): install the Debian package `systemd` \
             (scripts/install-packages test, which the README's test command runs, does this)"
        ),
    }
}

/// A copy of the unit, as `pmsd.service` in `dir`, whose `ExecStart=` runs the built `pmsd`.
fn unit_for_built_binary(dir: &Path) -> PathBuf {
    let text = unit_text();
    let installed = format!("ExecStart={INSTALLED_PMSD} ");
    assert_eq!(
        text.matches(&installed).count(),
        1,
        "the unit should start pmsd once, as `{installed}…` (the path docs/cluster.md installs to)"
    );
    let built = env!("CARGO_BIN_EXE_pmsd");
    assert!(
        !built.contains(char::is_whitespace),
        "the built pmsd's path {built:?} has whitespace, which ExecStart= would split"
    );
    let path = dir.join("pmsd.service");
    std::fs::write(
        &path,
        text.replace(&installed, &format!("ExecStart={built} ")),
    )
    .expect("write the unit copy");
    path
}

/// The value of `key=` in the unit's text (the last one, as systemd reads it).
fn unit_setting(key: &str) -> String {
    let prefix = format!("{key}=");
    unit_text()
        .lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("the unit sets no {key}="))
        .trim()
        .to_owned()
}

/// Whether a line of `systemd-analyze verify`'s stderr is about another unit on this machine
/// (a dependency such as `network-online.target`), not the one under test.
fn about_another_unit(line: &str, unit: &Path) -> bool {
    let subject = line.split(':').next().unwrap_or_default();
    if subject.starts_with('/') {
        return Path::new(subject) != unit;
    }
    let unit_suffixes = [
        ".service", ".target", ".socket", ".mount", ".slice", ".path",
    ];
    subject != "pmsd.service" && unit_suffixes.iter().any(|s| subject.ends_with(s))
}

#[test]
fn systemd_analyze_verify_has_nothing_to_say_about_the_unit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let unit = unit_for_built_binary(dir.path());
    let output = run_systemd_tool("systemd-analyze", &["verify"], &[&unit]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|line| !line.trim().is_empty() && !about_another_unit(line, &unit))
        .collect();
    assert!(
        output.status.success() && complaints.is_empty(),
        "systemd-analyze verify deploy/systemd/pmsd.service ({}): every line below is a setting \
         systemd ignores or refuses; fix it in the unit:\n{}",
        output.status,
        complaints.join("\n")
    );
}

#[test]
fn systemd_analyze_security_rates_the_sandbox_ok() {
    let dir = tempfile::tempdir().expect("temp dir");
    let unit = unit_for_built_binary(dir.path());

    let output = run_systemd_tool(
        "systemd-analyze",
        &["security", "--offline=yes", "--no-pager"],
        &[&unit],
    );
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "systemd-analyze security failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let overall = report
        .lines()
        .find_map(|line| {
            line.split("Overall exposure level for pmsd.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{report}"));
    assert!(
        overall <= EXPOSURE_MAX,
        "the unit's exposure is {overall}, above {EXPOSURE_MAX}: a sandboxing setting was \
         removed or weakened:\n{report}"
    );

    let output = run_systemd_tool(
        "systemd-analyze",
        &["security", "--offline=yes", "--no-pager", "--json=short"],
        &[&unit],
    );
    let checks: Vec<serde_json::Value> =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
            panic!(
                "systemd-analyze security --json=short is not a JSON list ({error}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        });
    assert!(
        checks.len() > 50,
        "systemd-analyze security checked only {} settings",
        checks.len()
    );
    let exposed: Vec<String> = checks
        .iter()
        .filter(|check| {
            check["exposure"]
                .as_str()
                .and_then(|exposure| exposure.parse::<f64>().ok())
                .is_some_and(|exposure| exposure > 0.0)
        })
        .filter_map(|check| check["name"].as_str())
        .filter(|name| {
            !ACCEPTED_EXPOSURES
                .iter()
                .any(|(accepted, _)| accepted == name)
        })
        .map(str::to_owned)
        .collect();
    let accepted: Vec<String> = ACCEPTED_EXPOSURES
        .iter()
        .map(|(name, why)| format!("{name} ({why})"))
        .collect();
    assert!(
        exposed.is_empty(),
        "systemd-analyze security finds the unit exposed where it should not be: {exposed:?}; \
         the only weaknesses accepted are: {}\n{report}",
        accepted.join("; ")
    );
}

#[test]
fn the_descriptor_limit_covers_the_connection_limits() {
    let limit: usize = unit_setting("LimitNOFILE")
        .parse()
        .expect("LimitNOFILE= is one number (soft = hard)");
    // Per SIP stream listener (TLS, and TCP when it is not off), authenticated and
    // unauthenticated connections; UDP is one socket whatever its peers.
    let sip_stream_listeners = 2;
    let needed = sip_stream_listeners
        * (limits::CONNECTIONS_MAX + limits::SIP_UNAUTHENTICATED_MAX_DEFAULT)
        + limits::HTTP_CONNECTIONS_MAX
        + DESCRIPTORS_BESIDES_SIP;
    assert!(
        limit >= needed,
        "LimitNOFILE={limit} is less than the {needed} descriptors a node at its connection \
         limits needs: it would fail accept() with EMFILE before the limits apply"
    );
}

/// The unit's `ExecStart=` command line, continuation lines joined, without the program.
fn exec_start_arguments() -> Vec<String> {
    let text = unit_text().replace("\\\n", " ");
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix("ExecStart="))
        .expect("the unit has ExecStart=");
    let mut words = line.split_whitespace().map(str::to_owned);
    assert_eq!(words.next().as_deref(), Some(INSTALLED_PMSD));
    words.collect()
}

#[test]
fn the_units_command_line_runs_pmsd_with_the_production_example() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let certs_dir = dir.path().join("certs");
    let credentials = dir.path().join("credentials");
    for empty in [&certs_dir, &credentials] {
        std::fs::create_dir(empty).expect("create dir");
    }
    let production_config = repository_file("docs/pmsd.production.toml");
    let substitutions = [
        ("/etc/pms/pmsd.toml", production_config.as_path()),
        ("/var/lib/pms", data_dir.as_path()),
        ("/etc/pms/certs", certs_dir.as_path()),
        ("${CREDENTIALS_DIRECTORY}", credentials.as_path()),
    ];
    let arguments: Vec<String> = exec_start_arguments()
        .into_iter()
        .map(|argument| {
            substitutions
                .iter()
                .fold(argument, |argument, (installed, here)| {
                    argument.replace(installed, &here.display().to_string())
                })
        })
        .collect();
    assert!(
        !arguments.iter().any(|argument| argument.contains('$')),
        "a variable of the unit's command line is not substituted here: {arguments:?}"
    );

    // The production config and the unit's flags are accepted; the node then stops at its
    // first check of what the operator installed (the certs dir), with status 1, which
    // Restart=on-failure retries (a secret mount may come late).
    let output = common::run_pmsd_until_exit(&arguments, REFUSAL_TIMEOUT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "pmsd {arguments:?} should stop at the empty certs dir:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("certs dir {} has no ca.crt", certs_dir.display())),
        "pmsd should say the certs dir lacks ca.crt:\n{stderr}"
    );

    // A usage error exits with the status the unit does not restart on.
    let no_restart: i32 = unit_setting("RestartPreventExitStatus")
        .parse()
        .expect("RestartPreventExitStatus= is one number");
    let mut misspelt = arguments.clone();
    misspelt.push("--data-dirr=/nowhere".to_owned());
    let output = common::run_pmsd_until_exit(&misspelt, REFUSAL_TIMEOUT);
    assert_eq!(
        output.status.code(),
        Some(no_restart),
        "a misspelt flag should exit {no_restart} (RestartPreventExitStatus=): {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_sysusers_snippet_makes_the_pms_system_user() {
    let root = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(root.path().join("etc")).expect("create etc");
    let snippet = repository_file("deploy/systemd/sysusers.d/pms.conf");
    let root_argument = format!("--root={}", root.path().display());
    let output = run_systemd_tool("systemd-sysusers", &[&root_argument], &[&snippet]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Parse errors name the file and line ("…/pms.conf:2: Unknown command type 'x'."), and
    // systemd-sysusers still exits 0 for some of them.
    let snippet_text = snippet.display().to_string();
    assert!(
        output.status.success() && !stderr.lines().any(|line| line.starts_with(&snippet_text)),
        "systemd-sysusers {snippet_text} ({}):\n{stderr}",
        output.status,
    );
    let passwd =
        std::fs::read_to_string(root.path().join("etc/passwd")).expect("sysusers wrote passwd");
    let user: Vec<&str> = passwd
        .lines()
        .find(|line| line.starts_with("pms:"))
        .unwrap_or_else(|| panic!("no pms user in:\n{passwd}"))
        .split(':')
        .collect();
    assert_eq!(user.len(), 7, "passwd line {user:?}");
    let uid: u32 = user[2].parse().expect("uid");
    assert!(
        (1..1000).contains(&uid),
        "pms should be a system user (uid below 1000), got {uid}"
    );
    assert_eq!(user[5], "/var/lib/pms", "its home is the data dir");
    assert!(user[6].ends_with("nologin"), "it cannot log in: {user:?}");
    let group = std::fs::read_to_string(root.path().join("etc/group")).expect("group");
    assert!(
        group
            .lines()
            .any(|line| line.starts_with(&format!("pms:x:{}:", user[3]))),
        "the pms group is the user's primary group:\n{group}"
    );
}
