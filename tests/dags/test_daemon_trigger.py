"""The daemon trigger wakes on real pending rows of the panel DB's queue — and not before."""

from __future__ import annotations

import asyncio

from panelflow.triggers import PanelQueueTrigger


def test_serializes_to_its_importable_path():
    path, kwargs = PanelQueueTrigger("group_actions.sip", poll_seconds=0.5).serialize()
    assert path == "panelflow.triggers.PanelQueueTrigger"
    assert kwargs == {"queue": "group_actions.sip", "conn_id": "panel_db", "poll_seconds": 0.5}
    assert "password" not in str(kwargs)


def test_fires_only_for_pending_work_of_its_queue(panel_db, sql):
    # work for another backend, and finished work for this one, must not wake it
    sql("INSERT INTO group_action_jobs (backend, action, status) VALUES ('exchange', 'create_mailbox', 'pending'), "
        "('sip', 'add_user', 'succeeded')")

    async def scenario():
        trigger = PanelQueueTrigger("group_actions.sip", poll_seconds=0.1)
        gen = trigger.run()
        first = asyncio.ensure_future(gen.__anext__())
        await asyncio.sleep(0.8)
        assert not first.done()  # idle: still waiting
        await asyncio.to_thread(sql, "INSERT INTO group_action_jobs (backend, action, priority) VALUES ('sip', 'add_user', 0)")
        event = await asyncio.wait_for(first, timeout=10)
        await gen.aclose()
        return event

    event = asyncio.run(scenario())
    assert event.payload == {"queue": "group_actions.sip", "pending": 1}


def test_general_queue_also_wakes_on_hostmatic_jobs(panel_db, sql):
    # GroupActionWorkAD queues Hostmatic database-login jobs that GroupActionWorkGeneral works
    sql("INSERT INTO group_action_jobs (backend, action, priority) VALUES ('hostmatic', 'delete_database_user', 0)")

    async def scenario():
        gen = PanelQueueTrigger("group_actions.general", poll_seconds=0.1).run()
        event = await asyncio.wait_for(gen.__anext__(), timeout=10)
        await gen.aclose()
        return event

    assert asyncio.run(scenario()).payload == {"queue": "group_actions.general", "pending": 1}
