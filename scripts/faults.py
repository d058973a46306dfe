#!/usr/bin/env python3
"""Fault drill (issue #20, goal 4), driven by scripts/faults.sh: a steady create-plant + read load
with Idempotency-Keys against two `arosaje serve` instances, while, in turn, one instance is
killed (-9), PostgreSQL restarts (`pg_ctl restart -m fast`) and Redis restarts. Then it checks the
event log: every acknowledged (2xx) create exists exactly once, no key made two plants, no 500;
and prints the fault table. Standard library only.

Each client (a thread, a user of its own) sends either `POST /api/plants` (its name is the key) or
`GET /api/plants`. A create is retried with the same key on 503, 409 `request_in_progress`,
401 (after logging in again) and connection errors, moving to the other instance when its own
does not answer. Settings (environment): FAULTS_CLIENTS (8), FAULTS_PHASE_SECS (20),
FAULTS_ROUNDS (1: how many times the three faults run), FAULTS_SOAK_SECS (0: no soak; else a
steady phase this long, RSS sampled every 10 s). Recovery: from a fault to the end of the last
attempt sent in its phase that failed (connection error, 5xx, 409 `request_in_progress`), the
worst of its rounds.
"""

import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict

BIN = os.environ["FAULTS_BIN"]
PG_DATA = os.environ["FAULTS_PGDATA"]
PG_BIN = os.environ["FAULTS_PGBIN"]
PG_URL = os.environ["DATABASE_URL"]
PG_PORT = os.environ["FAULTS_PGPORT"]
REDIS_PORT = os.environ["FAULTS_REDIS_PORT"]
REDIS_DIR = os.environ["FAULTS_REDIS_DIR"]
LOG_DIR = os.environ["FAULTS_LOG_DIR"]
PORTS = [int(p) for p in os.environ.get("FAULTS_PORTS", "58001 58002").split()]
CLIENTS = int(os.environ.get("FAULTS_CLIENTS", "8"))
PHASE_SECS = float(os.environ.get("FAULTS_PHASE_SECS", "20"))
SOAK_SECS = float(os.environ.get("FAULTS_SOAK_SECS", "0"))
ROUNDS = int(os.environ.get("FAULTS_ROUNDS", "1"))
PASSWORD = "correct horse battery staple"
RUN = uuid.uuid4().hex[:8]
GIVE_UP_SECS = 120

lock = threading.Lock()
phase = "warm-up"
phase_index = 0
stopping = threading.Event()
# (phase, op, status or "conn", error code)
answers = []
# key -> (phase it was first sent in, acknowledged plant id or None, final state)
creates = {}
procs = {}


def log(message):
    print(f"[faults {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------- processes

def start_instance(port):
    env = dict(os.environ)
    env["BIND_ADDR"] = f"127.0.0.1:{port}"
    out = open(os.path.join(LOG_DIR, f"serve-{port}.log"), "ab")
    procs[port] = subprocess.Popen([BIN, "serve"], env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/ready")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        if procs[port].poll() is not None:
            sys.exit(f"instance on {port} exited; see {LOG_DIR}/serve-{port}.log")
        time.sleep(0.2)
    sys.exit(f"instance on {port} not ready in 120 s")


def stop_instances():
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs.values():
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def rss_kib(port):
    try:
        with open(f"/proc/{procs[port].pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def psql(sql):
    out = subprocess.run(["psql", PG_URL, "-tAF", "\t", "-c", sql], check=True,
                         capture_output=True, text=True).stdout
    return [line.split("\t") for line in out.splitlines() if line]


# ---------------------------------------------------------------- clients

class Client:
    def __init__(self, n):
        self.n = n
        self.port_index = n % len(PORTS)
        self.conn = None
        self.email = f"faults-{RUN}-{n}@example.com"
        self.token = None
        self.seq = 0

    def port(self):
        return PORTS[self.port_index]

    def move(self):
        self.port_index = (self.port_index + 1) % len(PORTS)
        self.close()

    def close(self):
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    def send(self, method, path, body=None, headers=None, record=None):
        """(status, json body or None, headers); status "conn" when the connection failed."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port(), timeout=30)
        all_headers = {"content-type": "application/json"}
        if self.token:
            all_headers["authorization"] = f"Bearer {self.token}"
        all_headers.update(headers or {})
        sent_in = phase
        try:
            self.conn.request(method, path, body=json.dumps(body) if body is not None else None,
                              headers=all_headers)
            response = self.conn.getresponse()
            raw = response.read()
            status = response.status
            try:
                data = json.loads(raw) if raw else None
            except ValueError:
                data = None
            result = (status, data, response)
        except (OSError, http.client.HTTPException):
            self.move()
            result = ("conn", None, None)
        if record:
            code = ""
            if isinstance(result[1], dict) and isinstance(result[1].get("error"), dict):
                code = result[1]["error"].get("code", "")
            with lock:
                answers.append((sent_in, record, result[0], code))
        return result

    def login(self):
        self.token = None
        for _ in range(600):
            status, data, _ = self.send("POST", "/api/auth/login",
                                        {"email": self.email, "password": PASSWORD}, record="login")
            if status == 200:
                self.token = data["access_token"]
                return
            time.sleep(0.5)
        raise RuntimeError("cannot log in")

    def register(self):
        self.token = None
        for _ in range(600):
            status, _, _ = self.send("POST", "/api/auth/register",
                                     {"email": self.email, "password": PASSWORD,
                                      "display_name": f"Faults {self.n}"})
            if status in (201, 409):
                break
            time.sleep(0.5)
        self.login()

    def create(self):
        self.seq += 1
        key = f"{RUN}-{self.n}-{self.seq}"
        with lock:
            creates[key] = [phase, None, "pending"]
        started = time.time()
        while True:
            status, data, response = self.send("POST", "/api/plants", {"name": key},
                                               {"idempotency-key": key}, record="create")
            if status in (200, 201, 202):
                with lock:
                    creates[key][1] = data.get("id")
                    creates[key][2] = "acked"
                return
            if time.time() - started > GIVE_UP_SECS:
                with lock:
                    creates[key][2] = f"gave up ({status})"
                return
            if status == 401:
                self.login()
                continue
            retry = status == "conn" or status == 503 or (
                status == 409 and isinstance(data, dict)
                and data.get("error", {}).get("code") == "request_in_progress")
            if not retry:
                with lock:
                    creates[key][2] = f"refused {status}"
                return
            if status == "conn":
                time.sleep(0.1)
            else:
                try:
                    time.sleep(min(float(response.getheader("retry-after", "1")), 2.0) * 0.5)
                except ValueError:
                    time.sleep(0.5)

    def read(self):
        status, _, _ = self.send("GET", "/api/plants?limit=5", record="read")
        if status == 401:
            self.login()
        elif status == "conn" or status >= 500:
            time.sleep(0.1)

    def run(self):
        while not stopping.is_set():
            if random.random() < 0.5:
                self.create()
            else:
                self.read()


# ---------------------------------------------------------------- faults

def kill_instance():
    port = PORTS[0]
    log(f"kill -9 the instance on {port}")
    procs[port].kill()
    procs[port].wait()
    time.sleep(PHASE_SECS / 2)
    log(f"restarting the instance on {port}")
    start_instance(port)


def restart_postgres():
    log("pg_ctl restart -m fast")
    subprocess.run(os.environ.get("FAULTS_AS_PG", "").split() + [f"{PG_BIN}/pg_ctl", "-D", PG_DATA, "-m", "fast", "-w", "-l",
                    os.path.join(LOG_DIR, "postgres.log"), "-o", f"-p {PG_PORT} -k /tmp",
                    "restart"], check=True, stdout=subprocess.DEVNULL)


def restart_redis():
    log("redis restart (SHUTDOWN, start)")
    subprocess.run(["redis-cli", "-p", REDIS_PORT, "shutdown"], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    time.sleep(1)
    subprocess.run(["redis-server", "--port", REDIS_PORT, "--dir", REDIS_DIR, "--appendonly",
                    "yes", "--save", "", "--daemonize", "yes", "--logfile",
                    os.path.join(LOG_DIR, "redis.log")], check=True)


def main():
    global phase, phase_index
    start_instance(PORTS[0])
    start_instance(PORTS[1])
    clients = [Client(n) for n in range(CLIENTS)]
    for client in clients:
        client.register()
    threads = [threading.Thread(target=c.run, daemon=True) for c in clients]
    for thread in threads:
        thread.start()

    plan = [("steady", None)]
    if SOAK_SECS > 0:
        plan = [("soak", None)]
    else:
        plan += [("kill -9 instance", kill_instance), ("postgres restart", restart_postgres),
                 ("redis restart", restart_redis)] * ROUNDS
    fault_at = {}
    occurrences = []
    rss = defaultdict(list)
    for index, (name, fault) in enumerate(plan, start=1):
        with lock:
            phase = name
            phase_index = index
        start = time.time()
        fault_at[name] = start
        log(f"phase: {name}")
        if fault:
            # Requests are counted in the phase they were sent in: let this phase's be in flight.
            time.sleep(2)
            occurrences.append((name, index, time.time()))
            fault()
        length = SOAK_SECS if name == "soak" else PHASE_SECS
        while time.time() - start < length:
            for port in PORTS:
                rss[port].append(rss_kib(port))
            time.sleep(min(10, length))
    with lock:
        phase = "drain"
    stopping.set()
    log("stopping the load; waiting for retries in flight")
    for thread in threads:
        thread.join(GIVE_UP_SECS + 30)
    time.sleep(2)

    # ------------------------------------------------------------ checks
    rows = psql("SELECT payload->'PlantCreated'->>'name', aggregate_id FROM events "
                f"WHERE event_type = 'PlantCreated' "
                f"AND payload->'PlantCreated'->>'name' LIKE '{RUN}-%'")
    events = defaultdict(list)
    for name, aggregate_id in rows:
        events[name].append(aggregate_id)
    per_phase = defaultdict(Counter)
    for key, (sent_in, plant_id, state) in creates.items():
        found = events.get(key, [])
        if state == "acked":
            per_phase[sent_in]["acked"] += 1
            if not found or (plant_id and plant_id not in found):
                per_phase[sent_in]["lost"] += 1
        elif state != "pending":
            per_phase[sent_in]["unresolved"] += 1
        if len(found) > 1:
            per_phase[sent_in]["doubled"] += 1
    stats = defaultdict(Counter)
    codes = defaultdict(Counter)
    last_failure = {}
    for sent_in, op, status, code in answers:
        stats[sent_in]["requests"] += 1
        if status == "conn":
            stats[sent_in]["conn"] += 1
        elif 200 <= status < 300:
            stats[sent_in]["2xx"] += 1
        elif status == 503:
            codes[sent_in][code] += 1
        elif status >= 500:
            stats[sent_in]["500"] += 1
        else:
            codes[sent_in][f"{status} {code}".strip()] += 1
    # Recovery: from the fault to the last failed attempt (connection error or 5xx) of its phase.
    print()
    header = ("fault", "requests", "2xx", "503 by code", "other", "conn err", "500", "acked",
              "lost", "doubled", "unresolved")
    table = []
    for name in list(fault_at) + ["drain"]:
        s, c, p = stats[name], codes[name], per_phase[name]
        unavailable = ", ".join(f"{k} {v}" for k, v in sorted(c.items()) if not k[:1].isdigit())
        other = ", ".join(f"{k}: {v}" for k, v in sorted(c.items()) if k[:1].isdigit())
        table.append((name, s["requests"], s["2xx"], unavailable or "-", other or "-", s["conn"],
                      s["500"], p["acked"], p["lost"], p["doubled"], p["unresolved"]))
    widths = [max(len(str(row[i])) for row in table + [header]) for i in range(len(header))]
    line = lambda row: "| " + " | ".join(str(v).ljust(w) for v, w in zip(row, widths)) + " |"
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in table:
        print(line(row))
    print()
    worst = {}
    for name, index, at in occurrences:
        fails = [t for (t, i) in recovery_log if i == index]
        worst[name] = max(worst.get(name, 0.0), (max(fails) - at) if fails else 0.0)
    print("recovery (s, worst round): " + ", ".join(f"{n} {r:.1f}" for n, r in worst.items()))
    for port in PORTS:
        samples = [v for v in rss[port] if v]
        if samples:
            print(f"RSS {port} (MiB, every 10 s): " + " ".join(f"{v / 1024:.0f}" for v in samples))
    stop_instances()
    total_500 = sum(stats[n]["500"] for n in stats)
    lost = sum(per_phase[n]["lost"] for n in per_phase)
    doubled = sum(per_phase[n]["doubled"] for n in per_phase)
    extra = [k for k in events if k not in creates]
    print(f"\nacknowledged creates: {sum(per_phase[n]['acked'] for n in per_phase)}; "
          f"PlantCreated events of this run: {len(rows)}; lost {lost}; doubled {doubled}; "
          f"500s {total_500}; events without a request {len(extra)}")
    projected = psql(f"SELECT count(*) FROM plants WHERE name LIKE '{RUN}-%'")[0][0]
    print(f"plants in the read model: {projected} (of {len(rows)} events)")
    ok = total_500 == 0 and lost == 0 and doubled == 0 and not extra
    print("RESULT: " + ("PASS" if ok else "FAIL"))
    sys.exit(0 if ok else 1)


recovery_log = []


_send = Client.send


def timed_send(self, method, path, body=None, headers=None, record=None):
    sent_in = phase_index
    result = _send(self, method, path, body, headers, record)
    status, data = result[0], result[1]
    in_progress = status == 409 and isinstance(data, dict) and \
        data.get("error", {}).get("code") == "request_in_progress"
    if status == "conn" or in_progress or (isinstance(status, int) and status >= 500):
        with lock:
            recovery_log.append((time.time(), sent_in))
    return result


Client.send = timed_send

if __name__ == "__main__":
    try:
        main()
    finally:
        stop_instances()
