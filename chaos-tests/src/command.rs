//! Running short external commands (`ip`, `iptables`, `kill`, `pmsctl`) with a time limit.
//!
//! Invariant: no command runs longer than [`COMMAND_TIMEOUT`] (it is killed then); a command
//! that fails comes back as an error carrying its exit status and stderr. Output is read while
//! the command runs, so a chatty command cannot block on a full pipe.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

/// Longest any external command may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `argv` with [`COMMAND_TIMEOUT`]; `Ok(stdout)` on exit status 0.
pub fn run(argv: &[&str]) -> anyhow::Result<String> {
    let (program, args) = argv.split_first().context("empty command")?;
    let mut command = Command::new(program);
    command.args(args);
    run_command(command, &argv.join(" "))
}

/// Runs a prepared command with [`COMMAND_TIMEOUT`]; `Ok(stdout)` on exit status 0.
pub fn run_command(mut command: Command, description: &str) -> anyhow::Result<String> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {description}"))?;
    let pid = child.id();
    let (sender, receiver) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let _ = sender.send(child.wait_with_output());
    });
    let output = match receiver.recv_timeout(COMMAND_TIMEOUT) {
        Ok(output) => output.with_context(|| format!("waiting for {description}"))?,
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            bail!("{description} took longer than {COMMAND_TIMEOUT:?} and was killed");
        }
    };
    if !output.status.success() {
        bail!(
            "{description} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
