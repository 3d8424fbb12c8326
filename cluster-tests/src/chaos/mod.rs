//! The chaos harness: the deployment of docker-compose.yml under a project of its own
//! ([`deployment`]), a load of sequence-numbered records with a known poison share
//! ([`load`]), the faults of the reliability matrix ([`scenario`]), and the checker that
//! reconciles input against the sink and the dead letter ([`check`]). `mirador-chaos`
//! runs the matrix; `tests/chaos.rs` runs the smoke scenario in `make test`.

pub mod check;
pub mod deployment;
pub mod load;
pub mod scenario;

use scenario::Outcome;

/// The matrix as a Markdown table.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::from(
        "| # | scenario | result | acknowledged | lost | duplicates (largest range) | dead letter / poison | p99 ms | recovery s | peak lag | executors' peak MiB | figure |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for o in outcomes {
        let r = &o.reconciled;
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} ({}) | {} / {}{} | {} | {} | {} | {:.0} | {} |\n",
            o.row,
            o.name,
            if o.passed() {
                "pass".to_string()
            } else {
                format!("FAIL: {}", o.failures.join("; "))
            },
            r.acknowledged,
            r.lost,
            r.duplicates,
            r.largest_duplicate_range,
            r.dead_lettered,
            r.poison,
            if r.dead_letter_is_poison {
                " (equal)"
            } else {
                " (differ)"
            },
            r.p99_ms,
            o.recovery_s.map_or("-".to_string(), |s| format!("{s:.1}")),
            o.peak_lag,
            o.peak_memory_mib,
            o.figure,
        ));
    }
    out
}
