#!/usr/bin/env python3
"""When the two cores stand idle during a first ship, and what each side is doing then.

  python3 bench/timeline.py [--bin PATH] [--only bulk,large] [--step 0.01] [--sender 'KEY = VALUE']

Runs bench.py's bulk corpus (workload 1) and its 1 GiB random file
(workload 5) once each, unprofiled, on bench.py's journaled loop
filesystems (the sender's state_dir on one of its own, as there), with the sender and receiver logging at debug. Every --step
seconds it reads the machine's CPU time (/proc/stat: busy, idle, waiting
on I/O) and each process's (/proc/PID/stat, all its threads), and prints,
per tenth of a second, how many of the cores each side kept busy, how
many the rest of the machine did (the kernel's writeback and the loop
device's threads among them) and how many stood idle, with the log lines
each side wrote in that tenth. The idle column summed is the CPU the run
left unused. About 1 minute. Standard library only.
"""
import argparse, os, re, subprocess, sys, threading, time
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count()
EXTRA = ""
LOG_LINE = re.compile(r"^(\S+)Z\s+(\w+)\s+(.*)$")


def machine():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) / TICK, v[3] / TICK, v[4] / TICK


def proc_cpu(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            v = f.read().rsplit(")", 1)[1].split()
        return (int(v[11]) + int(v[12])) / TICK
    except (OSError, ValueError, IndexError):
        return None


class Sampler(threading.Thread):
    def __init__(self, step):
        super().__init__(daemon=True)
        self.step, self.rows, self.pids, self.stop = step, [], {}, threading.Event()

    def run(self):
        last = {}
        while not self.stop.is_set():
            t = time.monotonic()
            total, idle, iowait = machine()
            sides = {}
            for name, pid in list(self.pids.items()):
                c = proc_cpu(pid)
                sides[name] = last.get(name, 0.0) if c is None else c
                last[name] = sides[name]
            self.rows.append((t, total, idle, iowait, sides))
            time.sleep(self.step)


def log_events(path, t_wall0):
    """Log lines as (seconds since the sender started, text); the logs carry UTC stamps."""
    out = []
    try:
        lines = open(path).read().splitlines()
    except OSError:
        return out
    for line in lines:
        m = LOG_LINE.match(line)
        if not m:
            continue
        try:
            ts = datetime.fromisoformat(m.group(1)[:26]).replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            continue
        out.append((ts - t_wall0, m.group(3)[:160]))
    return out


def run(work, corpus, keys, step):
    os.makedirs(work)
    os.environ["BENCH_LOG"] = "shipper=debug"
    port = bench.free_port()
    s = bench.Shipper(work, corpus, keys, f"127.0.0.1:{port}", f"127.0.0.1:{port}", 'interval = "1s"\nsettle = "250ms"\n' + EXTRA)
    want = bench.tree_sizes(corpus)
    smp = Sampler(step)
    smp.pids["receiver"] = s.receiver.pid
    smp.start()
    time.sleep(0.3)
    bench.at_rest()
    t_wall0, t0 = time.time(), time.monotonic()
    s.start_sender()
    smp.pids["sender"] = s.sender.pid

    def complete():
        if s.sender.poll() is not None:
            s.stop()
            raise RuntimeError("the sender stopped:\n" + open(os.path.join(work, "sender.log")).read()[-2000:])
        return bench.tree_sizes(s.root) == want
    bench.wait(complete, 1800, 0.02)
    dt = time.monotonic() - t0
    time.sleep(0.2)
    smp.stop.set()
    smp.join()
    s.stop()
    events = [(t, "S " + e) for t, e in log_events(os.path.join(work, "sender.log"), t_wall0)]
    events += [(t, "R " + e) for t, e in log_events(os.path.join(work, "receiver.log"), t_wall0)]
    events.sort()
    return dt, t0, smp.rows, events


def report(name, dt, t0, rows, events):
    print(f"\n**{name}**: tree complete {dt:.2f} s after the sender started\n")
    print("| from s | sender cores | receiver cores | rest of machine | idle (I/O wait) | log lines in this tenth |")
    print("|---|---|---|---|---|---|")
    sums = dict(sender=0.0, receiver=0.0, rest=0.0, idle=0.0, iowait=0.0)
    k = max(0, next(i for i, r in enumerate(rows) if r[0] >= t0) - 1)
    while rows[k][0] < t0 + dt and k + 1 < len(rows):
        a = rows[k]
        j = k + 1
        while j + 1 < len(rows) and rows[j][0] - a[0] < 0.1 - 1e-3:
            j += 1
        b = rows[j]
        span = b[0] - a[0]
        tot = b[1] - a[1]
        # /proc/stat counts every core's time in ticks: scale it to the span sampled.
        scale = CORES * span / tot if tot > 0 else 1.0
        idle = ((b[2] - a[2]) + (b[3] - a[3])) * scale
        iow = (b[3] - a[3]) * scale
        snd = b[4].get("sender", 0) - a[4].get("sender", 0)
        rcv = b[4].get("receiver", 0) - a[4].get("receiver", 0)
        rest = max(0.0, CORES * span - idle - snd - rcv)
        for key, v in (("sender", snd), ("receiver", rcv), ("rest", rest), ("idle", idle), ("iowait", iow)):
            sums[key] += v
        lo, hi = a[0] - t0, b[0] - t0
        ev = "; ".join(e for t, e in events if lo <= t < hi)
        print(f"| {lo:5.2f} | {snd / span:.2f} | {rcv / span:.2f} | {rest / span:.2f} | {idle / span:.2f} ({iow / span:.2f}) | {ev[:600]} |")
        k = j
    print(f"\nCPU seconds over the run: sender {sums['sender']:.2f}, receiver {sums['receiver']:.2f}, "
          f"rest of the machine {sums['rest']:.2f}, idle {sums['idle']:.2f} (I/O wait {sums['iowait']:.2f}), "
          f"of {CORES * dt:.2f} that {CORES} cores offer in {dt:.2f} s.")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=bench.BIN)
    ap.add_argument("--only", default="bulk,large")
    ap.add_argument("--step", type=float, default=0.01)
    ap.add_argument("--sender", default="", help="more [sender] settings, as TOML lines (to try one)")
    args = ap.parse_args()
    global EXTRA
    EXTRA = args.sender.replace("\\n", "\n") + ("\n" if args.sender else "")
    bench.BIN = os.path.abspath(args.bin)
    with bench.disks() as base:
        keys = bench.make_keys(base)
        if "bulk" in args.only:
            corpus = os.path.join(base, "corpus")
            bench.make_corpus(corpus, 42)
            report("bulk corpus (282 MiB, 3,301 files)", *run(os.path.join(base, "bulk-run"), corpus, keys, args.step))
        if "large" in args.only:
            corpus = os.path.join(base, "large")
            bench.make_large(corpus, 1024)
            report("1 GiB random file", *run(os.path.join(base, "large-run"), corpus, keys, args.step))

if __name__ == "__main__":
    main()
