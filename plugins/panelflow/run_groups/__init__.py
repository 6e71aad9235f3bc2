"""Run groups at the level of whole runs: threads whose groups intersect never run at the same time.

JeraSoft: "If two services have intersecting groups, the system will not run them
simultaneously and will put one of the services in queue." A run group is also an Airflow pool,
but a pool only bounds *tasks*: the tasks of two threads' runs would still interleave. So every
DAG of a thread with run groups is wrapped (``operators.guard_run``, called by the factory):

    [wait_for_pending_work] → run_group_guard (setup, in the triggerer) → the thread's steps
    DAG on_success_callback / on_failure_callback → release (in the dag-processor)

**Acquiring.** ``run_group_guard`` (:class:`RunGroupGuardOperator`) takes a *lease* on every group
of its thread at once, in the panel DB (task code cannot use Airflow's metadata DB in Airflow 3):
one ``run_group_leases`` row per group naming the holding DAG run. All or nothing, in one
transaction serialised by one transaction-scoped advisory lock — so two threads with overlapping
multi-group sets (the dining philosophers: A {a, b}, B {b, c}, C {c, a}) can never each hold part
of what the other needs, and no lock order has to be agreed on. If a group is held, the run is
**in queue**: :class:`~panelflow.run_groups.trigger.RunGroupLeaseTrigger` waits in the triggerer
(no worker slot, no pool slot: the guard is in ``default_pool``, whose deferred tasks take no
slot) and retries on every release (``NOTIFY``) and at least every ``poll_seconds``. The guard is
``start_from_trigger``: the scheduler hands it to the triggerer directly (the run's ids reach the
trigger as template fields rendered there), the first try happens there, and once it holds the
groups the trigger ends the guard itself (``TaskSuccessEvent``). The guard never has a task
process, whether its run waits or not: a task process costs a worker slot and 1–3 s of start-up
on 2 cores. (It also keeps clear of an Airflow 3.3 race in which a deferral's late executor
event fails a task already re-queued under the same try number.)

**Fairness.** A waiting run is a ``run_group_waiters`` row with a ``position``. A run that holds
nothing may not acquire while an earlier live waiter wants an intersecting group, even if its
own groups are free: first come, first served, so a run needing two groups is not starved by a
stream of runs each needing one of them.

**Releasing.** The run's groups go back when Airflow ends the run, whatever the steps' outcome:
the DAG's ``on_success_callback``/``on_failure_callback`` (:class:`ReleaseRunGroups`) delete the
run's leases and waiter row and notify the waiters. Airflow 3 runs DAG callbacks in the
dag-processor, so the release has no task process either; the dag-processor needs the
``panel_db`` connection (``AIRFLOW_CONN_PANEL_DB``). The callback comes some seconds after the
run's end; a partner waiting in queue does not wait for it: its trigger asks Airflow for the
holder's run at every poll and clears the leases of an ended run itself (see *Crashes*). A run
cleared and re-running before a late callback keeps what it took again (the callback releases
only what was taken by the run's end). The guard is a setup task without a teardown, so
clearing a step in the UI clears the guard with it: the rerun queues for its groups again.

**Crashes.** A lease the release never removed — the release skipped or failed for good (the
panel DB unreachable just then), a run Airflow stopped running some other way — must not block
forever. Before waiting on a
holder (or on an earlier waiter) the guard and the trigger ask Airflow for the holder's DAG-run
state through the Task SDK's execution API (``RuntimeTaskInstance.get_dagrun_state``: no
credentials, no metadata DB access); a holder whose run is no longer ``queued``/``running`` (or
was deleted) is stale and its rows are removed. Bound: ``poll_seconds`` (2 s) plus one question
through the triggerer's supervisor after Airflow has ended the holder's run — 2.4–7.8 s from the
run's end to the partner holding the groups, measured on 2 cores (tests/run_groups/test_run_group_exclusion.py).
A killed task process is failed by its supervisor within seconds, the run ends, and the partner
clears the ended run's leases at its next poll (or the release callback does): 1.8 s from the
kill to the partner holding the groups, measured on 2 cores. The first such question a triggerer
process asks builds Airflow's in-process execution API in the triggerer's supervisor, once per
process: 30 s were seen on a machine at load 18, during which that triggerer's events wait. A dead supervisor is failed by the
scheduler after ``[scheduler] task_instance_heartbeat_timeout`` (120 s in ``airflow.cfg.template``).
A run whose killed task still has retries left is still running and keeps its lease, on purpose:
the retry is part of the run and must not meet its partner.

A lease also expires. Every task of the holding run pushes ``expires_at`` forward when it starts
(:class:`RenewRunGroupLease`, the run's heartbeat), by the lease's length: the thread's task
timeout plus the longest retry delay plus a margin (``lease_minutes``, set by the factory). A live
run starts a task at least that often, so an expired lease means a run Airflow still calls
running but that executes nothing (say its tasks sit queued for a worker that never comes); its
partner takes over then rather than never. That is the one case where a partner may start
before the holder ends; the bound is ``lease_minutes`` after the holder's last task start.
Waiters are refreshed on every poll; one not seen for ``WAITER_TTL`` (a waiting trigger that
nobody runs any more) or whose run has ended stops holding its place.

Times here are the database clock (``clock_timestamp()``): these are infrastructure leases, not a
step's business clock (that stays the run's data interval).
"""


# leases.py: the lease SQL (try_acquire, release, renew) and run states; trigger.py: the guard's work in
# the triggerer; operators.py: the guard, the release and heartbeat callbacks and the DAG wiring.
