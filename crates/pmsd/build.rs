//! Records the commit pmsd is built from for `pms_build_info{commit}`: `PMSD_GIT_COMMIT` when
//! set (a container build, which has no `.git`), else `git rev-parse --short=12 HEAD`, else
//! "unknown".

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (output.status.success() && !text.is_empty()).then(|| text.to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=PMSD_GIT_COMMIT");
    let commit = std::env::var("PMSD_GIT_COMMIT")
        .ok()
        .filter(|commit| !commit.trim().is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=PMSD_GIT_COMMIT={commit}");
    // Rebuilt when HEAD moves to another commit (the branch's ref file or packed-refs change).
    // A path that does not exist would rerun this script on every build: only existing ones.
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let reference = git(&["symbolic-ref", "-q", "HEAD"]);
        let watched = [
            "HEAD",
            reference.as_deref().unwrap_or("HEAD"),
            "packed-refs",
        ];
        for path in watched.map(|name| std::path::Path::new(&git_dir).join(name)) {
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
}
