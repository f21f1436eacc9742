"""Run the idiolect CLI as a child process, optionally killing itself (SIGKILL) at a named point.

    python cli_driver.py ARGS...        same as `idiolect ARGS...`

Environment:
    IDIOLECT_TEST_KILL_AT  ``package.module:function[:before|:after][@N]``: on the N-th call
                           (default 1) of that function, SIGKILL this process before the call
                           runs (default) or right after it returns. The function is replaced on
                           its module, so name the module the caller looks it up in (e.g.
                           ``idiolect.adapters:publish_dir`` for the rename inside install).
    IDIOLECT_TEST_RUSAGE   a path: on exit, write this process's peak RSS (KiB; Linux: VmHWM),
                           CPU seconds and bytes read (Linux: /proc/self/io rchar) as JSON.

This is fault injection, not a stand-in: the project's code runs unchanged up to the kill, which
is the same SIGKILL a user's `kill -9` or the OOM killer would send.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import resource
import signal
import sys


def _install_kill(spec: str) -> None:
    spec, _, nth = spec.partition("@")
    parts = spec.split(":")
    module, attr = parts[0], parts[1]
    when = parts[2] if len(parts) > 2 else "before"
    count = {"n": 0, "at": int(nth or 1)}
    mod = importlib.import_module(module)
    real = getattr(mod, attr)

    def die(note: str) -> None:
        sys.stderr.write(f"cli_driver: SIGKILL {note} {module}:{attr} (call {count['n']})\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    @functools.wraps(real)
    def wrapper(*args, **kwargs):
        count["n"] += 1
        if count["n"] == count["at"] and when == "before":
            die("before")
        out = real(*args, **kwargs)
        if count["n"] == count["at"] and when == "after":
            die("after")
        return out

    setattr(mod, attr, wrapper)


def _write_rusage(path: str) -> None:
    from idiolect.compile.train import peak_rss_mb  # VmHWM: this program's own peak

    ru = resource.getrusage(resource.RUSAGE_SELF)
    out = {"maxrss_kb": round(peak_rss_mb() * 1024), "cpu_s": ru.ru_utime + ru.ru_stime}
    try:  # rchar: bytes this process read through read()/readline()
        for line in open("/proc/self/io"):
            k, _, value = line.partition(":")
            if k == "rchar":
                out["read_bytes"] = int(value.split()[0])
    except OSError:
        pass
    with open(path, "w") as f:
        json.dump(out, f)


def main() -> int:
    kill_at = os.environ.get("IDIOLECT_TEST_KILL_AT")
    if kill_at:
        _install_kill(kill_at)
    from idiolect.cli import cli

    try:
        cli.main(args=sys.argv[1:], prog_name="idiolect", standalone_mode=True)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    else:
        code = 0
    finally:
        if os.environ.get("IDIOLECT_TEST_RUSAGE"):
            _write_rusage(os.environ["IDIOLECT_TEST_RUSAGE"])
    return code


if __name__ == "__main__":
    sys.exit(main())
