"""Connection tasks have an owner (server/tasks.py) whose lifetime bounds theirs: leaving
it cancels every task the way a task group would — shields hold — and waits for each;
a task that fails is logged and the others go on."""

from __future__ import annotations

import logging

import anyio
import pytest

from chainer.server.tasks import ConnectionTasks

pytestmark = pytest.mark.anyio


async def test_leaving_the_owner_cancels_every_task_and_waits_for_it() -> None:
    ended: list[str] = []

    async def forever(name: str) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.05)  # a shielded close still gets to finish
            ended.append(name)

    with anyio.fail_after(5):
        async with ConnectionTasks() as tasks:
            for name in ("a", "b", "c"):
                tasks.start_soon(forever, name)
            await anyio.sleep(0.01)
            assert len(tasks) == 3
    assert sorted(ended) == ["a", "b", "c"]
    assert len(tasks) == 0


async def test_a_task_that_ends_by_itself_is_forgotten() -> None:
    done = anyio.Event()

    async def quick() -> None:
        done.set()

    async with ConnectionTasks() as tasks:
        tasks.start_soon(quick)
        await done.wait()
        await anyio.sleep(0.01)
        assert len(tasks) == 0


async def test_a_failing_task_is_logged_and_the_others_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    still = anyio.Event()

    async def broken() -> None:
        raise RuntimeError("a bug")

    async def fine() -> None:
        await anyio.sleep(0.05)
        still.set()

    with caplog.at_level(logging.ERROR, "chainer"):
        async with ConnectionTasks() as tasks:
            tasks.start_soon(broken)
            tasks.start_soon(fine)
            with anyio.fail_after(5):
                await still.wait()
    failed = [r for r in caplog.records if "connection task failed" in r.getMessage()]
    assert len(failed) == 1
    assert failed[0].exc_info is not None
    assert "a bug" in str(failed[0].exc_info[1])


async def test_a_task_started_while_closing_runs_cancelled() -> None:
    cleaned: list[bool] = []

    async def late() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            cleaned.append(True)

    with anyio.fail_after(5):
        async with ConnectionTasks() as tasks:
            tasks.cancel()
            tasks.start_soon(late)
    assert cleaned == [True]  # it ran (closing what it was given) and was cancelled
