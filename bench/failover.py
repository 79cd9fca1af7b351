#!/usr/bin/env python3
"""Failover drill on the Docker runtime, through the edge, as a client sees it.

Brings up the dev layout under its own name, subnet and host ports (devctl up), then polls
`GET /api/v1/consultations` through the edge (a new TLS connection per request, POLLERS
clients each every INTERVAL_MS, staggered) while it:

  1. kills the VIP holder with SIGKILL, RUNS times (devctl kill gateway-N), and starts it
     again (devctl start), which makes gateway-1 preempt back: the gap is the longest time
     without a successful response around the kill (what a client sees); the preemption
     counts failed requests;
  2. stops the VIP holder cleanly (devctl kill --signal SIGTERM) and starts it again;
  3. replaces both gateways one after the other (devctl restart gateway-1, then gateway-2);
  4. saturates the machine (h2load through the edge) and checks that nobody fails over.

Prints each run, then median and max gap and the failed requests per planned handover.

    python3 bench/failover.py                 # RUNS=10; needs Docker and the release build
    RUNS=3 KEEP=1 python3 bench/failover.py   # KEEP=1 leaves the stack up
"""
import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import http.client

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = int(os.environ.get("RUNS", "10"))
POLLERS = int(os.environ.get("POLLERS", "4"))
INTERVAL = int(os.environ.get("INTERVAL_MS", "10")) / 1000
TIMEOUT = float(os.environ.get("REQUEST_TIMEOUT", "2"))
NAME = "failover"
PORT_BASE = 27000
HTTPS = PORT_BASE + 443


def devctl(topology, state, *args, check=True):
    cmd = [os.path.join(REPO, "target/release/devctl"), "--topology", topology,
           "--state-dir", state, "--runtime", "docker", *args]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if check and out.returncode != 0:
        sys.exit(f"devctl {' '.join(args)} failed:\n{out.stderr}")
    return out.stdout


class Poller:
    """POLLERS clients, each a new TLS connection per request; results as (start, end, ok)."""

    def __init__(self, token):
        self.token = token
        self.results = []
        self.errors = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.ctx = ssl.create_default_context()
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True)
                        for i in range(POLLERS)]

    def start(self):
        for t in self.threads:
            t.start()

    def one(self):
        conn = http.client.HTTPSConnection("127.0.0.1", HTTPS, timeout=TIMEOUT, context=self.ctx)
        try:
            conn.request("GET", "/api/v1/consultations",
                         headers={"Authorization": f"Bearer {self.token}", "Connection": "close"})
            r = conn.getresponse()
            r.read()
            return True if r.status == 200 else f"HTTP {r.status}"
        except Exception as e:  # what failed, for the summary
            return type(e).__name__
        finally:
            conn.close()

    def run(self, i):
        time.sleep(INTERVAL * i / POLLERS)
        while not self.stop.is_set():
            start = time.monotonic()
            ok = self.one()
            end = time.monotonic()
            with self.lock:
                self.results.append((start, end, ok is True))
                if ok is not True:
                    self.errors.append((start, end, ok))
            time.sleep(max(0.0, INTERVAL - (end - start)))

    def since(self, t):
        with self.lock:
            return [r for r in self.results if r[0] >= t or r[1] >= t]

    def gap_after(self, t, limit=10.0):
        """Time from t to the first successful response to a request sent after t."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            done = [r for r in self.since(t) if r[0] >= t and r[2]]
            if done:
                return min(r[1] for r in done) - t
            time.sleep(0.01)
        return None

    def outage_around(self, t, after=10.0):
        """The client-visible gap: the longest time without a successful response among
        those completed from 0.2 s before `t` (the kill was asked for; devctl takes a moment
        to deliver it) until the first success of a request sent after the outage."""
        deadline = time.monotonic() + after
        while time.monotonic() < deadline:
            with self.lock:
                ends = sorted(e for s, e, ok in self.results if ok and e >= t - 0.2)
            if len(ends) > 1:
                gaps = [b - a for a, b in zip(ends, ends[1:])]
                worst = max(gaps)
                # Settled: successes keep coming for a while after the worst gap.
                if ends[-1] - ends[gaps.index(worst) + 1] > 0.5:
                    return worst
            time.sleep(0.05)
        return None

    def failures_between(self, a, b):
        with self.lock:
            return sum(1 for s, e, ok in self.results if not ok and e >= a and s <= b)

    def errors_between(self, a, b):
        """Failure kinds (exception or status) in [a, b], with counts."""
        kinds = {}
        with self.lock:
            for s, e, why in self.errors:
                if e >= a and s <= b:
                    kinds[why] = kinds.get(why, 0) + 1
        return ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())) or "none"

    def count_between(self, a, b):
        with self.lock:
            return sum(1 for s, e, ok in self.results if e >= a and s <= b)


def status(topology, state):
    return json.loads(devctl(topology, state, "status", "--json"))


def holder(topology, state):
    return status(topology, state).get("vip", {}).get("holder")


def wait_for(what, cond, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.1)
    sys.exit(f"{what}: not within {timeout} s")


def healthy(topology, state, name):
    for s in status(topology, state)["services"]:
        if s["name"] == name:
            return s["state"] == "running" and s.get("health") in ("healthy", None)
    return False


def transitions(topology, state):
    """HA transitions each gateway reports on its /-/ha (through devctl status)."""
    return status(topology, state).get("vip", {})


def main():
    if not shutil.which("docker"):
        sys.exit("failover.py: needs Docker (docker CLI and a running engine)")
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "devctl"], cwd=REPO, check=True)
    work = tempfile.mkdtemp(prefix="failover-")
    os.chmod(work, 0o755)
    text = open(os.path.join(REPO, "topology/dev.toml")).read()
    p = lambda n: str(PORT_BASE + n)
    for old, new in [
        ('name = "dev"', f'name = "{NAME}"\nloopback = "127.78.0.0/16"'),
        ("172.28.", "172.30."),
        ("https_port = 8443", f"https_port = {p(443)}"),
        ("http_port = 8080", f"http_port = {p(80)}"),
        ("admin_publish_port = 9901", f"admin_publish_port = {p(901)}"),
        ("publish_port = 9090", f"publish_port = {p(90)}"),
        ("publish_port = 3000", f"publish_port = {p(30)}"),
        ("publish_port = 9093", f"publish_port = {p(93)}"),
        ("publish_port = 5432", f"publish_port = {p(54)}"),
        # The drill polls 400 times a second from one address: the default limits would
        # answer 429 long before any failover.
        ('rate_limit = { rate = 600, per = "1m", burst = 100 }',
         'rate_limit = { rate = 100000, per = "1s", burst = 100000 }'),
    ]:
        text = text.replace(old, new)
    topology = os.path.join(work, "topology.toml")
    state = os.path.join(work, "state")
    open(topology, "w").write(text)
    interval = [l for l in text.splitlines() if l.startswith("advert_interval")][0]
    try:
        devctl(topology, state, "up", "--timeout", "300s")
        token = devctl(topology, state, "token", "--role", "admin").strip()
        poller = Poller(token)
        poller.start()
        wait_for("first response", lambda: poller.gap_after(time.monotonic(), 5) is not None)
        gaps, preempt_fail, report = [], [], []
        for run in range(1, RUNS + 1):
            master = wait_for("a VIP holder", lambda: holder(topology, state))
            t = time.monotonic()
            devctl(topology, state, "kill", master)
            gap = poller.outage_around(t)
            failed = poller.failures_between(t, t + (gap or 10))
            gaps.append(gap)
            time.sleep(1)
            t2 = time.monotonic()
            devctl(topology, state, "start", master)
            wait_for(f"{master} back", lambda: healthy(topology, state, master))
            wait_for("gateway-1 holds the VIP", lambda: holder(topology, state) == "gateway-1")
            time.sleep(1)
            pf = poller.failures_between(t2, time.monotonic())
            preempt_fail.append(pf)
            print(f"run {run:2}: kill -9 {master}: gap {gap * 1000 if gap else float('nan'):7.1f} ms"
                  f" ({failed} failed: {poller.errors_between(t, t + (gap or 10))}); "
                  f"start + preemption back: {pf} failed ({poller.errors_between(t2, time.monotonic())})",
                  flush=True)

        # Clean stop of the master, then start (preemption back).
        t = time.monotonic()
        devctl(topology, state, "kill", "gateway-1", "--signal", "SIGTERM")
        wait_for("gateway-2 holds the VIP", lambda: holder(topology, state) == "gateway-2")
        time.sleep(2)
        stop_fail = poller.failures_between(t, time.monotonic())
        stop_why = poller.errors_between(t, time.monotonic())
        stop_total = poller.count_between(t, time.monotonic())
        t = time.monotonic()
        devctl(topology, state, "start", "gateway-1")
        wait_for("gateway-1 healthy", lambda: healthy(topology, state, "gateway-1"))
        wait_for("gateway-1 holds the VIP", lambda: holder(topology, state) == "gateway-1")
        time.sleep(2)
        back_fail = poller.failures_between(t, time.monotonic())
        back_why = poller.errors_between(t, time.monotonic())
        back_total = poller.count_between(t, time.monotonic())

        # Rolling restart of both gateways, one after the other.
        t = time.monotonic()
        roll_each = []
        for g in ("gateway-1", "gateway-2"):
            tg = time.monotonic()
            devctl(topology, state, "restart", g)
            wait_for(f"{g} healthy", lambda: healthy(topology, state, g))
            wait_for("gateway-1 holds the VIP", lambda: holder(topology, state) == "gateway-1")
            time.sleep(2)
            roll_each.append(f"{g}: {poller.failures_between(tg, time.monotonic())} failed "
                             f"({poller.errors_between(tg, time.monotonic())})")
        roll_fail = poller.failures_between(t, time.monotonic())
        roll_why = "; ".join(roll_each)
        roll_total = poller.count_between(t, time.monotonic())
        poller.stop.set()

        # Saturation: does the backup stay backup?
        before = holder(topology, state)
        sat = "h2load not installed"
        if shutil.which("h2load"):
            out = subprocess.run(["h2load", "-t1", "-c64", "-m10", "-D", "20",
                                  "-H", f"authorization: Bearer {token}",
                                  f"https://127.0.0.1:{HTTPS}/api/v1/consultations"],
                                 capture_output=True, text=True).stdout
            done = [l for l in out.splitlines() if l.startswith("requests:")]
            after = holder(topology, state)
            sat = (f"20 s of h2load -c64 -m10 through the edge ({done[0] if done else '?'}): "
                   f"VIP holder {before} -> {after}")

        ok = [g for g in gaps if g is not None]
        print()
        print(f"Failover drill, Docker runtime, {interval}, {POLLERS} pollers every "
              f"{INTERVAL * 1000:.0f} ms (a new TLS connection per request, through the edge)")
        if ok:
            print(f"kill -9 of the master: runs {len(gaps)}, median gap "
                  f"{statistics.median(ok) * 1000:.1f} ms, min {min(ok) * 1000:.1f} ms, "
                  f"max {max(ok) * 1000:.1f} ms, no recovery in {len(gaps) - len(ok)}")
        print(f"preemption back after each kill: {sum(preempt_fail)} failed requests in {RUNS} handovers")
        print(f"clean stop of the master (SIGTERM): {stop_fail} failed of {stop_total} ({stop_why})")
        print(f"start and preemption back: {back_fail} failed of {back_total} ({back_why})")
        print(f"rolling restart of both gateways: {roll_fail} failed of {roll_total} ({roll_why})")
        print(sat)
    finally:
        if os.environ.get("KEEP") != "1":
            devctl(topology, state, "down", "--volumes", check=False)
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept: devctl --topology {topology} --state-dir {state} --runtime docker ...")


if __name__ == "__main__":
    main()
