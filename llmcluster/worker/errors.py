"""error.json in torch's ErrorHandler schema (``torch/distributed/elastic/multiprocessing/errors``).

A failing rank writes ``{"message": {"message": "<Type>: <text>", "extraInfo": {"py_callstack":
<traceback>, "timestamp": "<int seconds as a string>"}}}`` with ``json.dump`` to the path in
``TORCHELASTIC_ERROR_FILE`` (nothing when it is unset), as ``@record`` does. A rank killed by a
signal cannot write anything: its agent writes the file for it, with ``errorCode`` (the
negative exit code, as the agent's ``dump_error_file`` adds it), or adds ``errorCode`` to the
file the rank wrote before the signal.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import traceback

ERROR_FILE_VAR = "TORCHELASTIC_ERROR_FILE"


def error_data(message: str, callstack: str, timestamp: int) -> dict[str, object]:
    """The ErrorHandler document."""
    return {
        "message": {
            "message": message,
            "extraInfo": {"py_callstack": callstack, "timestamp": str(timestamp)},
        }
    }


def record_exception(exc: BaseException, path: str | None = None) -> str:
    """Write ``exc`` (being handled) to this rank's error file; returns the path ("" if none)."""
    return record_error(f"{type(exc).__name__}: {exc}", traceback.format_exc(), path)


def record_error(message: str, callstack: str, path: str | None = None) -> str:
    """Write an error (its ``Type: text`` line and traceback) to this rank's error file;
    returns the path ("" if none)."""
    path = path if path is not None else os.environ.get(ERROR_FILE_VAR, "")
    if not path:
        return ""
    data = error_data(message, callstack, int(time.time()))
    try:
        with open(path, "w") as out:
            json.dump(data, out)
    except OSError:
        return ""
    return path


def record_signal_death(path: str, *, exitcode: int, pid: int, signal_name: str) -> str:
    """The agent's part for a rank that died by a signal: add ``errorCode`` to the rank's file,
    or write one naming the signal. Returns the path ("" when nothing could be written)."""
    data: dict[str, object] | None = None
    with contextlib.suppress(OSError, ValueError), open(path) as existing:
        data = json.load(existing)
    if not isinstance(data, dict) or not isinstance(data.get("message"), dict):
        text = f"Signal {-exitcode} ({signal_name}) received by PID {pid}"
        data = error_data(text, text, int(time.time()))
    message = data["message"]
    assert isinstance(message, dict)
    message["errorCode"] = exitcode
    try:
        with open(path, "w") as out:
            json.dump(data, out)
    except OSError:
        return ""
    return path
