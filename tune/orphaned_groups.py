"""Freeing the Train worker placement groups that trials stopped early leave behind.

When Tune stops a trial (ASHA, an interrupted sweep), the trial's actor exits and takes its Ray Train
controller with it; the controller's worker placement group is not detached, but a placement group only
goes away when both its creator actor *and* its job are dead, and the job (the sweep driver) lives on.
Train V2 launches a cleaner for exactly this case, but it asks the State API whether the controller is
alive, which needs the dashboard; without it (tests, 2-core machines) the group keeps its CPUs for the
rest of the Ray session and later trials wait for them forever. So the sweep removes, from the GCS
table, every created, non-detached group whose creator actor is dead: no one can use it any more.
"""

from __future__ import annotations

import time

import ray
import ray.tune
from ray._private.state import state
from ray.core.generated import gcs_pb2
from ray.util.placement_group import PlacementGroup, remove_placement_group

_CREATED = gcs_pb2.PlacementGroupTableData.CREATED


def _table() -> list:
    return [gcs_pb2.PlacementGroupTableData.FromString(raw)
            for raw in state._connect_and_get_accessor().get_placement_group_table()]


def _orphaned(entry) -> bool:
    creator = entry.creator_actor_id
    by_actor = bool(creator) and creator != b"\xff" * len(creator)  # the driver's groups have a nil creator
    return entry.state == _CREATED and not entry.is_detached and by_actor and entry.creator_actor_dead


def remove_orphaned_placement_groups() -> list[str]:
    """Remove every created, non-detached placement group whose creator actor is dead; their ids (hex)."""
    removed = []
    for entry in _table():
        if _orphaned(entry):
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(entry.placement_group_id)))
            removed.append(entry.placement_group_id.hex())
    return removed


def live_actor_groups() -> set[str]:
    """Ids (hex) of the created groups whose creator actor is still alive."""
    return {e.placement_group_id.hex() for e in _table()
            if e.state == _CREATED and not _orphaned(e) and not e.is_detached and e.creator_actor_id
            and e.creator_actor_id != b"\xff" * len(e.creator_actor_id)}


SETTLE_TIMEOUT_S = 90.0
"""How long a sweep waits for the groups of its stopped trials to lose their creators. Measured on a loaded machine:
a last stopped trial's Train controller was still alive 60 s after the sweep returned, and its group kept its CPUs
for the rest of the Ray session. The cause is fixed where trials stop (``tune.trial_stop`` ends the run in Tune's
cleanup); this wait is the bound for what remains. Only waited out while such a creator lives."""


def settle(before: set[str], *, timeout_s: float = SETTLE_TIMEOUT_S) -> list[str]:
    """After a sweep: wait until no group created during it (not in ``before``) has a live creator, removing
    orphans as they appear; returns the removed ids. Trial actors stop asynchronously, their controllers after."""
    removed, deadline = [], time.time() + timeout_s
    while True:
        removed += remove_orphaned_placement_groups()
        if not (live_actor_groups() - before) or time.time() > deadline:
            return removed
        time.sleep(0.5)


class OrphanedGroupSweeper(ray.tune.Callback):
    """Tune callback: removes orphaned placement groups every ``interval_s`` while the sweep runs."""

    def __init__(self, interval_s: float = 2.0):
        self.interval_s = interval_s
        self.removed: list[str] = []
        self._last = 0.0

    def on_step(self, iteration, trials, **info):
        if time.time() - self._last >= self.interval_s:
            self._last = time.time()
            self.removed += remove_orphaned_placement_groups()
