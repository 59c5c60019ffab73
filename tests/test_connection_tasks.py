"""Connection tasks have an owner (server/tasks.py) whose lifetime bounds theirs: leaving
it cancels every task the way a task group would — shields hold — and waits for each;
a task that fails is logged and the others go on."""

from __future__ import annotations

import asyncio
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


async def test_a_plain_asyncio_cancel_still_waits_for_every_task() -> None:
    """asyncio's runner cancels the main task at Ctrl-C, past anyio's shields: the owner
    still waits for every task's cleanup before it passes the cancel on."""
    ended: list[str] = []

    async def forever() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.1)
            ended.append("cleaned")

    async def serving(started: anyio.Event) -> None:
        async with ConnectionTasks() as tasks:
            tasks.start_soon(forever)
            started.set()
            await anyio.sleep_forever()

    started = anyio.Event()
    server = asyncio.get_running_loop().create_task(serving(started))
    await started.wait()
    await anyio.sleep(0.01)
    server.cancel()  # into the owner's block: its exit begins
    await anyio.sleep(0.02)
    server.cancel()  # and again while the exit waits
    with anyio.fail_after(5):
        with pytest.raises(asyncio.CancelledError):
            await server
    assert ended == ["cleaned"]


async def test_no_task_starts_once_the_owner_has_exited() -> None:
    async def nothing() -> None:
        pass

    async with ConnectionTasks() as tasks:
        pass
    with pytest.raises(RuntimeError):
        tasks.start_soon(nothing)
