//! The planner's unit and property tests.

use proptest::prelude::*;
use proptest::sample::Index;

use super::*;
use crate::state::{Assignment, Command, Outcome};

// ---- helpers -------------------------------------------------------------------------

fn register(state: &mut ClusterState, id: &str, slots: u32, gpu: bool) {
    state.apply(&Command::RegisterExecutor {
        id: id.into(),
        address: format!("{id}:7000"),
        region: "r".into(),
        slots,
        gpu,
    });
}

fn put_pipeline(state: &mut ClusterState, name: &str, partitions: u32, gpu: bool) {
    state.apply(&Command::PutPipeline {
        name: name.into(),
        spec: String::new(),
        partitions,
        gpu,
        failover: mirador_spec::FailoverMode::Manual,
    });
}

fn all_live(state: &ClusterState) -> BTreeSet<String> {
    state.executors.keys().cloned().collect()
}

/// Partitions per executor, a handover under way counting on its target.
fn loads(state: &ClusterState) -> BTreeMap<String, u32> {
    let mut loads: BTreeMap<String, u32> =
        state.executors.keys().map(|id| (id.clone(), 0)).collect();
    for a in state.assignments.values() {
        if let Some(on) = a.target.as_ref().or(a.owner.as_ref()) {
            *loads.entry(on.clone()).or_default() += 1;
        }
    }
    loads
}

fn owners_of(state: &ClusterState, pipeline: &str) -> Vec<Option<String>> {
    state
        .assignments
        .iter()
        .filter(|((p, _), _)| p == pipeline)
        .map(|(_, a)| a.owner.clone())
        .collect()
}

fn eligible(state: &ClusterState, live: &BTreeSet<String>, id: &str, pipeline: &str) -> bool {
    let (e, p) = (&state.executors[id], &state.pipelines[pipeline]);
    live.contains(id) && !e.draining && (e.gpu || !p.gpu)
}

/// What executors do once a plan is committed: each live owner finishes its handovers and
/// releases the partitions of paused pipelines.
fn complete_handovers(
    state: &mut ClusterState,
    live: &BTreeSet<String>,
) -> Result<(), TestCaseError> {
    let releases: Vec<Command> = state
        .assignments
        .iter()
        .filter(|((p, _), a)| a.target.is_some() || state.pipelines[p].paused)
        .filter_map(|((p, i), a)| {
            let owner = a.owner.clone().filter(|o| live.contains(o))?;
            Some(Command::Release {
                pipeline: p.clone(),
                partition: *i,
                executor: owner,
                epoch: a.epoch,
                finished: false,
            })
        })
        .collect();
    for release in releases {
        prop_assert_eq!(state.apply(&release), Outcome::Done);
    }
    Ok(())
}

/// Plans with all executors live and completes the handovers until the plan is empty.
fn settle(state: &mut ClusterState, max_moves: usize) -> usize {
    let live = all_live(state);
    for round in 0..1000 {
        let moves = plan(state, &live, max_moves);
        if moves.is_empty() {
            return round;
        }
        assert!(moves.iter().filter(|m| m.from.is_some()).count() <= max_moves);
        state.apply(&Command::ApplyPlan { moves });
        complete_handovers(state, &live).unwrap();
    }
    panic!("no convergence in 1000 rounds");
}

// ---- examples ------------------------------------------------------------------------

#[test]
fn new_partitions_spread_over_executors_and_pipelines() {
    let mut state = ClusterState::default();
    register(&mut state, "a", 8, false);
    register(&mut state, "b", 8, false);
    put_pipeline(&mut state, "p", 4, false);
    put_pipeline(&mut state, "q", 4, false);
    let moves = plan(&state, &all_live(&state), 0);
    assert_eq!(moves.len(), 8, "assignments are not limited by max_moves");
    state.apply(&Command::ApplyPlan { moves });
    for pipeline in ["p", "q"] {
        let owners = owners_of(&state, pipeline);
        let on_a = owners.iter().filter(|o| o.as_deref() == Some("a")).count();
        assert_eq!(on_a, 2, "{pipeline}: {owners:?}");
    }
    assert_eq!(plan(&state, &all_live(&state), 10), vec![]);
}

#[test]
fn a_killed_executors_partitions_go_to_the_survivors() {
    let mut state = ClusterState::default();
    for id in ["a", "b", "c"] {
        register(&mut state, id, 8, false);
    }
    put_pipeline(&mut state, "p", 9, false);
    settle(&mut state, 1);
    assert_eq!(loads(&state)["c"], 3);

    // Missed heartbeats: not live yet not expired, so its partitions wait for expiry.
    let live: BTreeSet<String> = ["a".into(), "b".into()].into();
    assert_eq!(plan(&state, &live, 10), vec![]);

    state.apply(&Command::ExpireExecutor {
        id: "c".into(),
        incarnation: state.executors["c"].incarnation,
    });
    let moves = plan(&state, &all_live(&state), 0);
    assert_eq!(moves.len(), 3);
    assert!(moves.iter().all(|m| m.from.is_none()));
    state.apply(&Command::ApplyPlan { moves });
    let loads = loads(&state);
    assert_eq!((loads["a"], loads["b"]), (5, 4));
    assert!(owners_of(&state, "p").iter().all(Option::is_some));
}

#[test]
fn a_drained_executor_ends_empty() {
    let mut state = ClusterState::default();
    for id in ["a", "b", "c"] {
        register(&mut state, id, 8, false);
    }
    put_pipeline(&mut state, "p", 12, false);
    settle(&mut state, 2);
    state.apply(&Command::SetDraining {
        id: "a".into(),
        draining: true,
    });
    let moves = plan(&state, &all_live(&state), 2);
    assert_eq!(moves.len(), 2, "at most max_moves handovers: {moves:?}");
    assert!(moves.iter().all(|m| m.from.as_deref() == Some("a")));
    settle(&mut state, 2);
    assert_eq!(loads(&state)["a"], 0);
    assert_eq!((loads(&state)["b"], loads(&state)["c"]), (6, 6));
}

#[test]
fn gpu_pipelines_run_only_on_gpu_executors() {
    let mut state = ClusterState::default();
    register(&mut state, "cpu", 16, false);
    register(&mut state, "gpu", 12, true);
    put_pipeline(&mut state, "scored", 3, true);
    put_pipeline(&mut state, "plain", 6, false);
    settle(&mut state, 1);
    for owner in owners_of(&state, "scored") {
        assert_eq!(owner.as_deref(), Some("gpu"));
    }
    // Once a pipeline needs a GPU, its partitions leave CPU executors.
    put_pipeline(&mut state, "plain", 6, true);
    settle(&mut state, 1);
    let owners = owners_of(&state, "plain");
    assert!(
        owners.iter().all(|o| o.as_deref() != Some("cpu")),
        "{owners:?}"
    );
}

#[test]
fn cpu_work_makes_room_for_a_gpu_pipeline() {
    let mut state = ClusterState::default();
    register(&mut state, "cpu", 16, false);
    register(&mut state, "gpu", 4, true);
    put_pipeline(&mut state, "plain", 10, false);
    settle(&mut state, 4);
    assert_eq!(
        loads(&state)["gpu"],
        4,
        "balanced up to the GPU executor's slots"
    );

    put_pipeline(&mut state, "scored", 2, true);
    settle(&mut state, 4);
    assert_eq!(owners_of(&state, "scored"), vec![Some("gpu".into()); 2]);
    assert_eq!(loads(&state)["cpu"], 8);
}

#[test]
fn slots_are_never_exceeded() {
    let mut state = ClusterState::default();
    register(&mut state, "a", 4, false);
    register(&mut state, "b", 5, false);
    put_pipeline(&mut state, "p", 12, false);
    settle(&mut state, 4);
    assert_eq!((loads(&state)["a"], loads(&state)["b"]), (4, 5));
    let unassigned = owners_of(&state, "p")
        .iter()
        .filter(|o| o.is_none())
        .count();
    assert_eq!(unassigned, 3);
}

#[test]
fn a_new_executor_takes_its_share_a_few_moves_at_a_time() {
    let mut state = ClusterState::default();
    register(&mut state, "a", 16, false);
    register(&mut state, "b", 16, false);
    put_pipeline(&mut state, "p", 12, false);
    settle(&mut state, 1);
    register(&mut state, "c", 16, false);
    let moves = plan(&state, &all_live(&state), 3);
    assert_eq!(moves.len(), 3);
    assert!(moves.iter().all(|m| m.to == "c" && m.from.is_some()));
    let rounds = settle(&mut state, 3);
    assert_eq!(rounds, 2);
    assert!(loads(&state).values().all(|&n| n == 4));
}

#[test]
fn a_handover_under_way_counts_on_its_target_and_is_left_alone() {
    let mut state = ClusterState::default();
    register(&mut state, "a", 8, false);
    register(&mut state, "b", 8, false);
    put_pipeline(&mut state, "p", 4, false);
    let all_to_a = (0..4)
        .map(|i| Move {
            pipeline: "p".into(),
            partition: i,
            from: None,
            to: "a".into(),
        })
        .collect();
    state.apply(&Command::ApplyPlan { moves: all_to_a });
    let to_b = |i| Move {
        pipeline: "p".into(),
        partition: i,
        from: Some("a".into()),
        to: "b".into(),
    };
    state.apply(&Command::ApplyPlan {
        moves: vec![to_b(0), to_b(1)],
    });
    // a runs 4 but two are on their way to b: 2 and 2, nothing to do.
    assert_eq!(plan(&state, &all_live(&state), 10), vec![]);
}

#[test]
fn paused_pipelines_get_no_moves() {
    let mut state = ClusterState::default();
    register(&mut state, "a", 8, false);
    put_pipeline(&mut state, "p", 4, false);
    settle(&mut state, 1);
    register(&mut state, "b", 8, false);
    state.apply(&Command::SetPaused {
        name: "p".into(),
        paused: true,
    });
    put_pipeline(&mut state, "p", 6, false);
    assert_eq!(plan(&state, &all_live(&state), 10), vec![]);
}

#[test]
fn a_balanced_cluster_is_left_alone() {
    let mut state = ClusterState::default();
    register(&mut state, "a", 8, false);
    register(&mut state, "b", 8, true);
    put_pipeline(&mut state, "p", 5, false);
    put_pipeline(&mut state, "q", 2, true);
    settle(&mut state, 1);
    let before = state.clone();
    assert_eq!(plan(&state, &all_live(&state), 100), vec![]);
    assert_eq!(state, before);
}

// ---- properties ----------------------------------------------------------------------

/// A generated region: a state as the log could have left it (loads may even exceed
/// slots, as after a stale plan), the live executors and the handover budget.
#[derive(Clone, Debug)]
struct Scenario {
    state: ClusterState,
    live: BTreeSet<String>,
    max_moves: usize,
}

/// Kinds of regions: `gpu` allows GPU executors and pipelines, `faults` allows draining
/// and dead (not yet expired) executors.
fn scenario(gpu: bool, faults: bool) -> impl Strategy<Value = Scenario> {
    let flag = move |allowed: bool, p: f64| {
        if allowed {
            proptest::bool::weighted(p).boxed()
        } else {
            Just(false).boxed()
        }
    };
    let executor = (
        4u32..16,
        flag(gpu, 0.4),
        flag(faults, 0.2),
        flag(faults, 0.15),
    );
    let partition = (
        proptest::option::weighted(0.7, any::<Index>()),
        proptest::option::weighted(0.15, any::<Index>()),
        0u64..5,
    );
    let pipeline = (
        1u32..=16,
        flag(gpu, 0.3),
        proptest::bool::weighted(0.2),
        proptest::collection::vec(partition, 16),
    );
    (
        proptest::collection::vec(executor, 1..=6),
        proptest::collection::vec(pipeline, 1..=4),
        1usize..=4,
    )
        .prop_map(|(executors, pipelines, max_moves)| {
            let mut state = ClusterState::default();
            let mut live = BTreeSet::new();
            let ids: Vec<String> = (0..executors.len()).map(|i| format!("e{i}")).collect();
            for (id, &(slots, gpu, draining, dead)) in ids.iter().zip(&executors) {
                let executor = Executor {
                    id: id.clone(),
                    address: String::new(),
                    region: "r".into(),
                    slots,
                    gpu,
                    incarnation: 1,
                    draining,
                };
                state.executors.insert(id.clone(), executor);
                if !dead {
                    live.insert(id.clone());
                }
            }
            for (n, (partitions, gpu, paused, owners)) in pipelines.into_iter().enumerate() {
                let name = format!("p{n}");
                for (i, (owner, target, epoch)) in owners.into_iter().enumerate() {
                    if i as u32 >= partitions {
                        break;
                    }
                    let owner = owner.map(|o| ids[o.index(ids.len())].clone());
                    // Pausing clears targets; an unowned partition has none.
                    let target = target
                        .map(|t| ids[t.index(ids.len())].clone())
                        .filter(|t| !paused && owner.as_ref().is_some_and(|o| o != t));
                    let assignment = Assignment {
                        owner,
                        epoch,
                        target,
                        finished: false,
                    };
                    state
                        .assignments
                        .insert((name.clone(), i as u32), assignment);
                }
                let pipeline = Pipeline {
                    name: name.clone(),
                    version: 1,
                    spec: String::new(),
                    partitions,
                    gpu,
                    paused,
                    failover: mirador_spec::FailoverMode::Manual,
                    owned_by: None,
                    region_epoch: 1,
                };
                state.pipelines.insert(name, pipeline);
            }
            Scenario {
                state,
                live,
                max_moves,
            }
        })
}

/// Every partition of every pipeline is there exactly once, owned and targeted by known
/// executors if at all.
fn check_partitions(state: &ClusterState) -> Result<(), TestCaseError> {
    let expected: BTreeSet<PartitionKey> = state
        .pipelines
        .values()
        .flat_map(|p| (0..p.partitions).map(|i| (p.name.clone(), i)))
        .collect();
    let present: BTreeSet<PartitionKey> = state.assignments.keys().cloned().collect();
    prop_assert_eq!(present, expected);
    for a in state.assignments.values() {
        for id in a.owner.iter().chain(&a.target) {
            prop_assert!(state.executors.contains_key(id), "unknown executor {}", id);
        }
        prop_assert!(a.target.is_none() || a.target != a.owner);
    }
    Ok(())
}

/// One round: plan, check the plan, commit it, let the executors complete it.
fn round(
    state: &mut ClusterState,
    live: &BTreeSet<String>,
    max_moves: usize,
) -> Result<Vec<Move>, TestCaseError> {
    let moves = plan(state, live, max_moves);
    prop_assert_eq!(
        &moves,
        &plan(&state.clone(), live, max_moves),
        "not deterministic"
    );
    let handovers = moves.iter().filter(|m| m.from.is_some()).count();
    prop_assert!(
        handovers <= max_moves,
        "{} handovers: {:?}",
        handovers,
        moves
    );
    let mut moved = BTreeSet::new();
    for m in &moves {
        prop_assert!(
            moved.insert((&m.pipeline, m.partition)),
            "moved twice: {:?}",
            m
        );
        prop_assert!(
            eligible(state, live, &m.to, &m.pipeline),
            "ineligible: {:?}",
            m
        );
    }

    let before = loads(state);
    let outcome = state.apply(&Command::ApplyPlan {
        moves: moves.clone(),
    });
    prop_assert_eq!(
        outcome,
        Outcome::Applied { moves: moves.len() },
        "stale moves"
    );
    check_partitions(state)?;
    for (id, load) in loads(state) {
        let slots = state.executors[&id].slots;
        prop_assert!(load <= slots.max(before[&id]), "{} over its slots", id);
    }

    complete_handovers(state, live)?;
    check_partitions(state)?;
    Ok(moves)
}

/// Plays the scenario until the plan is empty: the leader expires the dead executors
/// after the first round. Returns the settled state.
fn converge(scenario: &Scenario) -> Result<ClusterState, TestCaseError> {
    let mut state = scenario.state.clone();
    round(&mut state, &scenario.live, scenario.max_moves)?;
    let dead: Vec<String> = state
        .executors
        .keys()
        .filter(|id| !scenario.live.contains(*id))
        .cloned()
        .collect();
    for id in dead {
        let expire = Command::ExpireExecutor { id, incarnation: 1 };
        prop_assert_eq!(state.apply(&expire), Outcome::Done);
    }
    check_partitions(&state)?;
    let live = all_live(&state);
    for _ in 0..500 {
        if round(&mut state, &live, scenario.max_moves)?.is_empty() {
            return Ok(state);
        }
    }
    Err(TestCaseError::fail("no convergence in 500 rounds"))
}

/// Total slots of the executors that may run anything, and of those with a GPU, cover the
/// partitions of the running pipelines, and of those that need a GPU.
fn capacity_suffices(state: &ClusterState) -> bool {
    let usable = || state.executors.values().filter(|e| !e.draining);
    let slots: u32 = usable().map(|e| e.slots).sum();
    let gpu_slots: u32 = usable().filter(|e| e.gpu).map(|e| e.slots).sum();
    let running = || state.pipelines.values().filter(|p| !p.paused);
    let demand: u32 = running().map(|p| p.partitions).sum();
    let gpu_demand: u32 = running().filter(|p| p.gpu).map(|p| p.partitions).sum();
    demand <= slots && gpu_demand <= gpu_slots
}

/// Enough slots for a full assignment to be reached: a region with no free slot left
/// needs swaps, which take a budget of two.
fn reachable(scenario: &Scenario, state: &ClusterState) -> bool {
    let usable = state.executors.values().filter(|e| !e.draining);
    let slots: u32 = usable.map(|e| e.slots).sum();
    let running = state.pipelines.values().filter(|p| !p.paused);
    let demand: u32 = running.map(|p| p.partitions).sum();
    capacity_suffices(state) && (scenario.max_moves >= 2 || demand < slots)
}

/// Nothing left to improve: a partition waits (unassigned, or on an executor that may not
/// run it) only while every executor that may take it is full, and a running one's
/// executor is within its slots and one partition of every non-full executor that could
/// take it.
fn check_settled(state: &ClusterState) -> Result<(), TestCaseError> {
    let live = all_live(state);
    let loads = loads(state);
    let full = |id: &str| loads[id] >= state.executors[id].slots;
    for ((pipeline, i), a) in &state.assignments {
        prop_assert!(a.target.is_none());
        if state.pipelines[pipeline].paused {
            prop_assert!(a.owner.is_none(), "{}/{} paused but owned", pipeline, i);
            continue;
        }
        let takers: Vec<&String> = state
            .executors
            .keys()
            .filter(|id| Some(*id) != a.owner.as_ref() && eligible(state, &live, id, pipeline))
            .collect();
        match &a.owner {
            Some(o) if eligible(state, &live, o, pipeline) => {
                for b in takers.into_iter().filter(|b| !full(b)) {
                    let slots = state.executors[o].slots;
                    prop_assert!(loads[o] <= slots, "{} over its slots, {} free", o, b);
                    prop_assert!(loads[o] <= loads[b] + 1, "{} vs {}", o, b);
                }
            }
            _ => {
                let waits = takers.into_iter().all(|b| full(b));
                prop_assert!(waits, "{}/{} waits on {:?}", pipeline, i, a.owner);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any region converges, moving at most `max_moves` running partitions a round,
    /// never losing nor doubling one, to a state where planning again does nothing and
    /// nothing could be improved.
    #[test]
    fn any_region_converges_to_a_settled_state(scenario in scenario(true, true)) {
        let state = converge(&scenario)?;
        check_settled(&state)?;
    }

    /// With enough slots every running pipeline's partition ends on an executor that may
    /// run it: GPU pipelines on GPU executors, and nothing on draining executors.
    #[test]
    fn with_enough_slots_everything_runs_where_it_may(scenario in scenario(true, true)) {
        let state = converge(&scenario)?;
        prop_assume!(reachable(&scenario, &state));
        let live = all_live(&state);
        for ((pipeline, i), a) in &state.assignments {
            let owner = a.owner.as_deref();
            if state.pipelines[pipeline].paused {
                continue;
            }
            let ok = owner.is_some_and(|o| eligible(&state, &live, o, pipeline));
            prop_assert!(ok, "{}/{} on {:?}", pipeline, i, owner);
        }
        for (id, load) in loads(&state) {
            let e = &state.executors[&id];
            prop_assert!(load <= e.slots);
            prop_assert!(!e.draining || load == 0, "draining {} runs {}", id, load);
        }
    }

    /// Without GPUs or faults every executor may run everything: loads end within one of
    /// each other, except that a full executor may hold fewer.
    #[test]
    fn loads_end_within_one(scenario in scenario(false, false)) {
        let state = converge(&scenario)?;
        let loads = loads(&state);
        for (a, &la) in &loads {
            for (b, &lb) in &loads {
                let b_full = lb >= state.executors[b].slots;
                prop_assert!(la <= lb + 1 || b_full, "{}: {}, {}: {}", a, la, b, lb);
            }
        }
        if capacity_suffices(&state) {
            let waiting = state
                .assignments
                .iter()
                .filter(|((p, _), a)| !state.pipelines[p].paused && a.owner.is_none());
            prop_assert_eq!(waiting.count(), 0);
        }
    }

    /// A settled region stays as it is, whatever the budget (but for a swap, which a
    /// budget of one could not afford).
    #[test]
    fn a_settled_region_gets_no_moves(scenario in scenario(true, true), budget in 0usize..100) {
        let state = converge(&scenario)?;
        let budget = if scenario.max_moves == 1 { budget.min(1) } else { budget };
        prop_assert_eq!(plan(&state, &all_live(&state), budget), vec![]);
    }
}
