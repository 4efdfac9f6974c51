"""voicebus across machines, on simulated hosts (tests/bus/hosts.py): the agents in one network
namespace, model managers in others, joined by veth pairs and a bridge; real processes and
real models. Each test leaves the hosts serving with two model managers, as it found them.

Clients are plain zmq REQ sockets inside the agents' host (tests/bus/hosts_client.py). What is
checked for every request: exactly one reply, a success, with the right text; for a
queue_for_batch job: one final result, and a second fetch finds nothing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
from hosts import Hosts, results_of, skip_reason, wait_for
from speech import SENTENCES, word_error_rate

REASON = skip_reason()
if REASON is not None:
    print(f"test_hosts skipped: {REASON}")
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

TINY = "whisper-tiny.en"


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    made = Hosts(tmp_path_factory.mktemp("hosts"), managers=3)
    try:
        made.open()
        # A job for a model nobody holds waits this long for a model manager with it: time
        # enough for one to start and load whisper-base on a busy machine.
        made.agents = made.start_agents({"VOICEBUS__LIMITS__MODEL_WAIT_MS": "60000"})
        made.manager = {0: made.start_manager(0), 1: made.start_manager(1)}
        wait_for(lambda: managers_of(made) == 2, 180, "two model managers registered")
        yield made
    finally:
        made.close()


def metrics(hosts: Hosts) -> dict[str, float]:
    return hosts.client({"do": "metrics"})[0]


def managers_of(hosts: Hosts) -> float:
    try:
        return metrics(hosts).get(f'voicebus_model_managers{{model="{TINY}"}}', 0)
    except AssertionError:  # the agents are not up yet
        return 0


def stats(hosts: Hosts) -> dict:
    return hosts.client({"do": "call", "message": {"action": "stats"}})[0]


def wait_in_flight(hosts: Hosts, load: subprocess.Popen, manager: int | None = None) -> None:
    """Until the agent holds some of `load`'s requests (with `manager`: until that model
    manager holds some): the moment to break something."""
    deadline = time.monotonic() + 60
    while held_by(hosts, manager) < 1:
        # A load that ended unseen is too short for this machine: say so, not "timed out".
        assert load.poll() is None, "the load finished before any poll saw it in flight"
        assert time.monotonic() < deadline, "no work in flight within 60 s"
        time.sleep(0.1)


def held_by(hosts: Hosts, manager: int | None) -> int:
    """Requests in flight at the agent, or the jobs model manager `manager` holds."""
    figures = stats(hosts)
    if manager is None:
        return figures["in_flight"]
    found = re.search(r"model manager ([0-9a-f]{12}) serving", hosts.manager[manager].log())
    assert found, "the model manager has not logged its instance"
    return sum(m["in_flight"] for m in figures["model_managers"] if m["instance"].startswith(found[1]))


def served_by(hosts: Hosts) -> dict[str, int]:
    """Requests each model manager (instance) has run, from `stats`."""
    return {m["instance"]: m["requests"] for m in stats(hosts)["models"] if m["model"] == TINY}


def assert_all_right(results: list[dict], ids: set[str]) -> None:
    got = [r["request_id"] for r in results]
    assert sorted(got) == sorted(ids), f"replies for {sorted(set(ids) - set(got))} missing, or some twice"
    failed = [r for r in results if r["status"] != "success"]
    assert not failed, [(r["request_id"], r.get("status"), r.get("code")) for r in failed[:5]]
    for r in results:
        assert r.get("second_fetch") in (None, "not_found"), r
        # Its own text, not another request's: its sentence is the nearest of them all.
        sentence = SENTENCES[int(re.sub(r"\D", "", r["request_id"])) % len(SENTENCES)]
        nearest = min(SENTENCES, key=lambda s: word_error_rate(s, r["text"]))
        assert nearest == sentence, (sentence, r["text"])


def ensure_two(hosts: Hosts) -> None:
    """Back to managers 0 and 1, each alive and registered."""
    for i in (0, 1):
        if not hosts.manager[i].alive():
            hosts.manager[i] = hosts.start_manager(i, name=f"manager{i}-{time.monotonic_ns()}")
    wait_for(lambda: managers_of(hosts) >= 2, 120, "two model managers registered")


def test_both_model_managers_get_work_and_batch_their_own_share(hosts):
    before = served_by(hosts)
    results = hosts.client({"do": "transcribe", "count": 24, "clients": 8})
    assert_all_right(results, {f"t{i}" for i in range(24)})
    after = served_by(hosts)
    gained = {instance: n - before.get(instance, 0) for instance, n in after.items()}
    assert len(gained) == 2 and all(n > 0 for n in gained.values()), gained
    batches = [m["batch_size_histogram"] for m in stats(hosts)["models"] if m["model"] == TINY]
    assert all(batches), batches


def test_kill_9_of_a_model_manager_under_load_loses_nothing(hosts):
    resent = metrics(hosts)['voicebus_jobs_resent_total{task="stt"}']
    load = hosts.client_async({"do": "transcribe", "count": 48, "clients": 8})
    queued = hosts.client_async({"do": "queue", "count": 8, "ids": "k"})
    wait_in_flight(hosts, load, manager=1)  # so that the kill takes jobs with it
    hosts.manager[1].popen.send_signal(signal.SIGKILL)
    assert_all_right(results_of(load), {f"t{i}" for i in range(48)})
    assert_all_right([r for r in results_of(queued) if "request_id" in r], {f"k{i}" for i in range(8)})
    assert metrics(hosts)['voicebus_jobs_resent_total{task="stt"}'] > resent
    ensure_two(hosts)


def test_a_live_stream_keeps_streaming_through_the_loss_of_a_model_manager(hosts):
    sentences = [0, 1, 2, 3, 4]
    stream = hosts.client_async({"do": "live", "sentences": sentences})
    assert stream.stdout is not None
    # The first final is back: the stream is decoding on both managers. Kill one, mid-stream.
    events = []
    for line in stream.stdout:
        events.append(json.loads(line))
        if events[-1]["event"] == "final":
            break
    hosts.manager[1].popen.send_signal(signal.SIGKILL)
    events += results_of(stream)
    assert events[-1] == {"event": "closed", "status": "success"}, events[-3:]
    assert not [e for e in events if e["event"] == "error"], events
    finals = [e["text"] for e in events if e["event"] == "final"]
    # One final per utterance, each its own sentence's (the nearest of them all).
    assert len(finals) == len(sentences), finals
    for index, text in zip(sentences, finals, strict=True):
        nearest = min(SENTENCES, key=lambda s: word_error_rate(s, text))
        assert nearest == SENTENCES[index], (SENTENCES[index], text)
    ensure_two(hosts)


def test_a_model_manager_cut_off_for_10_s_is_replaced_and_rejoins(hosts):
    load = hosts.client_async({"do": "transcribe", "count": 32, "clients": 8})
    wait_in_flight(hosts, load)
    hosts.cut(0)
    try:
        wait_for(lambda: managers_of(hosts) == 1, 10, "the cut-off manager taken for dead")
        time.sleep(6)
    finally:
        hosts.mend(0)
    assert_all_right(results_of(load), {f"t{i}" for i in range(32)})
    wait_for(lambda: managers_of(hosts) == 2, 30, "the manager back")
    before = served_by(hosts)
    results = hosts.client({"do": "transcribe", "count": 16, "clients": 8})
    assert_all_right(results, {f"t{i}" for i in range(16)})
    after = served_by(hosts)
    assert all(after[i] > before.get(i, 0) for i in after), (before, after)


def test_sigterm_drains_a_model_manager_under_load(hosts):
    load = hosts.client_async({"do": "transcribe", "count": 48, "clients": 8})
    wait_in_flight(hosts, load)
    assert hosts.stop(hosts.manager[1], signal.SIGTERM) == 0
    assert "draining" in hosts.manager[1].log()
    assert_all_right(results_of(load), {f"t{i}" for i in range(48)})
    assert managers_of(hosts) == 1
    ensure_two(hosts)


def test_a_third_model_manager_joins_under_load_and_takes_work(hosts):
    load = hosts.client_async({"do": "transcribe", "count": 40, "clients": 8})
    third = hosts.start_manager(2)
    try:
        assert_all_right(results_of(load), {f"t{i}" for i in range(40)})
        wait_for(lambda: managers_of(hosts) == 3, 60, "the third manager registered")
        assert_all_right(hosts.client({"do": "transcribe", "count": 16, "clients": 8}),
                         {f"t{i}" for i in range(16)})
        assert len([n for n in served_by(hosts).values() if n > 0]) == 3
    finally:
        hosts.stop(third)
    wait_for(lambda: managers_of(hosts) == 2, 30, "the third manager gone")


def test_a_job_for_a_model_nobody_holds_waits_for_one_or_gets_model_unavailable(hosts):
    short = hosts.client({"do": "transcribe", "count": 1, "clients": 1,
                          "extra": {"model_pref": "whisper-base", "timeout_ms": 2000}})
    assert short[0]["code"] == "model_unavailable", short
    waiting = hosts.client_async({"do": "transcribe", "count": 2, "clients": 2,
                                  "extra": {"model_pref": "whisper-base"}})
    time.sleep(1)
    base = hosts.start_manager(2, models="whisper-base", name="manager-base")
    try:
        assert_all_right(results_of(waiting), {"t0", "t1"})
    finally:
        hosts.stop(base)


def test_kill_9_of_the_agent_model_managers_come_back_and_journaled_jobs_finish(hosts):
    queued = hosts.client({"do": "queue", "count": 12, "ids": "j", "fetch": False})
    assert all(r["status"] == "queued" for r in queued)
    agent = next(p for p in _children(hosts.agents.popen.pid) if p[1].endswith("service_agent stt"))
    os.kill(agent[0], signal.SIGKILL)
    results = hosts.client({"do": "fetch", "ids": [f"j{i}" for i in range(12)]})
    assert_all_right(results, {f"j{i}" for i in range(12)})
    wait_for(lambda: managers_of(hosts) == 2, 30, "both managers registered with the new agent")


def _children(pid: int) -> list[tuple[int, str]]:
    import psutil

    return [(c.pid, " ".join(c.cmdline())) for c in psutil.Process(pid).children(recursive=True)]
