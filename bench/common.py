"""
Small shared helpers for the benchmark scripts: medians and ratios, the
result table and its JSON, and child processes that are always cleaned up.

Every figure is a ratio of two rates measured in the same run (the machines
are shared and noisy), each the median of several interleaved rounds.
"""
from __future__ import annotations

import atexit
import json
import math
import os
import signal
import socket
import subprocess
import sys
from typing import Any, Callable, Iterable, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# -- statistics ---------------------------------------------------------

def median(values: Iterable[float]) -> float:
    """The median (the mean of the middle two for an even count)."""
    xs = sorted(values)
    if not xs:
        raise ValueError("median of no values")
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2.0


def ratio(value: float, baseline: float) -> float:
    """C{value / baseline}; infinity when the baseline is zero."""
    return value / baseline if baseline else float("inf")


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (C{p} in 0..100)."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    k = max(0, min(len(xs) - 1, math.ceil(p / 100.0 * len(xs)) - 1))
    return xs[k]


def figure(name: str, value: float, baseline: float, unit: str, target: str, met: bool,
           value_ratio: float | None = None, **extra: Any) -> dict[str, Any]:
    """One row of the result table."""
    return {
        "figure": name, "value": value, "baseline": baseline, "unit": unit,
        "ratio": ratio(value, baseline) if value_ratio is None else value_ratio,
        "target": target, "met": bool(met), **extra,
    }


def compare(name: str, values: Sequence[float], baselines: Sequence[float], unit: str, target: str,
            ok: Callable[[float, float], bool], **extra: Any) -> dict[str, Any]:
    """
    A row from per-round measurements (round i of C{values} ran next to
    round i of C{baselines}): value and baseline are medians, the ratio is
    the median of the per-round ratios (robust to the machine's drift),
    C{ok(ratio, value)} decides whether the target is met.
    """
    r = median(ratio(v, b) for v, b in zip(values, baselines))
    v = median(values)
    return figure(name, v, median(baselines), unit, target, ok(r, v), value_ratio=r,
                  rounds={"value": list(values), "baseline": list(baselines)}, **extra)


# -- output -------------------------------------------------------------

def _fmt(x: Any) -> str:
    if isinstance(x, bool):
        return "yes" if x else "NO"
    if isinstance(x, float):
        if x != x or x in (float("inf"), float("-inf")):
            return str(x)
        return f"{x:,.3f}" if abs(x) < 10 else f"{x:,.0f}"
    return str(x)


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table (also readable on a terminal)."""
    cols = ["figure", "value", "baseline", "unit", "ratio", "target", "met"]
    cells = [[_fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(cols)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    out = [line(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(row) for row in cells]
    return "\n".join(out)


def write_json(path: str, data: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def emit(result: Any) -> None:
    """A figure script's result: one JSON line on stdout, read by the suite."""
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


# -- processes ----------------------------------------------------------

_children: list[subprocess.Popen[str]] = []
atexit.register(lambda: stop_all())


def python() -> str:
    return sys.executable


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def spawn(args: Sequence[str], **kw: Any) -> subprocess.Popen[str]:
    """
    Start a child (in our process group, so a terminal's Ctrl-C reaches it
    too) and remember it: L{stop_all} ends it at exit or on SIGINT/SIGTERM.
    """
    proc = subprocess.Popen(list(args), stdout=subprocess.PIPE, text=True, env=child_env(), cwd=ROOT, **kw)
    _children.append(proc)
    return proc


def wait_ready(proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
    """Wait for the child's C{READY <value>} line; return the value."""
    import select

    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        raise RuntimeError(f"{proc.args!r} did not become ready in {timeout}s")
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        raise RuntimeError(f"{proc.args!r} said {line!r} instead of READY (exit {proc.poll()})")
    return line.split(None, 1)[1].strip() if " " in line.strip() else ""


def stop(proc: subprocess.Popen[str], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after C{timeout}; reap it."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        except ProcessLookupError:
            pass
    if proc in _children:
        _children.remove(proc)


def run_json(args: Sequence[str], timeout: float) -> Any:
    """Run a child to completion and return its C{RESULT} JSON line."""
    proc = spawn(args)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        raise RuntimeError(f"{list(args)!r} ran longer than {timeout}s") from None
    finally:
        stop(proc)
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{list(args)!r} exited {proc.returncode} without a result")


_tempdirs: list[str] = []


def tempdir(prefix: str) -> str:
    """A scratch directory removed by L{stop_all} (at exit, also after a signal)."""
    import tempfile

    path = tempfile.mkdtemp(prefix=prefix)
    _tempdirs.append(path)
    return path


def stop_all() -> None:
    import shutil

    for proc in list(_children):
        stop(proc, timeout=5.0)
    while _tempdirs:
        shutil.rmtree(_tempdirs.pop(), ignore_errors=True)


def install_cleanup() -> None:
    """End every child at exit and on SIGINT/SIGTERM (then exit 130/143)."""
    def on_signal(signum: int, _frame: Any) -> None:
        stop_all()
        os._exit(128 + signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)


def rss_kb(pid: int) -> dict[str, int]:
    """C{VmRSS} and C{VmHWM} (peak) of a process, in kB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    return out


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:C{port}."""
    s = socket.socket()
    s.settimeout(0.5)
    try:
        s.connect(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()
