#!/usr/bin/env python3
"""A tree of many small files: shipper against `rsync -a`, one machine.

  python3 bench/tree.py [--files 1000000] [--runs 1] [--out bench/TREE.md]

As root (it makes and mounts a file system). Builds shipper (release) if
needed. Every tree lives on a journaled ext4 made on a loop device for the
run (this machine's root file system has no journal, which makes
file-heavy timings vary 2-4x), unmounted and deleted at the end, also on
failure.

A seeded CMS-like tree of --files files (nested directories of 100 files,
1-8 KiB of HTML each) is generated once. Then, tools alternating within
each run (median of --runs runs; ratio = shipper / rsync, lower is better):
  1. first ship: shipper (a sender and a receiver process, mutual TLS,
     interval 1s, settle 250ms) from the sender's start until the whole
     tree is at the receiver, against `rsync -a SRC/ DEST/` (local, no
     daemon); peak RSS (VmHWM) of the sender and of the receiver. Also
     against `rsync -a` followed by `sync -f` of the destination's file
     system, timed to the sync's end: shipper makes each bundle durable
     before it publishes and acknowledges it, rsync makes nothing durable
     (its writes are left to the kernel's writeback, after its timing).
     Each tool starts after an untimed `sync` (bench.at_rest), so no sync
     writes what the tool before it left dirty.
     The sender's state_dir (its outbox) lives on a loop file system of
     its own, the sender's disk as on two servers: the receiver's syncs
     never write it (as in bench.py).
  2. restart catch-up: both stopped (every bundle acknowledged), both
     started again with nothing changed; shipper from the start of both
     until the sender logs "source tree compared" (the catch-up's walk and
     comparison with what the receiver acknowledged: after it the sender is
     in step), against an `rsync -a` no-op run over the same trees; peak
     RSS of the restarted sender and receiver.
The end of a first ship is read from `shipper status --json` (nothing
pending, the outbox empty) and confirmed by counting the files at the
receiver; sizes of every file and the content of a seeded sample of 2,000
are checked afterwards, untimed. Writes --out with the figures, the commit
measured and how long the script ran, and prints it. Standard library only.
"""
import argparse, hashlib, json, os, random, re, shutil, signal, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (its Shipper, rsync_client, wait, vm_hwm_mib, WORDS)

SETTINGS = 'interval = "1s"\nsettle = "250ms"\n'
# A file is "racy" if packed within 2 s of its last write (shipper's
# RACY_WINDOW), and a racy file is compared again after a restart: the tree
# must be older than that when the first ship begins.
AT_REST_SECS = 3.0
COMPARED = "source tree compared"


# ---------------------------------------------------------------- loop fs

class LoopFs:
    """A journaled ext4 on a loop device, mounted at `self.mnt`."""

    def __init__(self, base, files):
        self.img = os.path.join(base, "tree.img")
        self.mnt = os.path.join(base, "mnt")
        os.makedirs(self.mnt)
        # Four trees of `files` files (about 6.3 KiB allocated each) plus
        # the receiver's state and archive; inodes for four trees.
        size = files * 32 * 1024 + (4 << 30)
        inodes = files * 9 // 2 + 200_000
        with open(self.img, "wb") as f:
            f.truncate(size)
        # Inode tables zeroed now, not by ext4lazyinit during the run.
        bench.sh("mkfs.ext4", "-q", "-F", "-N", str(inodes), "-E", "lazy_itable_init=0,lazy_journal_init=0", self.img)
        bench.sh("mount", "-o", "loop", self.img, self.mnt)
        self.mounted = True

    def close(self):
        if self.mounted:
            for _ in range(20):
                if subprocess.run(["umount", self.mnt]).returncode == 0:
                    self.mounted = False
                    break
                time.sleep(1)
            else:
                # Still busy: detach it lazily; the image's blocks are freed
                # when the last user goes.
                subprocess.run(["umount", "-l", self.mnt])
                self.mounted = False
        if os.path.exists(self.img):
            os.unlink(self.img)


# ---------------------------------------------------------------- the tree

def leaf_dir(i):
    """Nested directories, 100 files in each leaf: section/sub/leaf."""
    d = i // 100
    return os.path.join(f"section{d % 20:02d}", f"sub{d // 20 % 25:02d}", f"leaf{d // 500:03d}")


def make_tree(dest, files, seed):
    rng = random.Random(seed)
    # One block of seeded text; each page is a slice of it at a seeded
    # offset behind its own header, so pages differ and compress like HTML.
    text = " ".join(rng.choice(bench.WORDS) for _ in range(400_000))
    made = set()
    for i in range(files):
        d = os.path.join(dest, leaf_dir(i))
        if d not in made:
            os.makedirs(d, exist_ok=True)
            made.add(d)
        size = rng.randint(1024, 8192)
        head = f"<html><head><title>page {i}</title></head><body><p>"
        at = rng.randrange(len(text) - 9000)
        with open(os.path.join(d, f"page-{i}.html"), "w") as f:
            f.write((head + text[at:at + size])[:size])
    time.sleep(AT_REST_SECS)


def count_files(d):
    n = 0
    todo = [d]
    while todo:
        with os.scandir(todo.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    todo.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    n += 1
    return n


def rsync_synced(src, dest):
    """`rsync -a`, then one `sync -f` of the destination's file system;
    seconds to the sync's end."""
    t0 = time.monotonic()
    bench.rsync_client(src, dest)
    bench.sh("sync", "-f", dest)
    return time.monotonic() - t0


def check_copy(src, dest, files, seed):
    """Every size equal, and the content of a seeded sample."""
    want, got = bench.tree_sizes(src), bench.tree_sizes(dest)
    if want != got:
        missing = len(set(want) - set(got))
        raise RuntimeError(f"{dest}: {missing} files missing, {len(got)} found of {len(want)}")
    rng = random.Random(seed)
    for i in rng.sample(range(files), min(files, 2000)):
        rel = os.path.join(leaf_dir(i), f"page-{i}.html")
        with open(os.path.join(src, rel), "rb") as a, open(os.path.join(dest, rel), "rb") as b:
            if hashlib.blake2b(a.read()).digest() != hashlib.blake2b(b.read()).digest():
                raise RuntimeError(f"{dest}: {rel} differs")


# ---------------------------------------------------------------- shipper

# Every TreeShipper started, so a failure or SIGTERM stops them before the
# file system they run on is unmounted.
LIVE = []


class TreeShipper(bench.Shipper):
    """bench.py's two processes; the sender logs at info, so the catch-up's
    "source tree compared" line can be read."""

    def __init__(self, *args, **kw):
        LIVE.append(self)
        super().__init__(*args, **kw)

    def start_sender(self):
        env = {**os.environ, "RUST_LOG": "info", "NO_COLOR": "1"}
        self.sender_log = os.path.join(self.work, "sender.log")
        self.sender = subprocess.Popen([bench.BIN, "run", "--config", self.scfg], env=env,
                                       stderr=open(self.sender_log, "w"))

    def status(self):
        out = subprocess.run([bench.BIN, "status", "--config", self.scfg, "--json"],
                             capture_output=True, text=True)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def log_line(self, needle):
        with open(self.sender_log) as f:
            return next((l for l in f if needle in l), None)


def cpu_secs(p):
    """User and system CPU seconds process `p` used so far."""
    with open(f"/proc/{p.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def shipped_all(s, files):
    """The sender compared the tree, nothing is pending and every bundle
    was acknowledged; then (rarely, so it costs nothing) count the files."""
    if s.log_line(COMPARED) is None:
        return False
    st = s.status()
    if not st or st["pending_paths"] or st["outbox_bytes"]:
        return False
    return count_files(s.root) == files


def first_ship_shipper(work, src, keys, files, port):
    os.makedirs(work)
    s = TreeShipper(work, src, keys, f"127.0.0.1:{port}", f"127.0.0.1:{port}", SETTINGS)
    t0 = time.monotonic()
    s.start_sender()
    end = t0 + 7200
    while True:
        at = time.monotonic()
        if shipped_all(s, files):
            dt = at - t0
            break
        if at > end or s.sender.poll() is not None or s.receiver.poll() is not None:
            s.stop()
            raise RuntimeError(f"shipper: first ship did not finish; see {work}/*.log")
        time.sleep(0.25)
    rss = s.rss()
    cpu = (cpu_secs(s.sender), cpu_secs(s.receiver))
    s.flush()  # every acknowledgement recorded before the restart
    s.stop()
    return dt, rss, cpu


def catch_up_shipper(work, src, keys, port):
    """Both processes started again over the shipped trees, nothing changed."""
    os.unlink(os.path.join(work, "state-r", "listen.addr"))
    t0 = time.monotonic()
    s = TreeShipper(work, src, keys, f"127.0.0.1:{port}", f"127.0.0.1:{port}", SETTINGS)
    s.start_sender()
    try:
        bench.wait(lambda: s.log_line(COMPARED) is not None, 3600, 0.02)
        dt = time.monotonic() - t0
        line = s.log_line(COMPARED)
        changed = int(re.search(r"changed=(\d+)", line).group(1))
        deleted = int(re.search(r"deleted=(\d+)", line).group(1))
        # Where the time went, as the sender logs it.
        parts = {"walk": int(re.search(r"walk_ms=(\d+)", line).group(1)) / 1000}
        loaded = s.log_line("acknowledged state loaded")
        if loaded:
            parts["load"] = int(re.search(r" ms=(\d+)", loaded).group(1)) / 1000
        bench.wait(lambda: (s.status() or {}).get("pending_paths") == 0, 600, 0.25)
        rss = s.rss()
    finally:
        s.stop()
    return dt, rss, changed + deleted, parts


# ---------------------------------------------------------------- report

def fmt_cpu(c):
    """CPU seconds (user + system) of the sender and the receiver."""
    (su, ss), (ru, rs) = c
    return f"CPU: sender {su:.0f} s user + {ss:.0f} s system, receiver {ru:.0f} s + {rs:.0f} s"


def fmt_split(parts):
    """The catch-up's parts the sender logs: loading its state, the walk.
    A source that is there is walked while the state loads: they overlap."""
    return "overlapping: " + ", ".join(f"{k} {v:.1f} s" for k, v in parts.items())


def fmt_took(secs):
    return f"{secs:.0f} s" if secs < 120 else f"{secs / 60:.0f} min"


def write_report(path, args, rows, took):
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
    mem = bench.meminfo("MemTotal") / 2**30
    rsync_v = subprocess.run(["rsync", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    ship_v = subprocess.run([bench.BIN, "--version"], capture_output=True, text=True).stdout.strip()
    git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True, cwd=bench.ROOT).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") + (" (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else "")
    out = [
        "# A tree of many small files", "",
        f"Written by `python3 bench/tree.py --files {args.files} --runs {args.runs}` "
        f"in {fmt_took(took)} (median of {args.runs} run(s), tools alternating; ratio = shipper / rsync, lower is better).", "",
        f"- Machine: {os.cpu_count()} cores ({cpu}), {mem:.0f} GiB memory, Linux {os.uname().release}",
        f"- Versions: {ship_v} (commit {commit}), {rsync_v}",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "- All trees on a journaled ext4 on a loop device. shipper: sender and receiver processes, mutual TLS, "
        "interval 1s, settle 250ms, the sender's state_dir on a second loop file system (its own disk); "
        "rsync: `rsync -a SRC/ DEST/`, local.",
        "",
        "| measure | workload | shipper | rsync | ratio | target | met | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, wl, s, r, ratio, limit, met, notes in rows:
        rtxt = "—" if ratio is None else f"{ratio:.2f}"
        met_txt = "n/a" if met is None else ("yes" if met else "no")
        out.append(f"| {name} | {wl} | {s} | {r} | {rtxt} | {limit} | {met_txt} | {notes} |")
    text = "\n".join(out) + "\n"
    with open(path, "w") as f:
        f.write(text)
    print(text)


def measure(args, mnt):
    """Both measures, tools alternating, on the file system mounted at
    `mnt`; the report's rows."""
    keys = bench.make_keys(mnt)
    src = os.path.join(mnt, "src")
    t = time.monotonic()
    make_tree(src, args.files, 42)
    print(f"tree of {args.files} files made in {time.monotonic() - t:.0f} s", flush=True)
    ship, rs, rs_s, rss, cpu, ship_c, rs_c, rss_c, redone, split = [], [], [], [], [], [], [], [], [], []
    for run in range(args.runs):
        work, dest = os.path.join(mnt, f"shipper{run}"), os.path.join(mnt, f"rsync{run}")
        dest_s = os.path.join(mnt, f"rsync-synced{run}")
        port = bench.free_port()
        order = ["shipper", "rsync", "rsync, sync"]
        for who in (order if run % 2 == 0 else order[::-1]):
            # Each starts with nothing dirty: a sync (of the tool's
            # own syncfs, or of `sync -f`) would write the tree the tool
            # before left to writeback too.
            bench.at_rest()
            if who == "shipper":
                dt, r, c = first_ship_shipper(work, src, keys, args.files, port)
                ship.append(dt); rss.append(r); cpu.append(c)
            elif who == "rsync":
                rs.append(bench.rsync_client(src, dest)[0])
            else:
                rs_s.append(rsync_synced(src, dest_s))
        print(f"first ship run {run}: shipper {ship[-1]:.1f} s (sender {rss[-1][0]:.0f} MiB, receiver {rss[-1][1]:.0f} MiB; "
              f"{fmt_cpu(cpu[-1])}), rsync -a {rs[-1]:.1f} s, rsync -a then sync -f {rs_s[-1]:.1f} s", flush=True)
        check_copy(src, os.path.join(work, "www"), args.files, run)
        check_copy(src, dest, args.files, run)
        check_copy(src, dest_s, args.files, run)
        for who in (["rsync", "shipper"] if run % 2 == 0 else ["shipper", "rsync"]):
            if who == "shipper":
                dt, r, n, parts = catch_up_shipper(work, src, keys, port)
                ship_c.append(dt); rss_c.append(r); redone.append(n); split.append(parts)
            else:
                rs_c.append(bench.rsync_client(src, dest)[0])
        print(f"catch-up run {run}: shipper {ship_c[-1]:.1f} s (sender {rss_c[-1][0]:.0f} MiB, receiver {rss_c[-1][1]:.0f} MiB, "
              f"{redone[-1]} paths queued, {fmt_split(split[-1])}), rsync no-op {rs_c[-1]:.1f} s", flush=True)
        if run + 1 < args.runs:
            shutil.rmtree(work)
            shutil.rmtree(dest)
            shutil.rmtree(dest_s)
    wl = f"{args.files:,} files, 1-8 KiB, 100 per directory (seed 42)"
    m_s, m_r, m_rs, m_sc, m_rc = (statistics.median(v) for v in (ship, rs, rs_s, ship_c, rs_c))
    snd, rcv = max(r[0] for r in rss), max(r[1] for r in rss)
    snd_c, rcv_c = max(r[0] for r in rss_c), max(r[1] for r in rss_c)
    rows = [
        ("first ship", wl, f"{m_s:.1f} s", f"rsync -a {m_r:.1f} s", m_s / m_r, "≤ 1.0", m_s / m_r <= 1.0,
         f"start to the whole tree at the receiver; {fmt_cpu(cpu[-1])}"),
        ("first ship, vs rsync then one sync", wl, f"{m_s:.1f} s", f"rsync -a, then sync -f {m_rs:.1f} s", m_s / m_rs,
         "none set", None, "rsync's writes made durable by one sync of the file system once all is written, "
         "the cheapest way to the durability shipper keeps before it publishes"),
        ("peak RSS", wl, f"first ship: sender {snd:.0f} MiB, receiver {rcv:.0f} MiB; restart: sender {snd_c:.0f} MiB, "
         f"receiver {rcv_c:.0f} MiB", "—", None, "sender ≤ 512 MiB, receiver ≤ 256 MiB",
         max(snd, snd_c) <= 512 and max(rcv, rcv_c) <= 256, "VmHWM of each process"),
        ("restart catch-up, nothing changed", wl, f"{m_sc:.1f} s", f"rsync -a no-op {m_rc:.1f} s", m_sc / m_rc, "≤ 1.5",
         m_sc / m_rc <= 1.5, f"start of both to \"{COMPARED}\" ({fmt_split(split[-1])}); paths queued again: {max(redone)}"),
    ]
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(bench.ROOT, "bench", "TREE.md"))
    args = ap.parse_args()
    started = time.monotonic()
    # Killed (SIGTERM), still clean up: processes stopped, file system gone.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("tree.py: terminated"))
    if not os.path.exists(bench.BIN):
        bench.sh("cargo", "build", "--release", cwd=bench.ROOT)
    if not shutil.which("rsync"):
        bench.sh("apt-get", "update", "-qq")
        bench.sh("apt-get", "install", "-y", "-qq", "rsync")
    base = tempfile.mkdtemp(prefix="shipper-tree-")
    try:
        with bench.disks(lambda: LoopFs(base, args.files)) as mnt:
            try:
                rows = measure(args, mnt)
            finally:
                for s in LIVE:
                    for p in (getattr(s, "sender", None), getattr(s, "receiver", None)):
                        if p is not None and p.poll() is None:
                            p.kill()
                            p.wait()
        write_report(args.out, args, rows, time.monotonic() - started)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
