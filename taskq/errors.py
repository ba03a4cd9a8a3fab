"""The taskq exception tree.

Every error a user can meet derives from :class:`TaskqError`, so ``except TaskqError``
catches everything taskq raises on its own behalf; exceptions raised *by a task* come
back wrapped in :class:`TaskError` with the remote type, message and traceback text.
"""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool


class TaskqError(Exception):
    """Base class of every error taskq raises itself."""


class ConfigError(TaskqError):
    """Bad settings or usage: an invalid URL, option or argument (CLI exit code 2)."""


class BrokerError(TaskqError):
    """Redis could not be reached or answered with an error."""


class EmbeddedRedisError(BrokerError):
    """The embedded redis-server could not be found, started or reached."""


class UnknownTaskError(TaskqError):
    """No task is registered under the given name."""


class SignatureError(TaskqError):
    """A payload that needs the shared secret is unsigned, or its signature is wrong."""


class ExpiredError(SignatureError):
    """A signed entry past the expiry its producer signed into it (``exp``)."""


class MessageError(TaskqError):
    """A message read from Redis is malformed, too large, or of the wrong shape."""


class TaskError(TaskqError):
    """A task raised an exception on a worker.

    ``type_name`` is the remote exception's qualified type name, ``message`` its
    ``str()``, and ``remote_traceback`` the formatted traceback text from the worker.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[type[TaskError], tuple[str, str, str]]:
        return (type(self), (self.type_name, self.message, self.remote_traceback))


class WorkerLostError(TaskError, BrokenProcessPool):
    """The pool process running the task died (signal, segfault, OOM kill, ``os._exit``).

    Also a ``concurrent.futures.process.BrokenProcessPool``, what the stdlib raises
    there, so ``except BrokenProcessPool:`` keeps working (the executor itself never
    becomes broken: only this task failed)."""

    def __init__(self, message: str, remote_traceback: str = "") -> None:
        super().__init__("WorkerLostError", message, remote_traceback)

    def __reduce__(self) -> tuple[type[WorkerLostError], tuple[str, str]]:  # type: ignore[override]
        return (type(self), (self.message, self.remote_traceback))


class TaskTimeoutError(TaskError):
    """The task overran its time limit.

    Raised *inside* the task at the soft limit; reported as the task's error when the
    worker had to kill the process at the hard limit.
    """

    def __init__(self, message: str = "task timed out", remote_traceback: str = "") -> None:
        super().__init__("TaskTimeoutError", message, remote_traceback)

    def __reduce__(self) -> tuple[type[TaskTimeoutError], tuple[str, str]]:  # type: ignore[override]
        return (type(self), (self.message, self.remote_traceback))


class DeadLetteredError(TaskError):
    """The task was moved to the dead-letter stream (poison, undecodable, untrusted)."""

    def __init__(self, message: str, remote_traceback: str = "") -> None:
        super().__init__("DeadLetteredError", message, remote_traceback)

    def __reduce__(self) -> tuple[type[DeadLetteredError], tuple[str, str]]:  # type: ignore[override]
        return (type(self), (self.message, self.remote_traceback))


class TaskLostError(TaskError):
    """Redis no longer knows the task (it restarted without its data, or was flushed):
    it is neither queued, running, delayed nor done, so no outcome will ever come."""

    def __init__(self, message: str, remote_traceback: str = "") -> None:
        super().__init__("TaskLostError", message, remote_traceback)

    def __reduce__(self) -> tuple[type[TaskLostError], tuple[str, str]]:  # type: ignore[override]
        return (type(self), (self.message, self.remote_traceback))


_BY_NAME: dict[str, type[TaskError]] = {
    "WorkerLostError": WorkerLostError,
    "TaskTimeoutError": TaskTimeoutError,
    "DeadLetteredError": DeadLetteredError,
}


def task_error(type_name: str, message: str, remote_traceback: str = "") -> TaskError:
    """Rebuild the right :class:`TaskError` subclass from its wire form."""
    cls = _BY_NAME.get(type_name)
    if cls is not None:
        return cls(message, remote_traceback)
    return TaskError(type_name, message, remote_traceback)
