#!/usr/bin/env python3
"""Catch-up cost after a sender restart, against an rsync no-op run.

  python3 bench/catchup.py [--binary target/release/shipper] [--files 11000] [--changed 100] [--runs 3]

A tree of --files small HTML files is shipped once; then, per run, the
sender is stopped, --changed files are modified, and 2 s later the sender
is restarted.
Measured per run:
- compare: start of the process to its log line "source tree compared"
  (walk of the tree + comparison with the acknowledged state);
- catch-up: start of the process to the changed files being visible in the
  receiver's root (compare + pack + ship + apply).
Baseline: `rsync -a --delete src/ mirror/` when mirror is already equal
(a no-op run over the same tree), median of 5.
Installs rsync with apt-get if missing. Prints a Markdown table.
"""
import argparse, os, shutil, signal, socket, statistics, subprocess, tempfile, time


def ensure_rsync():
    if shutil.which("rsync"):
        return
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "rsync"], check=True)


def wait(cond, timeout, step=0.002):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise SystemExit("timed out")
        time.sleep(step)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/shipper")
    ap.add_argument("--files", type=int, default=11000)
    ap.add_argument("--changed", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    ensure_rsync()
    binary = os.path.abspath(args.binary)
    work = tempfile.mkdtemp(prefix="shipper-catchup-")
    src = os.path.join(work, "src")
    paths = []
    for i in range(args.files):
        d = os.path.join(src, str(2000 + i % 25), f"{i % 12 + 1:02d}", f"s{i % 7}")
        os.makedirs(d, exist_ok=True)
        p = os.path.join(d, f"page{i}.html")
        with open(p, "w") as f:
            f.write(f"<html><body><h1>page {i}</h1>" + "<p>lorem ipsum dolor sit amet</p>" * (20 + i % 200) + "</body></html>")
        paths.append(p)
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    cfg = os.path.join(work, "bench.toml")
    with open(cfg, "w") as f:
        f.write(f"""[sender]
source = "src"
receiver = "127.0.0.1:{port}"
state_dir = "state-s"
interval = "1s"
settle = "100ms"
[receiver]
listen = "127.0.0.1:{port}"
root = "www"
state_dir = "state-r"
archive_dir = "archive"
archive_keep = 2
""")
    log = os.path.join(work, "shipper.log")

    def start():
        t0 = time.monotonic()
        open(log, "w").close()
        p = subprocess.Popen([binary, "run", "--config", cfg], stderr=open(log, "a"),
                             env={**os.environ, "RUST_LOG": os.environ.get("SHIPPER_BENCH_LOG", "info"), "NO_COLOR": "1"})
        return p, t0

    def stop(p):
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)

    www = os.path.join(work, "www")
    # First ship of the whole tree.
    p, _ = start()
    wait(lambda: os.path.exists(os.path.join(www, os.path.relpath(paths[-1], src))), 300, 0.05)
    subprocess.run([binary, "flush", "--config", cfg], check=True, stdout=subprocess.DEVNULL)
    stop(p)

    # rsync baseline: a no-op run over the same tree.
    mirror = os.path.join(work, "mirror")
    subprocess.run(["rsync", "-a", "--delete", src + "/", mirror + "/"], check=True)
    rs = []
    for _ in range(5):
        t0 = time.monotonic()
        subprocess.run(["rsync", "-a", "--delete", src + "/", mirror + "/"], check=True)
        rs.append(time.monotonic() - t0)

    compares, catchups = [], []
    for run in range(args.runs):
        changed = paths[run * args.changed:(run + 1) * args.changed]
        for c in changed:
            with open(c, "a") as f:
                f.write(f"<!-- edited while down, run {run} -->")
        want = {os.path.join(www, os.path.relpath(c, src)): open(c, "rb").read() for c in changed}
        time.sleep(2)  # the changes happened while the sender was down
        p, t0 = start()

        def compared():
            with open(log) as f:
                return "source tree compared" in f.read()
        wait(compared, 120)
        compares.append(time.monotonic() - t0)

        def arrived():
            for q, data in want.items():
                try:
                    with open(q, "rb") as f:
                        if f.read() != data:
                            return False
                except FileNotFoundError:
                    return False
            return True
        wait(arrived, 120)
        catchups.append(time.monotonic() - t0)
        stop(p)
        if os.environ.get("SHIPPER_BENCH_LOG"):
            print(open(log).read())
    shutil.rmtree(work, ignore_errors=True)
    r = statistics.median(rs)
    c = statistics.median(compares)
    u = statistics.median(catchups)
    print(f"| measure ({args.files} files, {args.changed} changed) | median | ratio to rsync no-op |")
    print("|---|---|---|")
    print(f"| rsync -a --delete no-op run | {r*1000:.0f} ms | 1.00 |")
    print(f"| shipper restart to tree compared | {c*1000:.0f} ms | {c/r:.2f} |")
    print(f"| shipper restart to all {args.changed} changes visible on the receiver | {u*1000:.0f} ms | {u/r:.2f} |")


if __name__ == "__main__":
    main()
