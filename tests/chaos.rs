//! The deployment of docker-compose.yml, as `make test` checks it: both regions up from
//! images of this build's binaries, a steady load with poison, one executor killed with
//! SIGKILL, and every input reconciled. The whole matrix is `make chaos`.

use std::path::{Path, PathBuf};
use std::process::Command;

use mirador_cluster_tests::chaos::deployment::Deployment;
use mirador_cluster_tests::chaos::scenario::{execute, smoke, Settings};
use mirador_cluster_tests::chaos::table;

/// Images tagged `test` of the binaries this test was built with (the base images first
/// if they are missing: a few minutes, once).
fn images(mirador: &Path) {
    let target = mirador
        .parent()
        .and_then(Path::parent)
        .expect("the binary lies in <target>/debug");
    let status = Command::new("deploy/images.sh")
        .args(["--profile", "debug"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", target)
        .env("TAG", "test")
        .status()
        .expect("deploy/images.sh runs (it needs docker and debootstrap)");
    assert!(
        status.success(),
        "deploy/images.sh could not build the images"
    );
}

#[test]
fn the_deployment_loses_nothing_when_an_executor_is_killed() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mirador = PathBuf::from(env!("CARGO_BIN_EXE_mirador"));
    images(&mirador);
    let deployment = Deployment::new("miradortest", "172.28", &root, &mirador, "test");
    let settings = Settings {
        rate: 1000,
        poison_share: 0.01,
        spec: root.join("examples/compose.yaml"),
        logs: std::env::temp_dir().join("mirador-chaos-logs"),
    };
    let outcome = execute(&smoke(), &deployment, &settings);
    let report = table(std::slice::from_ref(&outcome));
    assert!(outcome.passed(), "{report}");
    let reconciled = &outcome.reconciled;
    assert!(reconciled.acknowledged > 10_000, "{report}");
    assert_eq!(reconciled.lost, 0, "{report}");
    assert!(
        reconciled.poison > 0 && reconciled.dead_letter_is_poison,
        "{report}"
    );
    eprintln!("{report}");
}
