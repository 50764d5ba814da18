//! The short chaos run (the CI form): a real cluster of `pmsd` processes with faults every
//! ~6 s for 60 s of workload, then drain and check. Asserts that every guarantee held and
//! prints the summary.
//!
//! Nodes: 3 by default; `PMS_CHAOS_NODES=1` runs the single-node form (faults then take the
//! whole service down and back, which still checks durability, expiry and dedup).
//! Invariant: waits are on conditions with deadlines (inside the harness); nothing sleeps to
//! synchronise.

use pms_chaos::ChaosOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn short_chaos_run_keeps_every_guarantee() {
    let mut options = ChaosOptions::short();
    if let Some(nodes) = std::env::var("PMS_CHAOS_NODES")
        .ok()
        .and_then(|text| text.parse().ok())
    {
        options.nodes = nodes;
    }
    if let Some(seed) = std::env::var("PMS_CHAOS_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
    {
        options.seed = Some(seed);
    }
    let outcome = match pms_chaos::run(options).await {
        Ok(outcome) => outcome,
        Err(error) => panic!("the chaos run could not complete: {error:#}"),
    };
    println!("{}", outcome.summary);
    assert!(
        outcome.passed(),
        "the chaos run broke a guarantee:\n{}",
        outcome.summary
    );
}
