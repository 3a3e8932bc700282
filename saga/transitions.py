"""One statement per step success on PostgreSQL: lock, record, release, dispatch, log.

A step's success used to cost a locked read-modify-write conversation with the database:
lock the run, record the step, release its dependents, read them back, dispatch those now
due, write the history, save the run, commit (four round trips, seven statements).  When
everything the engine would decide is known before the transaction (the common case: each
dependent waits for this step alone, is in no group, waits for no timer, signal or child run,
and its arguments and conditions read only this step's result and the run's inputs), the
whole transition is one conditional statement (:data:`SUCCEED_AND_ADVANCE`):

1. lock the run row if the run is ``running`` (``FOR NO KEY UPDATE``, forced first by the
   scalar subqueries below, so every transition of a run takes its row lock before any step
   row: the order the engine's other transactions use);
2. record the step's success if the delivery's claim still holds it;
3. count the completion on the run and, if it was the last open step, finish the run;
4. release each dependent and dispatch it (claimed for its message) if it was pending and
   this was its last dependency: the same test ``remaining_deps`` reaching zero that makes a
   fan-in fire exactly once, applied by the row update itself;
5. insert the history entries, in the order the general path writes them.

Every part after 1 depends on 2 having changed a row, so the statement changes nothing
unless the delivery is current and the run running; then the engine takes the general path
(which handles a stale delivery, an unwinding run and everything else).  The facts the plan
needs (the run's inputs, the dependents' definitions) come with the claim's read
(:data:`DISPATCHED_WITH_SUCCESSORS`), which a first delivery makes anyway.

A status test is written ``(status = ...) IS TRUE``, which no index serves: on a young table
(no statistics yet) the planner would otherwise scan the status index over every running run
instead of the primary key, and replan the statement each time (two milliseconds of server CPU).
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import text

from storage import RunStatus, StepStatus

from . import history as log
from .values import MissingValue, call_arguments, conditions_hold, referenced_steps

#: The claim read of a first delivery (``statements.DISPATCHED_STEP``) with what planning the
#: step's success needs: the run's inputs and concurrency key, and the dependents that wait
#: for nothing else and are in no group (a dependent left out makes the plan fall back).
#: Parameters: ``b_run, b_step, b_epoch, b_dispatch, b_lease_floor, b_now``.
DISPATCHED_WITH_SUCCESSORS = text(
    f"""
SELECT s.attempts, s.checkpoint, s.progress, s.dependents,
       r.inputs AS run_inputs, r.concurrency_key AS run_key,
       (SELECT json_agg(json_build_object('name', d.name, 'actor', d.actor, 'spec', d.spec))
          FROM workflow_steps AS d
         WHERE d.run_id = s.run_id
           AND d.name IN (SELECT json_array_elements_text(s.dependents))
           AND json_array_length(d.depends_on) = 1
           AND d.group_name IS NULL) AS successors
  FROM workflow_steps AS s JOIN workflow_runs AS r ON r.run_id = s.run_id
 WHERE s.run_id = :b_run AND s.name = :b_step AND s.epoch = :b_epoch
   AND (s.status = '{StepStatus.RUNNING}') IS TRUE AND s.claim = :b_dispatch
   AND s.lease_until > :b_lease_floor
   AND (r.status = '{RunStatus.RUNNING}') IS TRUE
   AND (r.deadline_at IS NULL OR r.deadline_at > :b_now)
"""
)

#: The columns of the run :data:`SUCCEED_AND_ADVANCE` returns: what the engine's messages, its
#: status hook, the run's end span and a child run's parent need.
RUN_COLUMNS = ("run_id", "workflow", "status", "error", "concurrency_key", "parent_run_id", "parent_step")

# A dependent is due when this success is its last dependency and it still waits.
_DUE = f"s.status = '{StepStatus.PENDING}' AND s.remaining_deps = 1"

#: Record a step's success and advance its run, in one statement (see the module).  Parameters:
#: ``b_run, b_step, b_token`` (the delivery's claim), ``b_result`` (JSON text or NULL),
#: ``b_now, b_started, b_attempt``, and for the dependents ``b_names, b_args`` (their call
#: arguments as JSON text), ``b_tokens`` (the claims their messages carry), ``b_lease_until``.
#: Returns the run after the change (:data:`RUN_COLUMNS`) and ``dispatched`` (JSON: name and epoch of each
#: dependent dispatched), or no row when nothing changed.
SUCCEED_AND_ADVANCE = text(
    f"""
WITH run AS (
    SELECT run_id, completions FROM workflow_runs
     WHERE run_id = :b_run AND (status = '{RunStatus.RUNNING}') IS TRUE
       FOR NO KEY UPDATE
), step AS (
    UPDATE workflow_steps
       SET status = '{StepStatus.SUCCEEDED}', result = CAST(:b_result AS JSON),
           completion_seq = (SELECT completions + 1 FROM run), error = NULL, claim = NULL,
           lease_until = NULL, started_at = coalesce(started_at, CAST(:b_started AS TIMESTAMP)),
           finished_at = :b_now
     WHERE run_id = (SELECT run_id FROM run) AND name = :b_step AND claim = :b_token
       AND (status = '{StepStatus.RUNNING}') IS TRUE
    RETURNING run_id
), counted AS (
    UPDATE workflow_runs
       SET completions = completions + 1, open_steps = open_steps - 1, updated_at = :b_now,
           status = CASE WHEN open_steps = 1 THEN '{RunStatus.SUCCEEDED}' ELSE status END,
           finished_at = CASE WHEN open_steps = 1 THEN CAST(:b_now AS TIMESTAMP) ELSE finished_at END
     WHERE run_id = (SELECT run_id FROM step)
    RETURNING {", ".join(RUN_COLUMNS)}
), next AS (
    UPDATE workflow_steps AS s
       SET remaining_deps = s.remaining_deps - 1,
           status = CASE WHEN {_DUE} THEN '{StepStatus.RUNNING}' ELSE s.status END,
           call_args = CASE WHEN {_DUE} THEN CAST(n.call_args AS JSON) ELSE s.call_args END,
           epoch = CASE WHEN {_DUE} THEN s.epoch + 1 ELSE s.epoch END,
           min_retry = CASE WHEN {_DUE} THEN 0 ELSE s.min_retry END,
           claim = CASE WHEN {_DUE} THEN n.token ELSE s.claim END,
           claimed_retry = CASE WHEN {_DUE} THEN 0 ELSE s.claimed_retry END,
           lease_until = CASE WHEN {_DUE} THEN CAST(:b_lease_until AS TIMESTAMP) ELSE s.lease_until END,
           worker_id = CASE WHEN {_DUE} THEN NULL ELSE s.worker_id END,
           attempts = CASE WHEN {_DUE} THEN s.attempts + 1 ELSE s.attempts END,
           ready_at = CASE WHEN {_DUE} THEN CAST(:b_now AS TIMESTAMP) ELSE s.ready_at END
      FROM unnest(CAST(:b_names AS TEXT[]), CAST(:b_args AS TEXT[]), CAST(:b_tokens AS TEXT[]))
           WITH ORDINALITY AS n(name, call_args, token, position)
     WHERE s.run_id = (SELECT run_id FROM step) AND s.name = n.name
    RETURNING s.name, s.epoch, n.position, s.claim = n.token AS dispatched
), logged AS (
    INSERT INTO workflow_events (run_id, at, kind, step, attempt, detail, started_at)
    SELECT :b_run, CAST(:b_now AS TIMESTAMP), e.kind, e.step, e.attempt, NULL, e.started_at
      FROM (SELECT 0 AS position, CAST('{log.SUCCEEDED}' AS VARCHAR) AS kind,
                   CAST(:b_step AS VARCHAR) AS step, CAST(:b_attempt AS INTEGER) AS attempt,
                   CAST(:b_started AS TIMESTAMP) AS started_at
              FROM step
            UNION ALL
            SELECT position, '{log.DISPATCHED}', name, epoch, NULL FROM next WHERE dispatched
            UNION ALL
            SELECT 1e9, '{log.RUN_PREFIX}{RunStatus.SUCCEEDED}', NULL, NULL, NULL
              FROM counted WHERE status = '{RunStatus.SUCCEEDED}') AS e
     ORDER BY e.position
)
SELECT counted.*,
       (SELECT json_agg(json_build_object('name', name, 'epoch', epoch) ORDER BY position)
          FROM next WHERE dispatched) AS dispatched
  FROM counted
"""
)


def plan_dependents(
    *,
    step: str,
    result: Any,
    dependents: tuple[str, ...],
    advance: dict[str, Any],
    declared,
) -> list[dict[str, Any]] | None:
    """What :data:`SUCCEED_AND_ADVANCE` does to each dependent of ``step`` once it returned
    ``result``: ``[{name, actor, spec, call_args}]`` in the order of ``dependents``; None when
    one of them needs the general path (another dependency, a group, a wait, a condition that
    skips it, a reference to another step's result, an actor this process lacks).

    ``advance`` is what the claim read (:data:`DISPATCHED_WITH_SUCCESSORS`) returned: the
    run's ``inputs`` and the eligible dependents' definitions (``successors``);
    ``declared(actor)`` tells whether this process can build an actor's message.
    """
    known = {row["name"]: row for row in advance.get("successors") or ()}
    if len(known) != len(dependents):
        return None
    # The general path reads results back from the database: the same JSON round trip here.
    results = {step: result if result is None else json.loads(json.dumps(result))}
    inputs = advance.get("inputs")
    plan = []
    for name in dependents:
        row = known.get(name)
        if row is None:
            return None
        spec = row["spec"]
        if spec.get("wait") or not referenced_steps(spec) <= {step} or not declared(row["actor"]):
            return None
        try:
            if not conditions_hold(spec, results=results, inputs=inputs):
                return None  # skipped: the general path skips it and what follows
            call_args = call_arguments(spec, results=results, inputs=inputs)
        except MissingValue:
            return None  # the general path fails the step, and the run
        plan.append({"name": name, "actor": row["actor"], "spec": spec, "call_args": call_args})
    return plan
