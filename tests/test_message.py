"""Wire format: envelopes, signatures, outcomes."""

from __future__ import annotations

import pytest

from taskq.errors import MessageError, SignatureError, TaskError, WorkerLostError
from taskq.message import TaskMessage, decode, routing_of
from taskq.outcome import (
    ChunkResult,
    decode_outcome,
    decode_outcomes,
    encode_chunk,
    encode_error,
    encode_ok,
)
from taskq.signing import sign


def test_round_trip_keeps_every_field() -> None:
    msg = TaskMessage(id="t1", task="primes", args=[0, 10], kwargs={"x": 1}, reply_to="c",
                      batch="b", keep_result=True, timeout=2.5, chunk=False)
    assert decode(msg.encode(), None, None) == msg


def test_chunk_round_trip() -> None:
    msg = TaskMessage(id="t1", task="echo", args=[[1], [2]], chunk=True, keep_result=False)
    assert decode(msg.encode(), None, None).args == [[1], [2]]


@pytest.mark.parametrize("body, why", [
    (b"not json", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"t": "echo"}', "no task id"),
    (b'{"id": "x", "t": 5}', "wrong types"),
    (b'{"id": "x", "t": "echo", "a": {}}', "wrong types"),
    (b'{"id": "x", "t": ""}', "names no task"),
    (b'{"id": "x", "t": "echo", "to": -1}', "positive"),
    (b'{"id": "x", "t": "echo", "c": 1, "a": [1]}', "list of argument lists"),
])
def test_malformed_envelopes_are_refused_with_a_reason(body: bytes, why: str) -> None:
    with pytest.raises(MessageError, match=why):
        decode(body, None, None)


KEY, OTHER = b"k" * 32, b"o" * 32


def test_pickled_payload_needs_a_valid_signature() -> None:
    msg = TaskMessage(id="t", task="", payload=b"\x80\x04N.")
    body = msg.encode()
    with pytest.raises(SignatureError, match="not signed"):
        decode(body, None, KEY, "q")
    with pytest.raises(SignatureError, match="does not match"):
        decode(body, sign(OTHER, "q", body), KEY, "q")
    with pytest.raises(SignatureError, match="no TASKQ_SECRET"):
        decode(body, sign(KEY, "q", body), None, "q")
    got = decode(body, sign(KEY, "q", body), KEY, "q")
    assert (got.payload, got.signed) == (b"\x80\x04N.", True)


def test_routing_of_survives_bad_envelopes() -> None:
    assert routing_of(b"garbage") is None
    r = routing_of(b'{"id": "t9", "r": "c1", "b": "bb", "kr": 1, "t": 3}')
    assert r is not None and (r.task_id, r.reply_to, r.batch, r.keep_result) == ("t9", "c1", "bb", True)


def test_outcomes() -> None:
    ok = decode_outcome(encode_ok("t", {"a": [1, 2]}))
    assert ok.result() == {"a": [1, 2]}
    bad = decode_outcome(encode_error("t", ("ValueError", "boom", "Traceback ...")))
    with pytest.raises(TaskError) as info:
        bad.result()
    assert (info.value.type_name, info.value.message, info.value.remote_traceback) == (
        "ValueError", "boom", "Traceback ...")
    lost = decode_outcome(encode_error("t", ("WorkerLostError", "killed by SIGKILL", "")))
    assert isinstance(lost.exception(), WorkerLostError)
    many = decode_outcomes(b"[" + encode_ok("a", 1) + b"," + encode_ok("b", 2) + b"]")
    assert [o.task_id for o in many] == ["a", "b"]


def test_unserializable_arguments_are_a_type_error() -> None:
    with pytest.raises(TypeError, match="not JSON-serializable"):
        TaskMessage(id="t", task="echo", args=[object()]).encode()


def test_a_chunk_outcome_decodes_to_one_chunk_result() -> None:
    raw = encode_chunk("t", [1, None, 3, None], [(1, ("SystemExit", "3", "tb")),
                                                 (3, ("WorkerLostError", "gone", ""))], 0.25)
    outcome = decode_outcome(raw)
    assert outcome.ok
    result = outcome.value
    assert isinstance(result, ChunkResult) and len(result) == 4 and result.duration == 0.25
    assert result.values == [1, None, 3, None] and sorted(result.errors) == [1, 3]
    assert isinstance(result.errors[3], WorkerLostError)
    assert result.item(0) == 1 and result.item(2) == 3
    with pytest.raises(TaskError, match="SystemExit: 3"):
        result.item(1)
    items = iter(result)
    assert next(items) == 1
    with pytest.raises(TaskError, match="SystemExit"):  # like map: raises at the failed item
        next(items)
    with pytest.raises(TaskError, match="SystemExit"):
        result.raise_first()
    clean = decode_outcome(encode_chunk("t", [1, 2], [], 0.0)).value
    assert list(clean) == [1, 2] and clean.first_error() is None
    clean.raise_first()  # nothing failed: nothing raised
