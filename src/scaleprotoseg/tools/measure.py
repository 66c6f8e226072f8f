"""How much a command costs: its wall time, the peak resident memory of its largest process (`wait4`'s
`ru_maxrss`, exact), the peak memory of all its processes together (proportional set size, sampled, so
shared pages count once) and the size of what it wrote. Used by the rehearsal and the scaling measurement;
the measuring process should not have imported torch: Linux counts in a child's `ru_maxrss` the peak of the
memory it ran in before `exec` (the parent's, since Python starts children with vfork), so a child's peak reads
at least the measuring process's own (`measured` warns when it does)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path


class Sampler(threading.Thread):
    """Peak proportional set size of a process and all its descendants, sampled every `every` seconds. Reading
    the PSS of a process of several GB walks its page tables: every 0.2 s that took a quarter of a core,
    every second about a twentieth."""

    def __init__(self, pid: int, every: float = 1.0):
        super().__init__(daemon=True)
        self.pid, self.every, self.peak, self.done = pid, every, 0, threading.Event()

    def run(self):
        import psutil

        while not self.done.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                return
            total = 0
            for p in procs:
                try:
                    info = p.memory_full_info()
                    total += getattr(info, "pss", info.rss)
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total)
            self.done.wait(self.every)


def measured(cmd: list[str], cwd: Path, env: dict, log) -> tuple[float, float, float, int]:
    """Run `cmd`; (seconds, max RSS of one process MB, peak PSS of all MB, exit code)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # the floor of a child's ru_maxrss (see above)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    sampler = Sampler(proc.pid)
    sampler.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:  # Ctrl-C or SIGTERM: nothing of the stage (its kernel runs in a session of its own) lives on
        kill_tree(proc.pid)
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    sampler.done.set()
    sampler.join()
    if usage.ru_maxrss <= own:
        print(f"measure: the max RSS of {' '.join(map(str, cmd[:4]))} … ({usage.ru_maxrss / 1024:.0f} MB) is the "
              "measuring process's own peak, which a child inherits: the command's may be lower", file=sys.stderr)
    return seconds, usage.ru_maxrss / 1024, sampler.peak / 2**20, proc.returncode


def kill_tree(pid: int) -> None:
    import psutil

    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.Error:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)


def disk(repo: Path, outs: list[str]) -> tuple[float, str, float]:
    """(MB under the outputs, the largest file, its MB)."""
    total, big, big_size = 0, "", 0
    for out in outs:
        p = repo / out
        files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()] if p.is_dir() else []
        for f in files:
            s = f.stat().st_size
            total += s
            if s > big_size:
                big, big_size = str(f.relative_to(repo)), s
    return total / 2**20, big, big_size / 2**20


