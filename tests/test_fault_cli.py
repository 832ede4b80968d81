"""Faults: the ``ramdex ingest`` command itself dies or is interrupted (issue 11, sections 1, 4).

- Embedded mode (no broker): the command does all the work in its own process; SIGKILL it at
  seeded points (during registration or during processing), then run the same command again:
  it must finish everything, and its summary must call what it finished *resumed*, never
  *duplicate* (issue 11: "328 of 508 assets never processed; the re-run reports 449 duplicate").
- Broker mode: Ctrl-C (SIGINT to the command's process group) while the command waits for the
  workers; the workers finish, and the job must end ``done`` (issue 11: "job marked failed while
  workers finish it; it stays failed at 504/504").
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter

import numpy as np
import pytest

pytest.register_assert_rewrite("tests.fault_support")

from tests.fault_support import (  # noqa: E402 - after the assert-rewrite hook
    PAUSE,
    FaultStack,
    check_invariants,
    image_set,
    report,
    wait_until,
)

pytest_plugins = ["tests.fault_support"]
pytestmark = [pytest.mark.slow]


def _asset_states(stack: FaultStack) -> dict[str, str]:
    rows = stack.probe._query("SELECT sha256, status FROM assets")
    return dict(rows)


def embedded_kill_round(make_stack, seed: int, kills: int, count: int = 100) -> None:
    """SIGKILL an embedded ``ramdex ingest`` ``kills`` times at seeded points, then re-run it."""
    rng = np.random.default_rng(seed)
    stack: FaultStack = make_stack(broker=False)
    images = image_set(stack.root / "in", count, seed)
    n = images.distinct
    points = []
    for _ in range(kills):
        phase = "registration" if rng.random() < 0.4 else "processing"
        progress = stack.probe.registered if phase == "registration" else stack.probe.done
        start = progress()
        target = start + int(rng.integers(1, max(2, (n - start) // 2)))
        run = stack.ingest([images.folder])
        wait_until(
            lambda p=progress, t=target, r=run: p() >= t or not r.running(),
            120,
            0.005,
            f"{phase} reaching {target}",
        )
        assert run.running(), f"the run ended before its kill point ({phase} {target}): seed?"
        run.kill()
        points.append((phase, target, dict(stack.probe.statuses())))

    # What the kills left, by content: finished, unfinished, or never registered.
    before = _asset_states(stack)
    corrupt = hashlib.sha256(images.corrupt.read_bytes()).hexdigest()
    unfinished = {d for d, s in before.items() if s in ("pending", "processing")}
    expected_duplicate = 0
    for digest, paths in images.digests().items():
        if before.get(digest) in ("done", "failed") and digest != corrupt:
            expected_duplicate += len(paths)  # every path of a finished asset
        else:
            expected_duplicate += len(paths) - 1  # the copy: another path of the same bytes

    final = stack.ingest([images.folder])
    assert final.wait(180) == 1, stack.logs()  # 1: the corrupt file failed, with its reason
    summary = final.summary()
    assert summary["submitted"] == len(images.files)
    assert summary["failed"] == 1 and summary["queued"] == 0, summary
    assert summary["duplicate"] == expected_duplicate, (summary, len(unfinished))
    assert summary.get("resumed", 0) == len(unfinished), (summary, len(unfinished))
    end = check_invariants(stack, images)
    report(
        "embedded ramdex ingest SIGKILL",
        seed=seed,
        kills=points,
        unfinished_before_rerun=len(unfinished),
        rerun={k: summary.get(k) for k in ("done", "resumed", "duplicate", "failed")},
        jobs=[(j["status"], j["error"]) for j in end.jobs],
    )


def sigint_round(make_stack, seed: int, count: int = 32) -> None:
    """Ctrl-C on ``ramdex ingest`` while it waits for the workers; the workers finish the job."""
    rng = np.random.default_rng(seed)
    stack: FaultStack = make_stack()
    images = image_set(stack.root / "in", count, seed)
    worker = stack.start_worker("w", ready=False, **PAUSE)
    run = stack.ingest([images.folder])
    worker.wait_ready()

    def waiting() -> bool:
        jobs = stack.probe.jobs()
        return (
            stack.probe.registered() == images.distinct
            and bool(jobs)
            and jobs[0]["total"] >= images.distinct
        )

    wait_until(waiting, 120, 0.02, "registration over: the command waits")
    target = int(rng.integers(0, images.distinct // 3))
    wait_until(lambda: stack.probe.done() >= target, 120, 0.02, f"{target} finished")
    time.sleep(0.3)  # the last group of ids is on its way to the queue
    left = stack.probe.statuses()
    assert left["pending"] + left["processing"] > 0, "nothing left to finish: seed?"
    run.interrupt()
    interrupted = time.monotonic()
    code = run.wait(20)
    stopped_s = time.monotonic() - interrupted
    assert code != 0, run.output()
    assert "Traceback" not in run.stderr(), run.output()
    end = check_invariants(stack, images)
    [job] = end.jobs
    assert (job["status"], job["total"], job["done"], job["failed"]) == (
        "done",
        images.distinct,
        images.distinct - 1,
        1,
    ), job
    report("Ctrl-C on a waiting ramdex ingest", seed=seed, exit_code=code, stopped_s=stopped_s)


def test_a_waiting_ingest_without_workers_gives_up_and_the_job_goes_on(make_stack):
    """No worker at all: the waiting command stops with a message after the stall timeout
    instead of waiting for ever (issue 11: "ingest hangs"); a worker started afterwards
    finishes the job, with nothing run again."""
    stack: FaultStack = make_stack(RAMDEX_INGEST__STALL_TIMEOUT_S="4")
    images = image_set(stack.root / "in", 12, seed=5)
    run = stack.ingest([images.folder])
    code = run.wait(120)
    assert code == 2, run.output()
    message = run.stderr()
    assert "no progress" in message and "ramdex worker" in message, run.output()
    assert "Traceback" not in message, run.output()
    assert [j["status"] for j in stack.probe.jobs()] == ["running"]  # not failed: it goes on
    stack.start_worker("late")
    end = check_invariants(stack, images)
    [job] = end.jobs
    assert (job["status"], job["done"], job["failed"]) == ("done", images.distinct - 1, 1), job


def test_embedded_ingest_sigkilled_then_run_again(make_stack):
    embedded_kill_round(make_stack, seed=1, kills=2)


def test_ctrl_c_on_a_waiting_ingest_leaves_the_job_to_the_workers(make_stack):
    sigint_round(make_stack, seed=1)


@pytest.mark.campaign
@pytest.mark.timeout(900)
@pytest.mark.parametrize("seed", [11, 12, 13, 14])
def test_campaign_embedded_ingest_sigkilled_three_times(make_stack, seed):
    embedded_kill_round(make_stack, seed=seed, kills=3, count=300)


@pytest.mark.campaign
@pytest.mark.timeout(900)
@pytest.mark.parametrize("seed", [21, 22, 23])
def test_campaign_ctrl_c_on_a_waiting_ingest(make_stack, seed):
    sigint_round(make_stack, seed=seed, count=60)


def _strand(stack: FaultStack, images) -> dict[str, int]:
    """Run an embedded ``ramdex ingest`` and SIGKILL it mid-processing, once registration is
    over (so every file is an asset): its assets are left processing or pending under a dead
    process's lease, its job running."""
    shas = set(images.digests())
    # Slow batches: a window wide enough to kill it in, once registration is over.
    run = stack.ingest([images.folder], RAMDEX_DEBUG_PAUSE_BEFORE_COMMIT_S="0.6")

    def states() -> Counter[str]:
        rows = stack.probe._query("SELECT sha256, status FROM assets")
        return Counter(status for sha, status in rows if sha in shas)

    def midway() -> bool:
        counts, jobs = states(), stack.probe.jobs()
        return (
            sum(counts.values()) == len(shas)  # every file registered (some may exist already)
            and bool(jobs)
            and jobs[-1]["status"] == "running"
            and counts["done"] >= 2
        )

    wait_until(midway, 120, 0.01, "registration over, processing under way")
    run.kill()
    left = states()
    assert left["pending"] + left["processing"] > 0, "nothing left stranded: seed?"
    return dict(left)


def test_embedded_server_recovers_stranded_work_at_start_and_while_it_serves(make_stack):
    """An embedded ``ramdex serve`` (no broker, no worker) finishes what a killed ``ramdex
    ingest`` left (its assets, its job) and settles a job from before the job ledger, when it
    starts, with no request and no other command; work stranded while it serves is finished by
    its periodic pass."""
    import urllib.request

    stack: FaultStack = make_stack(broker=False)
    first = image_set(stack.root / "first", 24, seed=7)
    stranded = _strand(stack, first)
    stack.probe._query(  # a job an older version left running (no lease, no ledger rows)
        "INSERT INTO jobs (kind, status, total, done, failed, params, created_at, updated_at) "
        "VALUES ('ingest', 'running', 9, 3, 0, '{}', now() - interval '1 hour', "
        "now() - interval '1 hour') RETURNING id"
    )
    server, port = stack.serve()
    started = time.monotonic()
    wait_until(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).status == 200,
        60,
        0.2,
        "ramdex serve answering",
    )
    end = check_invariants(stack, first, settle_timeout=90)
    at_start_s = round(time.monotonic() - started, 1)
    jobs = {j["id"]: j for j in end.jobs}
    assert jobs[1]["status"] == "done", jobs  # the killed run's job, finished by the server
    assert jobs[2]["status"] == "failed" and "per-asset job tracking" in jobs[2]["error"], jobs

    second = image_set(stack.root / "second", 20, seed=8)
    again = _strand(stack, second)
    stranded_at = time.monotonic()
    check_invariants(stack, [first, second], settle_timeout=90)
    serving_s = round(time.monotonic() - stranded_at, 1)
    assert server.poll() is None, stack.logs()
    report(
        "embedded ramdex serve recovers",
        stranded_at_start=stranded,
        finished_after_start_s=at_start_s,
        stranded_while_serving=again,
        finished_while_serving_s=serving_s,
    )
