#!/usr/bin/env python3
"""One sender, many receivers: through a bucket against direct fan-out.

  python3 bench/relay.py [--receivers 20] [--changes 10] [--out bench/RELAY.md]

After `cargo build --release`. Starts an s3s-fs server (installed with
cargo if missing) on loopback, one sender and N receiver processes, each
receiver with its own root, all on bench.py's journaled loop filesystem.
Two runs: the sender shipping to the N receivers directly
(`receiver = [...]`), then to a bucket only, the receivers polling it
(`bucket_poll = "1s"`). Each run ships a site of 200 pages, then
--changes single-page changes one after the other; for each change, the
time from the write until each receiver's root has it. Reports the bytes
the sender put on the wire per bundle (its `bytes_shipped`, summed over
its destinations) and, per receiver, the median and worst write-to-visible
latency, against the goal of interval + bucket_poll + 1 s. About 2
minutes at 20 receivers. Standard library only.
"""
import argparse, os, shutil, statistics, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

ACCESS, SECRET = "relay-bench", "relay-bench-secret"
INTERVAL, POLL = 1.0, 1.0


def s3s_fs():
    home = os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))
    path = shutil.which("s3s-fs") or os.path.join(home, "bin", "s3s-fs")
    if not os.path.exists(path):
        bench.sh("cargo", "install", "s3s-fs@0.14.1", "--features", "binary", "--locked")
    return path


def creds(path):
    with open(path, "w") as f:
        f.write(f'access_key_id = "{ACCESS}"\nsecret_access_key = "{SECRET}"\n')
    os.chmod(path, 0o600)


def keygen(work, name):
    out = subprocess.run([bench.BIN, "keygen", "--out", os.path.join(work, name)], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def still_status(cfg):
    """The sender's status once its figures stand still for half a second:
    nothing in flight, every acknowledgement counted."""
    last = bench.status(cfg)
    while True:
        time.sleep(0.5)
        now = bench.status(cfg)
        if [r["bytes_shipped"] for r in now["receivers"]] == [r["bytes_shipped"] for r in last["receivers"]]:
            return now
        last = now


def run(work, mode, n, changes, endpoint):
    os.makedirs(work)
    src = os.path.join(work, "src")
    bench.make_site(src, 200)
    s_fp, r_fp = keygen(work, "keys-s"), keygen(work, "keys-r")
    creds(os.path.join(work, "s3.creds"))
    bucket = (f'bucket = "s3://site/{mode}"\nbucket_endpoint = "{endpoint}"\n'
              f'bucket_credentials = "{work}/s3.creds"\n')
    env = {**os.environ, "RUST_LOG": "warn"}
    receivers, addrs, roots = [], [], []
    for i in range(n):
        cfg = os.path.join(work, f"r{i}.toml")
        root = os.path.join(work, f"www{i}")
        with open(cfg, "w") as f:
            f.write(f'[receiver]\nlisten = "127.0.0.1:0"\nroot = "{root}"\nstate_dir = "{work}/state-r{i}"\n'
                    f'archive_dir = "{work}/archive-r{i}"\narchive_keep = 2\nkey_dir = "{work}/keys-r"\n'
                    f'allowed_senders = ["{s_fp}"]\n' + (f'bucket_poll = "{POLL:g}s"\n' + bucket if mode == "bucket" else ""))
        receivers.append(subprocess.Popen([bench.BIN, "run", "--config", cfg], env=env,
                                          stderr=open(os.path.join(work, f"r{i}.log"), "w")))
        roots.append(root)
    for i in range(n):
        at = os.path.join(work, f"state-r{i}", "listen.addr")
        bench.wait(lambda: os.path.exists(at), 30)
        addrs.append(open(at).read().strip())
    scfg = os.path.join(work, "sender.toml")
    with open(scfg, "w") as f:
        f.write(f'[sender]\nsource = "{src}"\nstate_dir = "{work}/state-s"\nkey_dir = "{work}/keys-s"\n'
                f'interval = "{INTERVAL:g}s"\nsettle = "250ms"\n')
        if mode == "bucket":
            f.write(bucket)
        else:
            f.write("receiver = [%s]\nreceiver_fingerprint = \"%s\"\n" % (", ".join(f'"{a}"' for a in addrs), r_fp))
    sender = subprocess.Popen([bench.BIN, "run", "--config", scfg], env=env, stderr=open(os.path.join(work, "sender.log"), "w"))
    try:
        want = bench.tree_sizes(src)
        bench.wait(lambda: all(bench.tree_sizes(r) == want for r in roots), 300, 0.1)
        before = still_status(scfg)
        bytes0 = sum(r["bytes_shipped"] for r in before["receivers"])
        bundles0 = max(r["bundles_shipped"] for r in before["receivers"])
        lat = [[] for _ in range(n)]
        for c in range(changes):
            name = f"change-{c}.html"
            body = f"<p>change {c}</p>" * 200
            t0 = time.monotonic()
            with open(os.path.join(src, name), "w") as f:
                f.write(body)
            seen = [None] * n
            while any(s is None for s in seen):
                for i, r in enumerate(roots):
                    if seen[i] is None and os.path.exists(os.path.join(r, name)):
                        seen[i] = time.monotonic() - t0
                if time.monotonic() - t0 > 60:
                    raise RuntimeError(f"{mode}: change {c} not everywhere after 60 s")
                time.sleep(0.01)
            for i, s in enumerate(seen):
                lat[i].append(s)
        after = still_status(scfg)
        bundles = max(r["bundles_shipped"] for r in after["receivers"]) - bundles0
        sent = sum(r["bytes_shipped"] for r in after["receivers"]) - bytes0
        return lat, sent, bundles
    finally:
        for p in [sender, *receivers]:
            p.terminate()
        for p in [sender, *receivers]:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--receivers", type=int, default=20)
    ap.add_argument("--changes", type=int, default=10)
    ap.add_argument("--out", default=os.path.join(bench.ROOT, "bench", "RELAY.md"))
    args = ap.parse_args()
    fs = bench.LoopFs(8)
    server = None
    try:
        data = os.path.join(fs.mnt, "s3")
        os.makedirs(os.path.join(data, "site"))
        port = bench.free_port()
        server = subprocess.Popen([s3s_fs(), "--host", "127.0.0.1", "--port", str(port), "--access-key", ACCESS,
                                   "--secret-key", SECRET, data], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        bench.wait(lambda: subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"], capture_output=True).returncode == 0, 30, 0.05)
        endpoint = f"http://127.0.0.1:{port}"
        rows = []
        for mode in ("direct", "bucket"):
            lat, sent, bundles = run(os.path.join(fs.mnt, mode), mode, args.receivers, args.changes, endpoint)
            per = [statistics.median(l) for l in lat]
            worst = max(max(l) for l in lat)
            rows.append((mode, sent / max(bundles, 1), bundles, statistics.median(per), max(per), worst))
            print(f"{mode}: {sent} bytes for {bundles} bundles; latency median {statistics.median(per):.2f}s worst {worst:.2f}s", flush=True)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=bench.ROOT).stdout.strip()
        goal = INTERVAL + POLL + 1
        out = ["# One sender, many receivers", "",
               f"Written by `python3 bench/relay.py` at commit {commit}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
               f"one sender, {args.receivers} receivers (each its own process and root) on this machine's {os.cpu_count()} cores, "
               f"a bucket on s3s-fs 0.14.1 over loopback; a site of 200 pages, then {args.changes} single-page changes, "
               f"interval {INTERVAL:g} s, settle 250 ms, bucket_poll {POLL:g} s.", "",
               "| how | bytes the sender sent per bundle | bundles | write-to-visible, median over receivers of each one's median | worst receiver's median | worst single change | goal |",
               "|---|---|---|---|---|---|---|"]
        size = rows[1][1]
        for mode, per_bundle, bundles, med, worst_med, worst in rows:
            label = "direct fan-out (`receiver = [...]`)" if mode == "direct" else "via the bucket"
            times = f"{per_bundle / size:.1f}x the bundle" if size else "—"
            out.append(f"| {label} | {per_bundle / 1024:.1f} KiB ({times}) | {bundles} | {med:.2f} s | {worst_med:.2f} s | {worst:.2f} s | "
                       + ("1x the bundle, whatever the receivers" if mode == "bucket" else "—")
                       + (f"; within interval + bucket_poll + 1 s = {goal:g} s: {'met' if worst <= goal else 'not met'}" if mode == "bucket" else "") + " |")
        text = "\n".join(out) + "\n"
        with open(args.out, "w") as f:
            f.write(text)
        print(text)
    finally:
        if server:
            server.terminate()
            server.wait()
        fs.close()


if __name__ == "__main__":
    main()
