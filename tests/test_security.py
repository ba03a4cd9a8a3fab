"""Hardening: nothing forged runs or resolves a future (issue 9, items 1-4, 8, 12, 13).

Each forgery or replay is done for real: entries and replies written into a real Redis
with nothing but the Redis commands an attacker with write access has, served by a real
``taskq worker`` subprocess.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis as redis_lib

import taskq
from taskq.broker import Broker
from taskq.config import Settings, derive_key
from taskq.errors import ConfigError, SignatureError
from taskq.message import TaskMessage
from taskq.outcome import decode_outcome, encode_ok
from taskq.signing import outcome_verifies, sign, sign_outcome, verify

TESTS = Path(__file__).parent
SECRET = "security-tests-" + "x" * 32
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("TASKQ_")},
       "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}


def burst_worker(url: str, *args: str, secret: str | None = SECRET,
                 timeout: float = 50) -> subprocess.CompletedProcess[str]:
    """A real node that serves what is queued, then exits."""
    env = {**ENV, **({"TASKQ_SECRET": secret} if secret is not None else {})}
    return subprocess.run([sys.executable, "-m", "taskq", "--url", url, "worker", "--procs", "1",
                           "--burst", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _inbox(client: taskq.Client) -> str:
    return client.broker.keys.inbox(client.client_id)


def _dead_reasons(url: str, queue: str) -> list[str]:
    broker = Broker(redis_lib.Redis.from_url(url), queue)
    return [f[b"reason"].decode() for _, f in broker.dead_entries()]


# -- 1. forged results ------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_forged_replies_and_forged_echo_entries_resolve_no_signed_future(redis_url: str) -> None:
    raw = redis_lib.Redis.from_url(redis_url)
    with taskq.Client(redis_url, secret=SECRET) as victim:
        fut = victim.submit("echo", "genuine")
        assert victim.flush(10)
        task_id = fut.task_id  # type: ignore[attr-defined]
        # An attacker with LPUSH rights: an unsigned JSON reply in the victim's inbox ...
        raw.rpush(_inbox(victim), orjson.dumps([{"id": task_id, "ok": True, "v": "forged"}]))
        # ... a reply "signed" for another task id, and a pickled one with a made-up xs.
        other = sign_outcome(b"k" * 32, "other", encode_ok("other", "forged"))
        raw.rpush(_inbox(victim), b"[" + other.replace(b'"other"', orjson.dumps(task_id), 1) + b"]")
        raw.rpush(_inbox(victim), orjson.dumps([{"id": task_id, "ok": True, "x": "gARLAS4=",
                                                 "xs": "0" * 64}]))
        # With XADD rights alone: a plain echo naming the victim's task id and inbox, run
        # by an honest node ahead of the genuine entry.
        stream = victim.broker.keys.stream
        body = TaskMessage(id=task_id, task="echo", args=["forged by echo"],
                           reply_to=victim.client_id, keep_result=True).encode()
        raw.xadd(stream, {"m": body})
        time.sleep(0.3)  # the listener has read the three forged replies by now
        assert not fut.done()
        done = burst_worker(redis_url)
        assert done.returncode == 0, done.stderr
        assert fut.result(timeout=20) == "genuine"


def test_an_outcome_signature_binds_the_task_id() -> None:
    signed = orjson.loads(sign_outcome(b"k" * 32, "t1", encode_ok("t1", [1.5, "é", None])))
    assert outcome_verifies(b"k" * 32, "t1", signed)
    assert not outcome_verifies(b"k" * 32, "t2", {**signed, "id": "t2"})
    assert not outcome_verifies(b"o" * 32, "t1", signed)
    assert not outcome_verifies(b"k" * 32, "t1", {**signed, "v": [2]})


def test_a_tag_is_128_bits_and_no_shortened_or_altered_one_verifies() -> None:
    """The tags are truncated HMACs: anything but the exact 22 characters is refused,
    a prefix, an empty tag and every single-character change included."""
    key, body = b"k" * 32, b'{"id":"t1","t":"noop","a":[]}'
    good = sign(key, "q", body)
    assert len(good) == 22 and b"|" not in good
    verify(key, "q", body, good)
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    forged = [good[:21], good[:16], b"", good + b"A"]
    forged += [good[:i] + bytes([c]) + good[i + 1:] for i in range(22) for c in alphabet[:8]
               if c != good[i]]
    for bad in forged:
        with pytest.raises(SignatureError):
            verify(key, "q", body, bad)


def test_a_full_length_tag_of_an_earlier_release_still_verifies() -> None:
    """Entries queued by a producer of the release before (64 hex digits of the same
    HMAC) run after an upgrade; a wrong one of that length does not."""
    key, body = b"k" * 32, b'{"id":"t1","t":"noop","a":[]}'
    old = hmac.new(derive_key(key, "messages"), b"taskq-message\x00q\x00" + body,
                   hashlib.sha256).hexdigest().encode()
    verify(key, "q", body, old)
    with pytest.raises(SignatureError):
        verify(key, "q", body, old[:-1] + (b"0" if old[-1:] != b"0" else b"1"))
    with pytest.raises(SignatureError):
        verify(key, "other", body, old)


# -- 2. replay across queues, and the expiry ---------------------------------------------


@pytest.mark.timeout(90)
def test_a_signed_entry_replayed_onto_another_queue_never_runs_there(redis_url: str) -> None:
    raw = redis_lib.Redis.from_url(redis_url)
    with taskq.Client(redis_url, queue="qa", secret=SECRET) as producer:
        fut = producer.submit("echo", "once")
        assert producer.flush(10)
        ((_, fields),) = raw.xrange(producer.broker.keys.stream)
        qb = Broker(raw, "qb")
        qb.ensure_group()
        raw.xadd(qb.keys.stream, fields)  # the copy, twice
        raw.xadd(qb.keys.stream, fields)
        done = burst_worker(redis_url, "--queue", "qb")
        assert done.returncode == 0, done.stderr
        reasons = _dead_reasons(redis_url, "qb")
        assert len(reasons) == 2 and all("for queue 'qb'" in r for r in reasons), reasons
        assert int(raw.hget(qb.keys.stats, "done") or 0) == 0
        assert not fut.done()  # the copies' dead letters are unsigned: refused, not delivered
        done = burst_worker(redis_url, "--queue", "qa")
        assert done.returncode == 0, done.stderr
        assert fut.result(timeout=20) == "once"


@pytest.mark.timeout(60)
def test_an_expired_signed_entry_is_dead_lettered_expired(redis_url: str) -> None:
    with taskq.Client(redis_url, secret=SECRET) as producer:
        producer.message_ttl = -1.0  # the producer chose an expiry already past
        fut = producer.submit("echo", "late")
        assert producer.flush(10)
        done = burst_worker(redis_url)
        assert done.returncode == 0, done.stderr
        with pytest.raises(taskq.DeadLetteredError, match="dead-lettered: expired"):
            fut.result(timeout=20)


# -- 3. weak secrets, and the key is derived ----------------------------------------------


@pytest.mark.parametrize("weak", ["change-me", "a", "x" * 31])
def test_weak_secrets_are_refused_with_how_to_make_one(redis_url: str, weak: str) -> None:
    with pytest.raises(ConfigError, match=r"secrets\.token_urlsafe\(32\)"):
        Settings(secret=weak.encode())
    done = burst_worker(redis_url, secret=weak, timeout=30)
    assert done.returncode == 2, done.stderr
    assert "token_urlsafe(32)" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.timeout(60)
def test_a_pickle_signed_with_the_raw_secret_never_runs(redis_url: str, tmp_path: Path) -> None:
    """The MAC key is derived from the secret: an HMAC under the secret itself (the old
    scheme, or a key reused elsewhere) signs nothing."""
    canary = tmp_path / "canary"
    payload = pickle.dumps((Path.touch, canary))
    body = json.dumps({"id": "raw", "t": "", "a": [], "kr": 1,
                       "p": base64.b64encode(payload).decode()}).encode()
    for mac in (hmac.new(SECRET.encode(), body, hashlib.sha256),
                hmac.new(SECRET.encode(), b"default" + body, hashlib.sha256)):
        Broker(redis_lib.Redis.from_url(redis_url), "default").ensure_group()
        redis_lib.Redis.from_url(redis_url).xadd("taskq:{default}:stream",
                                                 {"m": body, "s": mac.hexdigest().encode()})
    done = burst_worker(redis_url)
    assert done.returncode == 0, done.stderr
    assert not canary.exists()
    assert all("signature does not match" in r for r in _dead_reasons(redis_url, "default"))


# -- 4. --require-signed, and the demo tasks ----------------------------------------------


@pytest.mark.timeout(60)
def test_require_signed_dead_letters_unsigned_entries(redis_url: str) -> None:
    with taskq.Client(redis_url) as unsigned, taskq.Client(redis_url, secret=SECRET) as signed:
        bad = unsigned.submit("echo", "unsigned")
        good = signed.submit("echo", "signed")
        assert unsigned.flush(10) and signed.flush(10)
        done = burst_worker(redis_url, "--require-signed")
        assert done.returncode == 0, done.stderr
        assert good.result(timeout=20) == "signed"
        with pytest.raises(taskq.DeadLetteredError, match="requires signed messages"):
            bad.result(timeout=20)


def test_require_signed_needs_a_secret(redis_url: str) -> None:
    done = burst_worker(redis_url, "--require-signed", secret=None, timeout=30)
    assert done.returncode == 2 and "needs the shared secret" in done.stderr, done.stderr


@pytest.mark.timeout(60)
def test_a_production_worker_runs_no_demo_task(redis_url: str) -> None:
    with taskq.Client(redis_url) as client:
        fut = client.submit("sleep", 0)
        assert client.flush(10)
        done = burst_worker(redis_url, "--import", "e2e_tasks", secret=None)
        assert done.returncode == 0, done.stderr
        with pytest.raises(taskq.DeadLetteredError, match="unknown task 'sleep'"):
            fut.result(timeout=20)


def test_demo_tasks_have_time_limits() -> None:
    from taskq import registry

    assert all(registry.get_task(n).timeout for n in ("primes", "sleep", "echo", "fail"))


# -- 8. malformed replies cost no future ---------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("secret", [None, SECRET], ids=["unsigned", "signed"])
def test_malformed_replies_are_skipped_and_the_genuine_one_resolves(
        redis_url: str, secret: str | None) -> None:
    raw = redis_lib.Redis.from_url(redis_url)
    with taskq.Client(redis_url, secret=secret) as client:
        fut = client.submit("echo", "genuine")
        assert client.flush(10)
        task_id = fut.task_id  # type: ignore[attr-defined]
        for bad in ({"id": task_id, "ok": False, "e": 5},
                    {"id": task_id, "ok": True, "x": "AA==", "xs": "é" * 64},
                    {"id": task_id, "ok": True, "c": 1, "v": [1], "ie": [[7, 1]]},
                    *([{"id": task_id, "ok": True, "v": 1, "os": "é"}] if secret else []),
                    {"id": 5}, [1, 2]):
            raw.rpush(_inbox(client), orjson.dumps([bad]))
        raw.rpush(_inbox(client), b"\xff not json")
        time.sleep(0.3)
        assert not fut.done()
        done = burst_worker(redis_url, secret=secret)
        assert done.returncode == 0, done.stderr
        assert fut.result(timeout=20) == "genuine"


# -- 12. values are faithful or refused ----------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), (1, 2),
                                   [1, {"k": (3,)}]], ids=repr)
def test_a_value_json_would_change_is_refused_by_name(value: Any) -> None:
    with pytest.raises(TypeError, match=r"\[0\]"):
        TaskMessage(id="t", task="echo", args=[value]).encode()
    with pytest.raises(TypeError, match="not JSON-serializable"):
        encode_ok("t", value)


@pytest.mark.timeout(60)
def test_a_nan_result_fails_instead_of_becoming_null(redis_url: str) -> None:
    with taskq.Client(redis_url) as client:
        fut = client.submit("security.nan")
        assert client.flush(10)
        done = burst_worker(redis_url, "--import", "test_security", secret=None)
        assert done.returncode == 0, done.stderr
        with pytest.raises(taskq.TaskError, match="cannot travel as JSON"):
            fut.result(timeout=20)


@taskq.task(name="security.nan")
def nan_result() -> float:
    return float("nan")


# -- 13. a stored pickled result reads back ------------------------------------------------


def _pair(x: int) -> tuple[int, str]:
    return (x, "pickled")


@pytest.mark.timeout(60)
def test_the_stored_result_of_a_pickled_task_is_its_value(redis_url: str) -> None:
    with taskq.Client(redis_url, secret=SECRET) as client:
        fut = client.submit(_pair, 7)
        assert client.flush(10)
        done = burst_worker(redis_url, "--import", "test_security")
        assert done.returncode == 0, done.stderr
        assert fut.result(timeout=20) == (7, "pickled")
        stored = client.result(fut.task_id)  # type: ignore[attr-defined]
        assert stored is not None and stored.result() == (7, "pickled")
    with taskq.Client(redis_url) as no_secret:  # cannot verify: refuses, never unpickles
        stored = no_secret.result(fut.task_id)  # type: ignore[attr-defined]
        assert stored is not None
        with pytest.raises(taskq.SignatureError):
            stored.result()
    assert decode_outcome(b'{"id":"t","ok":true,"v":1}').value == 1
