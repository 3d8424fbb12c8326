//! What the agent must do to make the partitions running here match an assignment set: a
//! pure function, property-tested, that the agent then carries out.

use std::collections::BTreeMap;

/// (pipeline, partition).
pub type Key = (String, u32);

/// A partition running here, as far as reconciling goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Current {
    pub epoch: u64,
    pub version: u64,
    /// The coordinators refused one of its commits: it may commit nothing more.
    pub fenced: bool,
}

/// What an assignment set asks of a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Desired {
    pub epoch: u64,
    pub version: u64,
    /// False: stop it at a checkpoint and release it (a handover or a pause).
    pub run: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Stop at a checkpoint and commit it under the running epoch; `release` hands the
    /// partition back to the coordinators afterwards.
    Stop { key: Key, release: bool },
    /// Stop at once and commit nothing: the epoch is stale, the partition is gone from the
    /// set, or it is fenced.
    Abandon { key: Key },
    /// Start under the desired epoch and version.
    Start { key: Key },
}

/// The actions, stops and abandons first, then starts. A partition is kept as it runs when
/// it is desired running under the same epoch and version and is not fenced. One stopped
/// for a new version under the same epoch is stopped (its checkpoint committed) and started
/// again.
pub fn reconcile(
    running: &BTreeMap<Key, Current>,
    desired: &BTreeMap<Key, Desired>,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut stays = Vec::new();
    for (key, current) in running {
        let wanted = desired.get(key);
        match wanted {
            Some(d)
                if d.run
                    && d.epoch == current.epoch
                    && d.version == current.version
                    && !current.fenced =>
            {
                stays.push(key);
            }
            Some(d) if d.epoch == current.epoch && !current.fenced => actions.push(Action::Stop {
                key: key.clone(),
                release: !d.run,
            }),
            _ => actions.push(Action::Abandon { key: key.clone() }),
        }
    }
    for (key, d) in desired {
        if d.run && !stays.contains(&key) {
            actions.push(Action::Start { key: key.clone() });
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn key(partition: u32) -> Key {
        ("p".to_string(), partition)
    }

    /// Up to 8 partitions of one pipeline, each with an epoch, a version and a flag.
    fn partitions<T: std::fmt::Debug>(
        value: fn((u64, u64, bool)) -> T,
    ) -> impl Strategy<Value = BTreeMap<Key, T>> {
        prop::collection::btree_map(
            (0u32..8).prop_map(key),
            (1u64..4, 1u64..3, any::<bool>()).prop_map(value),
            0..8,
        )
    }

    fn running_maps() -> impl Strategy<Value = BTreeMap<Key, Current>> {
        partitions(|(epoch, version, fenced)| Current {
            epoch,
            version,
            fenced,
        })
    }

    fn desired_maps() -> impl Strategy<Value = BTreeMap<Key, Desired>> {
        partitions(|(epoch, version, run)| Desired {
            epoch,
            version,
            run,
        })
    }

    /// Carries the actions out on a model of what runs here.
    fn apply(
        running: &BTreeMap<Key, Current>,
        desired: &BTreeMap<Key, Desired>,
        actions: &[Action],
    ) -> BTreeMap<Key, Current> {
        let mut now = running.clone();
        for action in actions {
            match action {
                Action::Stop { key, .. } | Action::Abandon { key } => {
                    assert!(now.remove(key).is_some(), "{key:?} stopped but not running");
                }
                Action::Start { key } => {
                    let d = desired[key];
                    let previous = now.insert(
                        key.clone(),
                        Current {
                            epoch: d.epoch,
                            version: d.version,
                            fenced: false,
                        },
                    );
                    assert!(previous.is_none(), "{key:?} started while running");
                }
            }
        }
        now
    }

    proptest! {
        #[test]
        fn afterwards_exactly_the_desired_partitions_run_under_their_epoch_and_version(
            running in running_maps(), desired in desired_maps()
        ) {
            let actions = reconcile(&running, &desired);
            let after = apply(&running, &desired, &actions);
            let wanted: BTreeSet<&Key> =
                desired.iter().filter(|(_, d)| d.run).map(|(k, _)| k).collect();
            prop_assert_eq!(after.keys().collect::<BTreeSet<_>>(), wanted);
            for (key, r) in &after {
                prop_assert_eq!((r.epoch, r.version), (desired[key].epoch, desired[key].version));
                prop_assert!(!r.fenced);
            }
        }

        #[test]
        fn only_a_current_unfenced_epoch_commits_on_its_way_out(
            running in running_maps(), desired in desired_maps()
        ) {
            for action in reconcile(&running, &desired) {
                match action {
                    Action::Stop { key, release } => {
                        let r = running[&key];
                        let d = desired.get(&key).expect("a stop is for a desired partition");
                        prop_assert_eq!(r.epoch, d.epoch);
                        prop_assert!(!r.fenced);
                        prop_assert_eq!(release, !d.run);
                    }
                    Action::Abandon { key } => {
                        let r = running[&key];
                        prop_assert!(
                            r.fenced || desired.get(&key).is_none_or(|d| d.epoch != r.epoch)
                        );
                    }
                    Action::Start { .. } => {}
                }
            }
        }

        #[test]
        fn what_runs_as_desired_is_left_alone_and_stops_come_before_starts(
            running in running_maps(), desired in desired_maps()
        ) {
            let actions = reconcile(&running, &desired);
            for (key, r) in &running {
                let settled = desired.get(key).is_some_and(|d| {
                    d.run && d.epoch == r.epoch && d.version == r.version && !r.fenced
                });
                let touched = actions.iter().any(|a| match a {
                    Action::Stop { key: k, .. } | Action::Abandon { key: k } | Action::Start { key: k } => k == key,
                });
                prop_assert_eq!(touched, !settled, "{:?}", key);
            }
            let first_start = actions.iter().position(|a| matches!(a, Action::Start { .. }));
            if let Some(first) = first_start {
                let starts_only = actions[first..]
                    .iter()
                    .all(|a| matches!(a, Action::Start { .. }));
                prop_assert!(starts_only, "a stop after a start: {:?}", actions);
            }
            // Reconciling again what the actions left is a no-op.
            let after = apply(&running, &desired, &actions);
            prop_assert!(reconcile(&after, &desired).is_empty());
        }
    }

    fn current(epoch: u64, version: u64, fenced: bool) -> Current {
        Current {
            epoch,
            version,
            fenced,
        }
    }

    fn desired(epoch: u64, version: u64, run: bool) -> Desired {
        Desired {
            epoch,
            version,
            run,
        }
    }

    #[test]
    fn a_new_version_under_the_same_epoch_stops_with_a_commit_then_starts() {
        let running = BTreeMap::from([(key(0), current(2, 1, false))]);
        let desired = BTreeMap::from([(key(0), desired(2, 2, true))]);
        assert_eq!(
            reconcile(&running, &desired),
            vec![
                Action::Stop {
                    key: key(0),
                    release: false
                },
                Action::Start { key: key(0) }
            ]
        );
    }

    #[test]
    fn a_handover_stops_and_releases_and_a_new_epoch_abandons() {
        let running = BTreeMap::from([
            (key(0), current(2, 1, false)),
            (key(1), current(2, 1, false)),
            (key(2), current(2, 1, true)),
        ]);
        let desired = BTreeMap::from([
            (key(0), desired(2, 1, false)),
            (key(1), desired(3, 1, true)),
            (key(2), desired(2, 1, true)),
        ]);
        assert_eq!(
            reconcile(&running, &desired),
            vec![
                Action::Stop {
                    key: key(0),
                    release: true
                },
                Action::Abandon { key: key(1) },
                Action::Abandon { key: key(2) },
                Action::Start { key: key(1) },
                Action::Start { key: key(2) },
            ]
        );
    }
}
