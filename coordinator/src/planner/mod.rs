//! The partition planner: which partition should run where.
//!
//! [`plan`] is a pure, deterministic function of the replicated state, the executors the
//! leader currently sees alive, and a handover budget (ordered maps, no clock, no
//! randomness). The leader commits its result as [`Command::ApplyPlan`]; every move names the
//! owner it was planned from, so a move that went stale in between is skipped.
//!
//! What it plans, in order:
//! 1. Unassigned partitions go to the least-loaded eligible executor with a free slot. Nothing
//!    runs them, so these assignments are not limited by the budget.
//! 2. Partitions that their owner may no longer run (it drains, or a GPU pipeline sits on a
//!    CPU executor), or that overflow their owner's slots, are handed over elsewhere.
//! 3. When 1 or 2 finds every eligible executor full, a partition that can run elsewhere is
//!    handed off one of them to make room (typically CPU work filling a GPU executor), or
//!    swapped with the waiting one.
//! 4. Balance, sticky: a running partition moves only if its owner has at least two more
//!    partitions than the executor that would take it.
//!
//! Handovers (2-4) stop a running partition at a checkpoint, so each plan holds at most
//! `max_moves` of them; the leader plans again once they are done.
//!
//! An executor is eligible for a pipeline when it is live, not draining, and has a GPU if the
//! pipeline needs one. Its load counts the partitions it owns with no handover under way plus
//! those being handed over to it; a partition under handover is not moved again. No
//! executor gets more partitions than its slots. Paused pipelines get no moves (their owners
//! are releasing them), and partitions of an executor that is registered but not live are
//! left alone: the leader expires it first, which unassigns them (a move must name the
//! current owner).
//!
//! [`Command::ApplyPlan`]: crate::state::Command::ApplyPlan

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use crate::state::{ClusterState, Executor, Move, PartitionKey, Pipeline};

/// The moves that bring `state` closer to every partition running on an eligible executor,
/// with loads within one of each other, using at most `max_moves` handovers.
///
/// `live` holds the executors whose lease the leader holds; the others are about to expire.
/// An empty result means there is nothing to do.
pub fn plan(state: &ClusterState, live: &BTreeSet<String>, max_moves: usize) -> Vec<Move> {
    let mut planner = Planner::new(state, live, max_moves);
    planner.assign_unassigned();
    planner.evacuate();
    planner.balance();
    planner.moves
}

/// The state as planned so far.
struct Planner<'a> {
    state: &'a ClusterState,
    live: &'a BTreeSet<String>,
    max_moves: usize,
    /// Partitions on each executor.
    load: BTreeMap<&'a str, u32>,
    /// Partitions of each (executor, pipeline): among equally loaded executors, the one with
    /// the fewest of a pipeline gets it, so that each pipeline spreads too.
    spread: BTreeMap<(&'a str, &'a str), u32>,
    /// What a handover may still move, by owner: partitions of live executors with no
    /// handover under way, of pipelines not paused.
    running: BTreeMap<&'a str, BTreeSet<&'a PartitionKey>>,
    moves: Vec<Move>,
    handovers: usize,
}

impl<'a> Planner<'a> {
    fn new(state: &'a ClusterState, live: &'a BTreeSet<String>, max_moves: usize) -> Self {
        let mut planner = Planner {
            state,
            live,
            max_moves,
            load: state.executors.keys().map(|id| (id.as_str(), 0)).collect(),
            spread: BTreeMap::new(),
            running: BTreeMap::new(),
            moves: Vec::new(),
            handovers: 0,
        };
        for (key, a) in &state.assignments {
            // A handover under way counts on its target: that is where the partition goes.
            if let Some(on) = a.target.as_deref().or(a.owner.as_deref()) {
                planner.count(on, &key.0, 1);
            }
            if let (Some(owner), None, Some(_)) = (&a.owner, &a.target, planner.active(key)) {
                if live.contains(owner) && state.executors.contains_key(owner) {
                    planner.running.entry(owner).or_default().insert(key);
                }
            }
        }
        planner
    }

    /// Step 1.
    fn assign_unassigned(&mut self) {
        for (key, a) in &self.state.assignments {
            let Some(pipeline) = self.active(key) else {
                continue;
            };
            if a.owner.is_some() || a.finished {
                continue;
            }
            match self.destination(pipeline, None) {
                Some(to) => self.record(key, None, to),
                None => {
                    self.make_room(pipeline, None);
                }
            }
        }
    }

    /// Steps 2 and 3 for partitions on an executor that may not run them, or too many.
    fn evacuate(&mut self) {
        for executor in self.state.executors.values() {
            let id = executor.id.as_str();
            let mut excess = self.load(id).saturating_sub(executor.slots);
            for key in self.running_on(id) {
                let pipeline = self.pipeline(key);
                if excess == 0 && self.eligible(executor, pipeline) {
                    continue;
                }
                if self.handovers >= self.max_moves {
                    return;
                }
                let handled = match self.destination(pipeline, Some(id)) {
                    Some(to) => {
                        self.record(key, Some(id), to);
                        true
                    }
                    None => self.make_room(pipeline, Some((key, executor))),
                };
                if handled {
                    excess = excess.saturating_sub(1);
                }
            }
        }
    }

    /// Step 3: no executor that may run a partition of `pipeline` has a free slot. Hands
    /// over, off a full one, a partition that can run on another with a free slot; the freed
    /// slot stays counted as taken in this plan, so that balancing does not fill it, and the
    /// waiting partition takes it in the next plan. Failing that, a partition `waiting` to
    /// leave an executor within its slots swaps with one that executor may run (two
    /// handovers: with a budget of one, a region with no free slot left cannot swap).
    fn make_room(
        &mut self,
        pipeline: &Pipeline,
        waiting: Option<(&'a PartitionKey, &'a Executor)>,
    ) -> bool {
        let owner = waiting.map(|(_, owner)| owner.id.as_str());
        for full in self.state.executors.values() {
            if Some(full.id.as_str()) == owner || !self.eligible(full, pipeline) {
                continue;
            }
            let full = full.id.as_str();
            for key in self.running_on(full) {
                if self.handovers >= self.max_moves {
                    return false;
                }
                let other = self.pipeline(key);
                if let Some(to) = self.destination(other, Some(full)) {
                    self.record(key, Some(full), to);
                    *self.load.entry(full).or_default() += 1;
                    return true;
                }
                if let Some((waiting, owner)) = waiting {
                    if self.handovers + 2 <= self.max_moves
                        && self.eligible(owner, other)
                        && self.load(&owner.id) <= owner.slots
                    {
                        self.record(key, Some(full), &owner.id);
                        self.record(waiting, Some(&owner.id), full);
                        return true;
                    }
                }
            }
        }
        false
    }

    /// Step 4: while the budget lasts, moves one partition from the most loaded executor
    /// that can give one to the least loaded that may take it, while they differ by two or
    /// more. Each such move lowers the sum of squared loads, so this ends.
    fn balance(&mut self) {
        while self.handovers < self.max_moves {
            let Some((key, from, to)) = self.balancing_move() else {
                return;
            };
            self.record(key, Some(from), to);
        }
    }

    fn balancing_move(&self) -> Option<(&'a PartitionKey, &'a str, &'a str)> {
        let mut sources: Vec<&'a Executor> = self.state.executors.values().collect();
        sources.sort_by_key(|e| (Reverse(self.load(&e.id)), &e.id));
        for from in sources {
            let candidates = self.running_on(&from.id).into_iter().filter_map(|key| {
                let pipeline = self.pipeline(key);
                if !self.eligible(from, pipeline) {
                    return None;
                }
                let to = self.destination(pipeline, Some(&from.id))?;
                if self.load(&from.id) < self.load(to) + 2 {
                    return None;
                }
                // Prefer the partition whose pipeline is most over-represented on `from`.
                let evens =
                    i64::from(self.spread(&from.id, &key.0)) - i64::from(self.spread(to, &key.0));
                Some(((evens, Reverse(key)), key, to))
            });
            if let Some((_, key, to)) = candidates.max_by_key(|(rank, _, _)| *rank) {
                return Some((key, from.id.as_str(), to));
            }
        }
        None
    }

    /// Where a partition of `pipeline` should go: an eligible executor other than `except`
    /// with a free slot, the least loaded, then the one with the fewest of the pipeline.
    fn destination(&self, pipeline: &Pipeline, except: Option<&str>) -> Option<&'a str> {
        self.state
            .executors
            .values()
            .filter(|e| Some(e.id.as_str()) != except && self.eligible(e, pipeline))
            .filter(|e| self.load(&e.id) < e.slots)
            .min_by_key(|e| (self.load(&e.id), self.spread(&e.id, &pipeline.name), &e.id))
            .map(|e| e.id.as_str())
    }

    fn record(&mut self, key: &'a PartitionKey, from: Option<&'a str>, to: &'a str) {
        if let Some(from) = from {
            self.count(from, &key.0, -1);
            if let Some(running) = self.running.get_mut(from) {
                running.remove(key);
            }
            self.handovers += 1;
        }
        self.count(to, &key.0, 1);
        self.moves.push(Move {
            pipeline: key.0.clone(),
            partition: key.1,
            from: from.map(str::to_string),
            to: to.to_string(),
        });
    }

    fn count(&mut self, executor: &'a str, pipeline: &'a str, delta: i32) {
        for n in [
            self.load.entry(executor).or_default(),
            self.spread.entry((executor, pipeline)).or_default(),
        ] {
            *n = n.saturating_add_signed(delta);
        }
    }

    fn eligible(&self, executor: &Executor, pipeline: &Pipeline) -> bool {
        self.live.contains(&executor.id) && !executor.draining && (executor.gpu || !pipeline.gpu)
    }

    /// The pipeline of a partition, unless it is paused (or gone).
    fn active(&self, key: &PartitionKey) -> Option<&'a Pipeline> {
        self.state
            .pipelines
            .get(&key.0)
            .filter(|p| !p.paused && p.is_local())
    }

    fn pipeline(&self, key: &PartitionKey) -> &'a Pipeline {
        &self.state.pipelines[&key.0]
    }

    fn load(&self, executor: &str) -> u32 {
        self.load.get(executor).copied().unwrap_or(0)
    }

    fn spread(&self, executor: &str, pipeline: &str) -> u32 {
        self.spread.get(&(executor, pipeline)).copied().unwrap_or(0)
    }

    /// A snapshot of what a handover may move off `executor`, in key order.
    fn running_on(&self, executor: &str) -> Vec<&'a PartitionKey> {
        self.running
            .get(executor)
            .map(|keys| keys.iter().copied().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
