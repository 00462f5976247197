"""What a flow command does when its Prefect server goes away, or when it is told to stop.

* **A lost server.** The warehouse, not Prefect, records what a step did: its ``runs`` row is committed
  whether or not Prefect hears of it. When Prefect's reporting fails because the API server went away
  (the command's temporary server died, or ``PREFECT_API_URL``'s server stopped), the command looks up
  the run of its outcome step (``OUTCOME_STEP``) that its own flow run wrote. Committed ``success``: one
  warning line names the lost server, the step's line is printed, exit 0. Committed ``failed``: one error
  line, exit 1. No committed outcome: one error line naming the lost server, exit 2.
* **SIGTERM.** While a flow runs, SIGTERM raises :class:`Terminated` in the main thread (Prefect's engine,
  which installs its own handler for the flow's duration, reports the crash and passes the signal on):
  the running step records ``failed`` (nothing staged becomes visible: ``warehouse.store``), Prefect's
  temporary server is stopped at exit, and the command exits 143. A watcher thread sees the signal
  itself (``signal.set_wakeup_fd``, so also while the main thread is inside native code or Prefect's
  handler): if the process is still alive ``TERMINATE_GRACE_S`` later, it kills the temporary server and
  ends the process at once (what a SIGKILL would do: the next run marks the step failed and recovery
  rolls its staging back).
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
from contextlib import contextmanager

# After SIGTERM a clean stop needs Prefect's crash report (two API calls), one small ``runs`` write and
# the temporary server's stop (Prefect waits up to 5 s for it): 10 s covers that on a loaded 2-core
# machine and is still "within seconds" for a supervisor (systemd's default stop timeout is 90 s).
TERMINATE_GRACE_S = 10.0
TERMINATED_EXIT = 128 + signal.SIGTERM  # the shell's status for a process ended by SIGTERM

# The step whose committed run is the command's outcome, per flow (the last step that records a run).
OUTCOME_STEP = {"denoise": "denoise", "crawl": "crawl", "train": "evaluate", "nightly": "switch"}
# httpx errors that mean the API server is gone (refused, reset or never answering), not a bad request.
CONNECTION_ERRORS = {"ConnectError", "ConnectTimeout", "ReadError", "WriteError", "ReadTimeout",
                     "RemoteProtocolError", "PoolTimeout"}


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived while a flow ran (a KeyboardInterrupt, so no ``except Exception`` swallows it)."""


class FlowEnded(Exception):
    """Prefect's server was lost during a flow: the message (and the outcome the warehouse knows)."""

    def __init__(self, message: str, code: int, output: str = ""):
        super().__init__(message)
        self.code = code
        self.output = output  # the step's own line, for stdout

    def exit(self) -> None:
        """Print, then end the process without Prefect's exit-time drain: its log and event shippers would
        retry the lost server for ~10 s and can only fail. A temporary server still alive is killed first."""
        if self.output:
            print(self.output)
        print(self, file=sys.stderr)
        _kill_temporary_server()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(self.code)


def temporary_server():
    """Prefect's temporary server of this process (a ``SubprocessASGIServer``), or None."""
    module = sys.modules.get("prefect.server.api.server")  # imported by Prefect when it started one
    server = getattr(module, "SubprocessASGIServer", None)
    instance = server._instances.get(None) if server is not None else None
    return instance if instance is not None and instance.server_process is not None else None


def lost_server(exc: BaseException) -> str | None:
    """``"<url> (<why>)"`` when ``exc`` comes from losing the Prefect API server, else None."""
    errors = [e for e in exception_chain(exc) if type(e).__name__ in CONNECTION_ERRORS]
    if not errors:
        return None
    why = re.sub(r"^\[Errno \d+\]\s*", "", str(errors[-1]).strip()).lower() or type(errors[-1]).__name__
    server = temporary_server()
    if server is not None:
        code = server.server_process.poll()
        exited = "" if code is None else f"; its process exited with status {code}"
        return f"{server.address} ({why}{exited})"
    return f"{os.environ.get('PREFECT_API_URL') or 'the Prefect API'} ({why})"


def outcome_after_lost_server(settings, flow_name: str, flow_run_ids: set[str], where: str) -> FlowEnded | None:
    """The committed outcome of the flow runs ``flow_run_ids``' outcome step, as a :class:`FlowEnded`."""
    from warehouse import open_warehouse

    step = OUTCOME_STEP.get(flow_name)
    if not step or not flow_run_ids:
        return None
    marks = ",".join("?" for _ in flow_run_ids)
    rows = open_warehouse(settings).query(
        f"SELECT run_id, status, message FROM runs WHERE step = ? AND prefect_flow_run_id IN ({marks}) "
        "AND status IN ('success', 'failed') ORDER BY finished_at DESC LIMIT 1", [step, *flow_run_ids]).to_pylist()
    if not rows:
        return None
    run = rows[0]
    message = (run["message"] or "").strip().splitlines()
    said = f"lost the Prefect server at {where}; the run {run['run_id']} was committed: {run['status']}"
    if run["status"] == "success":
        return FlowEnded(f"shoesearch: warning: {said}", 0, f"{run['run_id']}: {message[0] if message else ''}")
    return FlowEnded(f"shoesearch: error: {said} ({message[0][:300] if message else 'no message'})", 1)


def recording_flow_runs(flow, into: set[str]):
    """``flow`` with a hook that adds each of its flow run ids to ``into`` when the run starts."""
    def remember(_flow, flow_run, _state) -> None:
        into.add(str(flow_run.id))

    return flow.with_options(on_running=[*flow.on_running_hooks, remember])


@contextmanager
def stop_on_sigterm(grace_s: float = TERMINATE_GRACE_S):
    """SIGTERM -> :class:`Terminated` while the block runs, with a hard stop ``grace_s`` after the signal."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    threading.Thread(target=_watch, args=(read_fd, grace_s), name="sigterm-watch", daemon=True).start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGTERM, previous)
        os.close(write_fd)  # the watcher reads EOF and ends


_SIGTERM_SEEN = threading.Event()


def sigterm_seen(wait_s: float = 0.2) -> bool:
    """Whether SIGTERM arrived (waiting ``wait_s`` for the watcher): then a failure is the stop's doing
    (DuckDB, for one, turns the interrupt into ``RuntimeError: Query interrupted``)."""
    return _SIGTERM_SEEN.wait(wait_s)


def _raise_terminated(signum, frame) -> None:
    _SIGTERM_SEEN.set()
    raise Terminated()


def _watch(read_fd: int, grace_s: float) -> None:
    """Wait for SIGTERM's byte on the wakeup pipe; then give the clean stop ``grace_s`` seconds."""
    timer = None
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        while chunk := pipe.read(64):  # read until the block ends (EOF): a closed pipe would warn on write
            if signal.SIGTERM in chunk and timer is None:
                _SIGTERM_SEEN.set()
                timer = threading.Timer(grace_s, _hard_stop, args=(grace_s,))
                timer.daemon = True
                timer.start()


def _kill_temporary_server() -> None:
    server = temporary_server()
    process = server.server_process if server is not None else None
    if process is not None:
        process.kill()
        process.wait()


def _hard_stop(grace_s: float) -> None:
    _kill_temporary_server()
    os.write(2, f"shoesearch: terminated (SIGTERM); the clean stop took over {grace_s:.0f} s, ended at once\n"
                .encode())
    os._exit(TERMINATED_EXIT)


def exception_chain(exc: BaseException):
    """``exc`` and its causes / contexts, also inside exception groups."""
    seen, todo = set(), [exc]
    while todo:
        exc = todo.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        yield exc
        todo += [exc.__cause__, exc.__context__, *getattr(exc, "exceptions", ())]
