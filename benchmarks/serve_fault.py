"""Fault: ``kill -9`` the worker under load; how long until requests succeed again, and how many failed.

A closed-loop load at concurrency 8 runs for ``--seconds``; after ``--kill-after``
seconds the worker process gets SIGKILL. Reported: failed requests (non-200 or
transport errors), the time from the kill to the first success of a request
sent after the kill ("recovery"), the time until the new worker is READY, and
the new worker's pid.

    python benchmarks/serve_fault.py [--seconds 15] [--kill-after 4] [--workers 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
import time

from serve_common import MODEL, benchmark_model, digit_png, dump, load, start_server, temp_dir, worker_pids, \
    worker_status
from zoo.serving import server


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--kill-after", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)

    tmp = temp_dir("zoo-bench-fault-")
    source, _, description = benchmark_model(tmp)
    body = digit_png()
    state, _ = start_server(source, tmp, args.batch_size, workers=args.workers)
    killed: dict = {}
    try:
        url = f"{state.inference_url}/predictions/{MODEL}"
        load(url, body, headers=state.headers(), concurrency=args.concurrency, total=200)
        before = worker_pids(state)
        start = time.perf_counter()

        def killer():
            time.sleep(args.kill_after)
            victim = before[0]
            killed["pid"] = victim
            killed["at"] = time.perf_counter() - start
            os.kill(victim, signal.SIGKILL)
            while time.perf_counter() - start < args.seconds + 30:
                try:
                    pids, statuses = worker_pids(state), worker_status(state)
                    if victim not in pids and len(pids) == args.workers and all(s == "READY" for s in statuses):
                        killed["ready_at"] = time.perf_counter() - start
                        killed["new_pids"] = pids
                        return
                except Exception:
                    pass
                time.sleep(0.05)

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        result = load(url, body, headers=state.headers(), concurrency=args.concurrency, duration=args.seconds,
                      record=True, timeout=60)
        thread.join(timeout=60)
    finally:
        server.stop(state.directory)
        shutil.rmtree(tmp, ignore_errors=True)
    # The load's clock started a moment after `start`; the offset is far below the timings reported.
    kill_at = killed.get("at", float("nan"))
    failed = [(t0, t1, s) for t0, t1, s in result.timeline if s != 200]
    after = [t1 for t0, t1, s in result.timeline if s == 200 and t0 >= kill_at]
    recovery = (min(after) - kill_at) if after else None
    failed_statuses: dict = {}
    for _, _, s in failed:
        failed_statuses[s] = failed_statuses.get(s, 0) + 1
    report = {
        "model": description, "workers": args.workers, "concurrency": args.concurrency, "batch_size": args.batch_size,
        "requests": result.count, "failed": len(failed), "failed_by_status": failed_statuses,
        "killed_pid": killed.get("pid"), "killed_at_s": round(kill_at, 3),
        "recovery_s_first_success_after_kill": round(recovery, 3) if recovery is not None else None,
        "new_worker_ready_s_after_kill": round(killed["ready_at"] - kill_at, 3) if "ready_at" in killed else None,
        "new_worker_pids": killed.get("new_pids"), "http": result.summary(),
    }
    print(f"killed worker {report['killed_pid']} at {report['killed_at_s']} s: {report['failed']} of "
          f"{report['requests']} requests failed {failed_statuses}; first success after the kill "
          f"{report['recovery_s_first_success_after_kill']} s later; new worker READY after "
          f"{report['new_worker_ready_s_after_kill']} s", flush=True)
    print(dump(report))
    return report


if __name__ == "__main__":
    sys.exit(0 if main()["recovery_s_first_success_after_kill"] is not None else 1)
