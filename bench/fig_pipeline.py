"""
Plugin throughput: a real ductile instance (in this process, dispatcher
running, C{max_workers: 2}) against raw C{spawnProcess} of the same plugin
file at the same concurrency (2), with the request bytes ductile sends that
plugin (captured from a first run of the pipeline) on stdin.

- 1-step pipeline of the C{/bin/sh} plugin: jobs/s vs raw spawns/s.
- 3-step pipeline of the same plugin: events/s through the chain vs raw ÷ 3.
- Python plugin: ms per job vs ms per raw spawn of the same script/interpreter.

Each ductile measurement enqueues as many root events as the raw rate would
finish in C{--window} seconds and times until the queue is empty.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from twisted.internet import defer, protocol, task  # noqa: E402

import experiments  # noqa: E402
from common import compare, emit, log, tempdir  # noqa: E402
from instances import EVENT, pipeline, receiver_config  # noqa: E402

from ductile.events import Event  # noqa: E402
from ductile.executor import dispatch_to_spec  # noqa: E402
from ductile.plugins.protocol import encode_request  # noqa: E402
from ductile.plugins.runner import SETSID, minimal_env  # noqa: E402

class _Once(protocol.ProcessProtocol):
    def __init__(self, done: defer.Deferred, request: bytes) -> None:
        self.done = done
        self.request = request

    def connectionMade(self) -> None:
        self.transport.write(self.request)
        self.transport.closeStdin()

    def processEnded(self, reason: object) -> None:
        self.done.callback(None)


async def raw_rate(reactor, path: str, window: float, request: bytes, concurrency: int = 2,
                   setsid: bool = False) -> float:
    """
    Spawns/s of C{path} (posix_spawn path: no path/uid/gid), C{concurrency}
    at a time, each given C{request} on stdin; with C{setsid}, through
    C{/usr/bin/setsid} as ductile's runner once started plugins.
    """
    env = minimal_env()
    count = [0]
    deadline = time.perf_counter() + window

    async def loop() -> None:
        while time.perf_counter() < deadline:
            d: defer.Deferred = defer.Deferred()
            if setsid:
                reactor.spawnProcess(_Once(d, request), SETSID, [SETSID, path], env=env)
            else:
                reactor.spawnProcess(_Once(d, request), path, [path], env=env)
            await d
            count[0] += 1

    t0 = time.perf_counter()
    await defer.gatherResults([defer.ensureDeferred(loop()) for _ in range(concurrency)])
    return count[0] / (time.perf_counter() - t0)


async def pipeline_rate(reactor, svc, event_type: str, n: int) -> float:
    """Root events/s: enqueue C{n} events at once, time until no job is queued or running."""
    router, queue = svc.instance.router, svc.queue
    specs = []
    for i in range(n):
        event = Event.create(event_type, {"data": "x" * 300, "i": i}, "bench", reactor.seconds())
        specs += [dispatch_to_spec(d, svc.config, submitted_by="bench", source_event_id=event.event_id)
                  for d in router.route_root(event, {})]
    t0 = time.perf_counter()
    await queue.enqueue(specs)
    while True:
        # Looked at after every commit that may have moved a job (no
        # polling interval to add to the measured time).
        changed = queue.changed()
        counts = await queue.counts()
        if counts.get("queued", 0) + counts.get("running", 0) == 0:
            break
        if time.perf_counter() - t0 > 30:
            raise RuntimeError("pipeline did not drain within 30 s")
        await changed
    bad = {k: v for k, v in counts.items() if k != "succeeded"}
    if bad:
        raise RuntimeError(f"jobs did not all succeed: {counts}")
    return n / (time.perf_counter() - t0)


async def sent_request(reactor, svc, event_type: str) -> bytes:
    """The bytes ductile writes to the plugin's stdin for C{event_type}'s first step."""
    runner = svc.runner
    seen: list[bytes] = []
    run = runner.run

    def recording(plugin, request, *args, **kwargs):
        seen.append(encode_request(request))
        return run(plugin, request, *args, **kwargs)

    runner.run = recording
    try:
        await pipeline_rate(reactor, svc, event_type, 1)
    finally:
        del runner.run
    return seen[0]


async def main(reactor, args) -> None:
    from ductile.config import load_config
    from ductile.instance import build_instance
    from ductile.service import DuctileService

    base = tempdir("ductile-bench-pipe-")
    cfg_dir = receiver_config(base, "pipes", max_workers=2, pipelines=[
        pipeline("one", ["sh-ok"], on="bench.one"),
        pipeline("three", ["sh-ok", "sh-ok", "sh-ok"], on="bench.three"),
        pipeline("py", ["py-ok"], on="bench.py"),
    ], synchronous=args.synchronous)
    svc = DuctileService(build_instance(load_config(cfg_dir)), reactor)
    if args.profile:
        from profiling import profile_service

        profile_service(args.profile, svc, reactor)
    svc.startService()
    await svc.started
    if args.profile:  # one 1-step measurement only, under cProfile
        try:
            emit({"jobs_per_s": await pipeline_rate(reactor, svc, "bench.one", 400)})
        finally:
            await svc.stopService()
            shutil.rmtree(base, ignore_errors=True)
        return
    sh = svc.instance.plugins["sh-ok"].entrypoint
    py = svc.instance.plugins["py-ok"].entrypoint
    sh_request = await sent_request(reactor, svc, "bench.one")
    py_request = await sent_request(reactor, svc, "bench.py")
    log(f"request bytes on the plugin's stdin: sh {len(sh_request)}, python {len(py_request)}")
    rows: dict[str, list[float]] = {k: [] for k in ("raw_sh", "one", "three", "raw_py", "py", "setsid_sh")}
    try:
        for r in range(args.rounds):
            raw = await raw_rate(reactor, sh, args.window, sh_request)
            rows["raw_sh"].append(raw)
            rows["setsid_sh"].append(await raw_rate(reactor, sh, args.window / 2, sh_request, setsid=True))
            rows["one"].append(await pipeline_rate(reactor, svc, "bench.one", int(raw * args.window)))
            rows["three"].append(await pipeline_rate(reactor, svc, "bench.three", int(raw * args.window / 3)))
            raw = await raw_rate(reactor, py, args.window, py_request)
            rows["raw_py"].append(raw)
            rows["py"].append(await pipeline_rate(reactor, svc, "bench.py", max(4, int(raw * args.window))))
            log(f"pipeline round {r + 1}: " + ", ".join(f"{k}={v[-1]:.1f}/s" for k, v in rows.items()))
    finally:
        await svc.stopService()
        shutil.rmtree(base, ignore_errors=True)
    one = compare("1-step /bin/sh pipeline, jobs/s (max_workers 2)", rows["one"], rows["raw_sh"], "jobs/s",
                  ">= 0.60x raw spawnProcess (2 at a time)", lambda r, v: r >= 0.6)
    three = compare("3-step /bin/sh pipeline, events/s (max_workers 2)", rows["three"],
                    [x / 3 for x in rows["raw_sh"]], "events/s", ">= 0.60x raw spawn rate / 3", lambda r, v: r >= 0.6)
    py_fig = compare("Python plugin, ms per job (max_workers 2)", [1000 / x for x in rows["py"]],
                     [1000 / x for x in rows["raw_py"]], "ms/job", "<= 1.2x raw spawn of same interpreter",
                     lambda r, v: r <= 1.2, interpreter=sys.executable)
    setsid = compare("(diagnostic) raw /bin/sh spawns/s through /usr/bin/setsid", rows["setsid_sh"], rows["raw_sh"],
                     "spawns/s", "(reported: the runner's fallback exec)", lambda r, v: True)
    emit([one, three, py_fig, setsid])


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--window", type=float, default=2.0)
    p.add_argument("--profile", help="only run the 1-step pipeline once under cProfile; stats to PROFILE.*")
    p.add_argument("--synchronous", default="full", help="state.synchronous (full is the default and the figure)")
    p.add_argument("--experiment", action="append", help="see bench/experiments.py")
    args = p.parse_args()
    experiments.apply(sys.argv)
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, args)))
