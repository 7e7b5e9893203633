"""Load test: `inttower serve` under wrk while the daemon trains and publishes index versions.

    python -m bench.serving_load [--phase-s 20] [--connections 4] [--swap-every-s 2]

Needs ``wrk`` (Debian/Ubuntu: ``apt install wrk``). Starts the embedded broker, replays
the synthetic stream into it (Arrow) from a thread, and runs three phases against one
`inttower serve` process, each ``--phase-s`` seconds of wrk (``--connections`` keep-alive
connections, requests alternating ``POST /score`` with ``--candidates`` candidates and
``POST /retrieve`` with k = 100):

1. **training + swaps**: ``inttower train`` trains and publishes a version every
   ``--swap-every-s`` (``[index] sync_interval_s``; a full refresh every 4 syncs);
2. **idle**: the daemon stopped; the service alone;
3. **training, no swaps**: the daemon again, resumed from its checkpoint, with
   ``[index] enabled = false``: the same training load without publication.

Trainer, broker and producer are pinned to CPU 0 and the service and wrk to CPU 1 (where
the machine has two or more), so the phases differ by what the service does, not by
whose turn it is on a core; in production the trainer runs elsewhere. Prints per phase
requests/s, p50/p99/max latency (wrk's own), errors (socket errors, non-2xx, responses
naming no version) and the versions the responses named, and p99 ratios against idle and
against training without swaps.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stream.broker import EmbeddedBroker, create_topic, free_port
from stream.config import StreamConfig
from stream.replay import replay
from stream.synthetic import SyntheticLogConfig, generate_synthetic_log, iter_synthetic_log

REPO = Path(__file__).resolve().parent.parent
TOPIC = "load-clicks"
RESULT_PREFIX = "INTTOWER-LOAD "

#: wrk script: alternate the two request bodies; count statuses, versions named, bodies without one.
WRK_LUA = r"""
local bodies = {}
local paths = {"/score", "/retrieve"}
local n = 0
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  local f = io.open(args[1]); bodies[1] = f:read("*a"); f:close()
  f = io.open(args[2]); bodies[2] = f:read("*a"); f:close()
  versions = {}; no_version = 0; bad = 0
end
function request()
  n = n + 1
  local i = n % 2 + 1
  return wrk.format("POST", paths[i], {["Content-Type"] = "application/json"}, bodies[i])
end
function response(status, headers, body)
  if status ~= 200 then
    bad = bad + 1
    if bad == 1 then io.stderr:write("first non-200: " .. status .. " " .. string.sub(body, 1, 300) .. "\n") end
    return
  end
  local v = string.match(body, '"version"%s*:%s*(%d+)')
  if v == nil then no_version = no_version + 1 else versions[v] = true end
end
function done(summary, latency, requests)
  local seen, nv, b = {}, 0, 0
  for _, t in ipairs(threads) do
    nv = nv + t:get("no_version"); b = b + t:get("bad")
    for v, _ in pairs(t:get("versions")) do seen[#seen + 1] = v end
  end
  io.write(string.format('%s{"requests": %d, "seconds": %.3f, "socket_errors": %d, "non_2xx": %d, "no_version": %d, ' ..
    '"p50_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f, "versions": [%s]}\n',
    "INTTOWER-LOAD ", summary.requests, summary.duration / 1e6,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout, b, nv,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000, table.concat(seen, ",")))
end
"""


@dataclass
class Phase:
    name: str
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    versions: list[int]


def _pin(pid: int, cpus: set[int]) -> None:
    if cpus:
        os.sched_setaffinity(pid, cpus)


def _config(workdir: Path, bootstrap: str, args: argparse.Namespace, index: bool) -> Path:
    q = json.dumps
    path = workdir / ("train.toml" if index else "train-no-index.toml")
    path.write_text(f"""
[stream]
bootstrap_servers = [{q(bootstrap)}]
topic = {q(TOPIC)}
group_id = "inttower-load"
max_batch_events = 1024

[daemon]
checkpoint_dir = {q(str(workdir / "checkpoints"))}
checkpoint_every_s = 5.0
stop_when_idle_s = 600.0

[index]
enabled = {str(index).lower()}
index_dir = {q(str(workdir / "index"))}
sync_interval_s = {args.swap_every_s}
full_refresh_interval_s = {4 * args.swap_every_s}
max_items = {args.items}

[serving]
workers = 2
""")
    return path


def _wait_healthy(port: int, process: subprocess.Popen, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"inttower serve exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                return int(json.loads(response.read())["version"])
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise RuntimeError(f"no index version served within {timeout_s:.0f} s")


def _wrk(name: str, port: int, args: argparse.Namespace, workdir: Path, cpus: set[int]) -> Phase:
    command = ["wrk", "-t1", f"-c{args.connections}", f"-d{args.phase_s}s", "--timeout", "10s",
               "-s", str(workdir / "load.lua"), f"http://127.0.0.1:{port}", "--",
               str(workdir / "score.json"), str(workdir / "retrieve.json")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _pin(process.pid, cpus)
    out, _ = process.communicate(timeout=args.phase_s + 60)
    line = next((x for x in out.splitlines() if x.startswith(RESULT_PREFIX)), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    for note in (x for x in out.splitlines() if x.startswith("first non-200")):
        print(f"  {name}: {note}", flush=True)
    r = json.loads(line[len(RESULT_PREFIX):])
    errors = r["socket_errors"] + r["non_2xx"] + r["no_version"]
    phase = Phase(name, r["requests"], r["seconds"], errors, r["p50_ms"], r["p99_ms"], r["max_ms"], sorted(r["versions"]))
    print(f"  {name}: {phase.requests / phase.seconds:,.0f} req/s, p50 {phase.p50_ms:.1f} ms, p99 {phase.p99_ms:.1f} ms, "
          f"errors {errors}, versions {len(phase.versions)}", flush=True)
    return phase


class _Feeder:
    """Replays the synthetic stream into the topic, a chunk at a time, until stopped."""

    def __init__(self, stream: StreamConfig, items: int) -> None:
        self.stop = threading.Event()
        self.error: BaseException | None = None
        config = SyntheticLogConfig(events=50_000_000, seed=1, initial_items=items)
        self._chunks = iter_synthetic_log(config, chunk_events=20_000)
        self._stream = stream
        self._thread = threading.Thread(target=self._run, name="load-feeder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for chunk in self._chunks:
                if self.stop.is_set():
                    return
                replay(chunk, self._stream, fmt="arrow", progress=False)
                self.stop.wait(1.0)  # ~20k events/s at most: the daemon trains the whole run
        except Exception as exc:  # noqa: BLE001 - reported at the end
            self.error = exc


def _train(config: Path, cpus: set[int]) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "inttower.cli", "train", "--config", str(config)], cwd=REPO,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    _pin(process.pid, cpus)
    return process


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def run(args: argparse.Namespace) -> list[Phase]:
    cpus = sorted(os.sched_getaffinity(0))
    trainer_cpus, serving_cpus = ({cpus[0]}, set(cpus[1:])) if len(cpus) > 1 else (set(), set())
    sample = generate_synthetic_log(SyntheticLogConfig(events=20_000, seed=1, initial_items=args.items))
    user = sample.column("user")[0].as_py()
    candidates = np.unique(sample.column("item_id").to_numpy())[:args.candidates].tolist()
    phases: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="inttower-load-") as tmp:
        workdir = Path(tmp)
        (workdir / "index").mkdir()
        (workdir / "load.lua").write_text(WRK_LUA)
        (workdir / "score.json").write_text(json.dumps({"user": user, "candidates": candidates, "allow_unknown": True}))
        (workdir / "retrieve.json").write_text(json.dumps({"user": user, "k": 100}))
        broker = EmbeddedBroker(log_path=workdir / "broker.log").start()
        _pin(broker.pid, trainer_cpus)
        _pin(0, trainer_cpus)  # this process feeds the topic; wrk and the service get the other core
        daemon = serve = None
        feeder: _Feeder | None = None
        try:
            create_topic(broker.bootstrap, TOPIC, 2)
            feeder = _Feeder(StreamConfig(bootstrap_servers=(broker.bootstrap,), topic=TOPIC), args.items)
            daemon = _train(_config(workdir, broker.bootstrap, args, index=True), trainer_cpus)
            port = free_port()
            serve = subprocess.Popen(
                [sys.executable, "-m", "inttower.cli", "serve", "--index-dir", str(workdir / "index"),
                 "--config", str(workdir / "train.toml"), "--port", str(port)], cwd=REPO,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            _pin(serve.pid, serving_cpus)
            first = _wait_healthy(port, serve, 300)
            print(f"serving version {first} on 127.0.0.1:{port}; cpus: trainer {sorted(trainer_cpus) or 'any'}, "
                  f"service + wrk {sorted(serving_cpus) or 'any'}", flush=True)
            time.sleep(args.swap_every_s * 3)  # past the first full refresh
            phases.append(_wrk("training + swaps", port, args, workdir, serving_cpus))
            _stop(daemon)
            time.sleep(2)
            phases.append(_wrk("idle", port, args, workdir, serving_cpus))
            daemon = _train(_config(workdir, broker.bootstrap, args, index=False), trainer_cpus)
            time.sleep(10)  # restored from its checkpoint and training again
            phases.append(_wrk("training, no swaps", port, args, workdir, serving_cpus))
        finally:
            if feeder is not None:
                feeder.stop.set()
            for process in (daemon, serve):
                if process is not None:
                    _stop(process)
            broker.stop()
        if feeder is not None and feeder.error is not None:
            raise RuntimeError(f"feeding the topic failed: {feeder.error!r}")
    return phases


def _print(phases: list[Phase]) -> None:
    by = {p.name: p for p in phases}
    print("\n| phase | requests/s | p50 ms | p99 ms | max ms | errors | versions named |")
    print("|---|---|---|---|---|---|---|")
    for p in phases:
        print(f"| {p.name} | {p.requests / p.seconds:,.0f} | {p.p50_ms:.1f} | {p.p99_ms:.1f} | {p.max_ms:.1f} | "
              f"{p.errors} | {len(p.versions)} ({p.versions[0] if p.versions else '-'}..{p.versions[-1] if p.versions else '-'}) |")
    swaps = by["training + swaps"]
    print(f"p99 during swaps / idle: {swaps.p99_ms / by['idle'].p99_ms:.2f}x; "
          f"/ training without swaps: {swaps.p99_ms / by['training, no swaps'].p99_ms:.2f}x; "
          f"errors in all: {sum(p.errors for p in phases)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase-s", type=int, default=20)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--swap-every-s", type=float, default=2.0)
    parser.add_argument("--items", type=int, default=20_000, help="catalogue size ([index] max_items)")
    parser.add_argument("--candidates", type=int, default=1_000)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("bench.serving_load needs wrk: apt install wrk (Debian/Ubuntu)")
    _print(run(args))


if __name__ == "__main__":
    main()
