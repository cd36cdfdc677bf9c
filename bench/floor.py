#!/usr/bin/env python3
"""How far shipper is from the least work its promise asks, on rows 1 and 5.

  cargo build --release --bin shipper --example floor
  python3 bench/floor.py [--runs 3] [--only bulk,large]

bench/floor.rs (built as the example `floor`) ships a tree over mutual TLS
with shipper's own rustls configuration, hashing each file with BLAKE3 on
both sides and checking it, staging each file on root's filesystem and
renaming it into root, and nothing more: no zip, manifest, deflate, outbox
or state, the whole tree as one stream. The floors:

- `floor`: that, with no sync: set against the rsync daemon, it says what
  TLS and the two hashes alone cost on this machine;
- `floor, durable`: one syncfs of root's filesystem before the renames and
  one after, so no file is visible before its data is on the disk (each
  staged file handed to the disk 8 MiB at a time as it is written);
- `floor, durable, archive`: the receiver also writes the stream once more
  beside root, as it arrives, as a receiver with archive_keep > 0 keeps
  each bundle;
- `stored first`: the receiver writes the whole stream beside root as it
  arrives and unpacks it only then, as shipper's receiver keeps a bundle
  before it applies it (the stored stream is its archive);
- `spilled`: the sender writes the whole stream to its own disk first and
  sends it only then, as shipper packs a bundle into its outbox.

Each runs on bench.py's journaled loop filesystems beside shipper (as in
bench.py's row 1: interval 1s, settle 250ms, archive_keep 2) and rsync, tools
alternating, `--runs` runs each; a run's time is from the sender's start to
the tree complete in root, polled as bench.py polls it, with the machine's
busy CPU seconds meanwhile. Writes bench/FLOOR.md. About 1.5 minutes per
run of both workloads (5 at 3 runs).
"""
import argparse, os, shutil, statistics, subprocess, sys, time
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FLOOR = os.path.join(HERE, "..", "target", "release", "examples", "floor")


def floor_run(work, corpus, keys, durable, archive=False, spill=False, store_first=False):
    os.makedirs(work)
    root, staging = os.path.join(work, "www"), os.path.join(work, "staging")
    os.makedirs(root)
    sk, rk, sfp, rfp = keys
    port = bench.free_port()
    cmd = [FLOOR, "receive", "--listen", f"127.0.0.1:{port}", "--keys", rk, "--peer", sfp,
           "--root", root, "--staging", staging]
    if durable:
        cmd.append("--durable")
    if archive:
        cmd += ["--archive", os.path.join(work, "archive")]
    if store_first:
        cmd += ["--store-first", os.path.join(work, "incoming")]
    r = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(os.path.join(work, "receiver.log"), "w"))
    if r.stdout.readline().strip() != b"listening":
        raise RuntimeError("floor receiver did not start:\n" + open(os.path.join(work, "receiver.log")).read())
    want = bench.tree_sizes(corpus)
    bench.at_rest()
    b0, t0 = bench.busy_cpu_s(), time.monotonic()
    scmd = [FLOOR, "send", "--connect", f"127.0.0.1:{port}", "--keys", sk, "--peer", rfp, "--source", corpus]
    if spill:
        # On the sender's own disk, where bench.py keeps shipper's outbox.
        scmd += ["--spill", os.path.join(bench.sender_state(work), "outbox")]
    s = subprocess.Popen(scmd, stderr=open(os.path.join(work, "sender.log"), "w"))
    bench.wait(lambda: bench.tree_sizes(root) == want or r.poll() not in (None, 0), 600, 0.05)
    dt, busy = time.monotonic() - t0, bench.busy_cpu_s() - b0
    for p, side in ((r, "receiver"), (s, "sender")):
        if p.wait(120) != 0:
            raise RuntimeError(f"floor {side} failed:\n" + open(os.path.join(work, f"{side}.log")).read())
    assert bench.tree_sizes(root) == want and bench.same_content(corpus, root), "floor: content differs"
    shutil.rmtree(work)
    if spill:
        shutil.rmtree(bench.sender_state(work))
    return bench.Run(dt, None, busy)


def shipper_keeping(keep, work, corpus, keys):
    """bench.py's shipper run with the receiver's archive_keep at `keep`."""
    was, bench.ARCHIVE_KEEP = bench.ARCHIVE_KEEP, keep
    try:
        return bench.bulk_shipper(work, corpus, keys)
    finally:
        bench.ARCHIVE_KEEP = was


def measure(base, name, corpus, keys, runs, peers):
    """Each tool's runs on `corpus`, alternating: {tool: [Run]}."""
    tools = {
        **peers,
        "floor": lambda w: floor_run(w, corpus, keys, False),
        "floor, durable": lambda w: floor_run(w, corpus, keys, True),
        "floor, durable, archive": lambda w: floor_run(w, corpus, keys, True, archive=True),
        "floor, durable, stored first": lambda w: floor_run(w, corpus, keys, True, store_first=True),
        "floor, durable, spilled": lambda w: floor_run(w, corpus, keys, True, spill=True),
        "floor, durable, spilled, stored first": lambda w: floor_run(w, corpus, keys, True, spill=True, store_first=True),
        "shipper": lambda w: bench.bulk_shipper(w, corpus, keys),
        "shipper, archive_keep 0": lambda w: shipper_keeping(0, w, corpus, keys),
    }
    out = {k: [] for k in tools}
    names = list(tools)
    for run in range(runs):
        k = run % len(names)
        for who in names[k:] + names[:k]:
            out[who].append(tools[who](os.path.join(base, f"{name}{names.index(who)}{run}")))
        print(f"{name} run {run}: " + ", ".join(f"{k} {v[-1].dt:.2f}s" for k, v in out.items()), flush=True)
    return out


def table(title, out, peer):
    med = {k: statistics.median(r.dt for r in v) for k, v in out.items()}
    busy = {k: statistics.median(r.busy for r in v) for k, v in out.items()}
    lines = [f"**{title}**", "",
             f"| tool | median s | runs s | machine busy, CPU s | / {peer} | shipper / this | shipper's bundles, MiB per run |",
             "|---|---|---|---|---|---|---|"]
    for k, v in out.items():
        runs = ", ".join(f"{r.dt:.2f}" for r in v)
        # Shipper's bytes say whether a run deflated its big bundle (row 1's
        # two outcomes, BENCHMARKS.md) or stored it.
        sent = ", ".join(f"{r.sent / 2**20:.0f}" for r in v if r.sent is not None) or "-"
        lines.append(f"| {k} | {med[k]:.2f} | {runs} | {busy[k]:.2f} | {med[k] / med[peer]:.2f} | "
                     f"{med['shipper'] / med[k]:.2f} | {sent} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default="bulk,large")
    ap.add_argument("--out", default=os.path.join(HERE, "FLOOR.md"))
    args = ap.parse_args()
    bench.ensure_tools()
    for b in (bench.BIN, FLOOR):
        if not os.path.exists(b):
            sys.exit(f"{b} is not built: cargo build --release --bin shipper --example floor")
    commit = subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", HERE, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
    with open("/proc/cpuinfo") as f:
        cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
    parts = [
        "# The floor under rows 1 and 5\n",
        f"Written by `python3 bench/floor.py` (median of {args.runs} runs, tools alternating), "
        f"at commit {commit}{' (with uncommitted changes)' if dirty else ''}, "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, on {os.cpu_count()} cores ({cpu}).",
        "The floors are bench/floor.rs: mutual TLS with shipper's rustls configuration, BLAKE3 of every "
        "file on both sides, each file staged on root's filesystem and renamed into root; `durable` adds "
        "one syncfs before the renames and one after, each staged file handed to the disk 8 MiB at a time "
        "as it is written (as shipper's receiver does); `archive` writes the received stream once more beside "
        "root as it arrives; `stored first` writes it there whole before unpacking it, as shipper's receiver "
        "keeps a bundle before applying it; `spilled` has the sender write it whole to its own disk before "
        "sending it, as shipper packs into its outbox. Nothing else: no zip, manifest, deflate, outbox, state or bundles. Shipper runs as in "
        "bench.py's row 1 (interval 1s, settle 250ms, archive_keep 2). Times run from the sender's start "
        "to the tree complete in root.\n",
    ]
    with bench.disks() as base:
        keys = bench.make_keys(base)
        if "bulk" in args.only:
            corpus = os.path.join(base, "corpus")
            bench.make_corpus(corpus, 42)
            peers = {
                "rsync daemon": lambda w: bench.bulk_rsync(w, corpus),
                "rsync daemon, then sync -f": lambda w: bench.bulk_rsync(w, corpus, syncfs=True),
            }
            out = measure(base, "fb", corpus, keys, args.runs, peers)
            parts.append(table("bulk corpus (row 1: 3,301 files, 282 MiB, seed 42)", out, "rsync daemon"))
            shutil.rmtree(corpus)
        if "large" in args.only:
            corpus = os.path.join(base, "large")
            bench.make_large(corpus, 1024)
            peers = {
                "rsync daemon": lambda w: bench.bulk_rsync(w, corpus),
                "rsync --fsync daemon": lambda w: bench.bulk_rsync(w, corpus, fsync=True),
            }
            out = measure(base, "fl", corpus, keys, args.runs, peers)
            parts.append(table("1 GiB random file (row 5)", out, "rsync --fsync daemon"))
    with open(args.out, "w") as f:
        f.write("\n".join(parts))
    print(open(args.out).read())


if __name__ == "__main__":
    main()
