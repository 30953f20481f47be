"""The combined soak: every fault at once, and every task accounted for.

    .venv/bin/python bench/soak.py --tasks 10000
    .venv/bin/python bench/soak.py --tasks 10000 --cluster     # on a Redis Cluster of its own

N tasks of mixed types (echo, no-op and a failing task on the general type, 5 ms sleeps and
failures on the IO type, sums on the prefork CPU type), one in ten failing for good, are
submitted over HTTP to gunicorn by two users (JWT logins, batches of 250 spread over
--submit-seconds, each batch with idempotency keys, so a 503 while Redis is away is retried
safely), while:

* workers are SIGKILLed 5 times (a replacement of the same type is started each time);
* Redis (the benchmark's own, AOF on) is stopped with SIGTERM and started again on the same
  port and data directory;
* the workers' database is unreachable for 20 s: PostgreSQL at 127.0.0.1:5432 (database
  `vokaflow_soak_bench`) when one answers, reached through a proxy that refuses and drops
  connections (the server itself is never stopped), else a SQLite file whose folder is moved away.
  The API keeps its own direct connection (it reads users, not dead letters).

With --cluster the Redis is a cluster of the benchmark's own (3 primaries, 3 replicas, AOF on,
ports 7300-7305), and the restart is of the primary that holds partition 0's group: SIGTERM,
started again a second later on the same port and data directory (within the node timeout, so
it comes back as that primary, from its AOF).

Workers: 2 general (threads, 2 slots), 1 IO (threads, 4), 1 CPU (prefork, 1), with a visibility
timeout of 5 s and a restore scan every second, and Celery beat flushing waiting dead letters
every 2 s. Then it waits for every task's final state and its dead letter, and prints what
was submitted, SUCCESS, dead-lettered, redelivered (delivered again after their worker or
connection was lost: those may have run twice), lost (no final state), wrong (a wrong result, a
dead letter for a task that succeeded or none for one that failed), what is left behind
(unacknowledged, queued, quota places, locks: up to 30 s after the drain for an idle fleet to
write its last acknowledgements) and the wall time. Exit status 1 when anything
was lost, wrong or left behind.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

from common import OwnRedis, free_port, load_script, own_env, own_redis_log_dir, postgres_database, python, start, stop

BATCH = 250
SLEEP = 0.005
WORKERS = {"general": (2, "threads", 2), "io": (1, "threads", 4), "cpu": (1, "prefork", 1)}  # count, pool, slots
KILLS = ("general", "io", "general", "cpu", "general")
TYPES = ("cpu", "io", "memory", "network", "general")
PENDING = "vokaflow:pending:{}"


def payload(i: int) -> dict:
    """The i-th task: one in ten fails for good (on the general and IO types)."""
    kind, priority = i % 10, ("HIGH", "NORMAL", "LOW")[i // 10 % 3]
    task = {"priority": priority, "idempotency_key": f"soak-{i}"}
    if kind == 0:
        worker_type = "GENERAL_PURPOSE" if i % 20 == 0 else "IO_INTENSIVE"
        return task | {"task": "vokaflow.fail", "args": [f"soak {i}"], "worker_type": worker_type}
    if kind <= 4:
        return task | {"task": "vokaflow.echo", "args": [i]}
    if kind <= 6:
        return task | {"task": "vokaflow.noop"}
    if kind <= 8:
        return task | {"task": "vokaflow.sleep", "args": [SLEEP]}
    return task | {"task": "vokaflow.cpu", "args": [i]}


def correct(i: int, meta: dict) -> bool:
    if i % 10 == 0:
        return meta["status"] == "FAILURE" and f"soak {i}" in str(meta["result"])
    result = meta["result"]
    return meta["status"] == "SUCCESS" and {
        "vokaflow.echo": lambda: result == {"args": [i], "kwargs": {}},
        "vokaflow.noop": lambda: result is None,
        "vokaflow.sleep": lambda: isinstance(result, dict) and result.get("slept") == SLEEP,
        "vokaflow.cpu": lambda: result == sum(k * k for k in range(i)),
    }[payload(i)["task"]]()


class Proxy:
    """A TCP proxy to PostgreSQL that refuses and drops connections while down, as a stopped server would."""

    def __init__(self, target_port: int):
        self.target_port, self.up, self.sockets = target_port, True, []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            if not self.up:
                conn.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [conn, upstream]
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def go_down(self) -> None:
        self.up = False
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.sockets.clear()

    def come_back(self) -> None:
        self.up = True

    def close(self) -> None:
        self.server.close()


class SqliteCut:
    """The workers open the SQLite file through a folder holding a link to it; the folder is moved away and back."""

    def __init__(self, folder: Path, database: Path):
        self.folder, self.away = folder / "db-folder", folder / "db-folder-away"
        self.folder.mkdir()
        (self.folder / "db.sqlite3").symlink_to(database)
        self.url = f"sqlite:///{self.folder / 'db.sqlite3'}"

    def go_down(self) -> None:
        self.folder.rename(self.away)

    def come_back(self) -> None:
        self.away.rename(self.folder)

    def close(self) -> None:
        pass


def request(port: int, method: str, path: str, body: dict, token: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    try:
        conn.request(method, path, json.dumps(body), headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def login(port: int, username: str) -> str:
    deadline = time.monotonic() + 90
    while True:
        try:
            credentials = {"username": username, "password": "soak-password"}
            status, body = request(port, "POST", "/api/auth/token/", credentials)
            if status == 200:
                return json.loads(body)["access"]
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"could not log in as {username}")
        time.sleep(0.2)


class User(threading.Thread):
    """Submits its share of the tasks in batches spread over the submit window; retries a 503
    (Redis away: nothing was enqueued) or a dropped connection with the same idempotency keys."""

    def __init__(self, port: int, token: str, indices: range, t0: float, window: float):
        super().__init__(daemon=True)
        self.port, self.token, self.indices, self.t0, self.window = port, token, indices, t0, window
        self.ids: dict[int, str] = {}
        self.retried, self.error = 0, ""

    def run(self) -> None:
        batches = [self.indices[s:s + BATCH] for s in range(0, len(self.indices), BATCH)]
        for n, batch in enumerate(batches):
            time.sleep(max(0.0, self.t0 + n * self.window / len(batches) - time.monotonic()))
            body = {"tasks": [payload(i) for i in batch]}
            deadline = time.monotonic() + 60
            while True:
                try:
                    status, answer = request(self.port, "POST", "/api/high-scale-tasks/tasks/batch", body, self.token)
                except OSError as exc:
                    status, answer = 0, str(exc).encode()
                if status == 202:
                    break
                if status not in (0, 503) or time.monotonic() > deadline:
                    self.error = f"{status} {answer[:300]!r}"
                    return
                self.retried += 1
                time.sleep(0.2)
            for i, task in zip(batch, json.loads(answer)["tasks"], strict=True):
                self.ids[i] = task["task_id"]


def metas(client, ids: list[str]) -> list[dict | None]:
    from vokaflow.core.slots import task_part

    out: list[dict | None] = []
    for s in range(0, len(ids), 1000):
        names = [f"celery-task-meta-{task_part(t)}" for t in ids[s:s + 1000]]
        out += [json.loads(v) if v else None for v in client.mget_nonatomic(names)]
    return out


def leftovers(client, owners: list[int]) -> dict:
    """What an idle fleet leaves behind, on one Redis or every partition group of a cluster."""
    from vokaflow.core import keys
    from vokaflow.core.slots import LAYOUT, partition_tag, tagged

    tags = sorted({tagged(partition_tag(p, LAYOUT.partitions)) for p in range(LAYOUT.partitions)}) \
        if LAYOUT.cluster else [""]
    queued = sum(client.llen(k) for t in TYPES for k in client.scan_iter(match=f"{t}.*", count=1000)
                 if client.type(k) == b"list")
    found = {"unacked": sum(client.hlen("unacked" + t) for t in tags),
             "unacked_index": sum(client.zcard("unacked_index" + t) for t in tags), "queued": queued,
             "scheduled": sum(client.zcard(keys.SCHEDULED.format(k) + t) for k in TYPES for t in tags),
             "dead letters waiting in Redis": client.llen("vokaflow:dlq:pending"),
             "quota places": sum(client.zcard(PENDING.format(o)) for o in owners),
             "locks": len(list(client.scan_iter(match="vokaflow:lock:*")))
             + sum(client.exists("unacked_mutex" + t) for t in tags)}
    return {k: n for k, n in found.items() if n}


class Fleet:
    def __init__(self, env: dict, log_dir: Path):
        self.env, self.log_dir, self.live = env, log_dir, {t: [] for t in WORKERS}
        self.procs: list[subprocess.Popen] = []
        for worker_type, (count, _, _) in WORKERS.items():
            for _ in range(count):
                self.add(worker_type)

    def add(self, worker_type: str) -> None:
        _, pool, slots = WORKERS[worker_type]
        name = f"{worker_type}-{uuid.uuid4().hex[:6]}@soak"
        proc = start([python(), "-m", "celery", "-A", "vokaflow", "worker", "--type", worker_type, "-P", pool,
                      "-c", str(slots), "-n", name, "-l", "INFO", "--without-mingle", "--without-gossip"],
                     self.env, self.log_dir / f"soak-{name}.log")
        self.live[worker_type].append(proc)
        self.procs.append(proc)

    def kill(self, worker_type: str) -> None:
        proc = self.live[worker_type].pop(0)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self.add(worker_type)


class Nodes:
    """The --cluster Redis: 3 primaries and 3 replicas with AOF (scripts/cluster.py)."""

    PORTS = list(range(7300, 7306))

    def __init__(self, folder: Path):
        self.local = load_script("cluster")
        self.procs = self.local.start(self.PORTS, folder, appendonly=True)
        self.url = self.local.url_for(self.PORTS)

    def restart_primary_of_partition_0(self) -> None:
        from vokaflow.core.slots import LAYOUT, partition_tag
        from vokaflow.redis import get_redis

        node = get_redis().get_node_from_key("x{" + partition_tag(0, LAYOUT.partitions) + "}")
        at = next(i for i, p in enumerate(self.procs) if f"--port {node.port} " in " ".join(map(str, p.args)) + " ")
        self.procs[at].terminate()
        self.procs[at].wait(30)
        time.sleep(1)
        self.procs[at] = subprocess.Popen(self.procs[at].args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True)

    def stop(self) -> None:
        self.local.stop(self.procs)


def setup_database(env: dict) -> None:
    """Migrated, no dead letters, and the two users with the password soak-password."""
    subprocess.run([python(), "manage.py", "migrate", "-v", "0"], cwd=Path(__file__).resolve().parent.parent,
                   env=env, check=True)
    subprocess.run([python(), "-c", "import django; django.setup()\n"
                    "from django.contrib.auth.models import User\nfrom tasks.models import DeadLetter\n"
                    "DeadLetter.objects.all().delete()\n"
                    "for name in ('soak-alice', 'soak-bob'):\n"
                    "    User.objects.filter(username=name).delete()\n"
                    "    User.objects.create_user(name, password='soak-password')\n"],
                   env=env, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--submit-seconds", type=float, default=30, help="submissions are spread over this long")
    parser.add_argument("--outage", type=float, default=20, help="seconds the database is unreachable")
    parser.add_argument("--visibility", type=int, default=5, help="VOKAFLOW_VISIBILITY_TIMEOUT of the workers")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for every final state")
    parser.add_argument("--cluster", action="store_true", help="on a Redis Cluster of its own (ports 7300-7305)")
    args = parser.parse_args()
    log_dir = own_redis_log_dir()
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as folder:
        own = OwnRedis(folder, "--appendonly", "yes", "--appendfsync", "everysec")
        nodes = Nodes(Path(folder) / "cluster") if args.cluster else None
        client = own.start()
        env = own_env(own.port, root, folder)
        if nodes:
            env["REDIS_URL"] = nodes.url
        postgres = postgres_database("vokaflow_soak_bench")
        if postgres:
            env["DATABASE_URL"] = postgres
            proxy = Proxy(5432)
            cut: Proxy | SqliteCut = proxy
            workers_db = postgres.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        else:
            sqlite_cut = SqliteCut(Path(folder), Path(folder) / "bench.sqlite3")
            cut, workers_db = sqlite_cut, sqlite_cut.url
        env.update(VOKAFLOW_THROTTLE_RATE="1000000/min", ALLOWED_HOSTS="127.0.0.1", LOG_LEVEL="WARNING")
        setup_database(env)
        os.environ.update(env)
        import django

        django.setup()
        from django.contrib.auth.models import User as DjangoUser

        from tasks.models import DeadLetter

        owners = list(DjangoUser.objects.filter(username__startswith="soak-").values_list("pk", flat=True))
        if nodes:
            from vokaflow.redis import get_redis

            client = get_redis()
        worker_env = {**env, "DATABASE_URL": workers_db, "VOKAFLOW_VISIBILITY_TIMEOUT": str(args.visibility),
                      "VOKAFLOW_RESTORE_INTERVAL": "1", "VOKAFLOW_DLQ_FLUSH_SECONDS": "2",
                      "VOKAFLOW_DLQ_PRUNE_SECONDS": "86400",
                      **({} if postgres else {"DATABASE_CONN_MAX_AGE": "0"})}
        port = free_port()
        procs = [start([python(), "-m", "gunicorn", "vokaflow.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "2",
                        "--threads", "4"], env, log_dir / "soak-gunicorn.log"),
                 start([python(), "-m", "celery", "-A", "vokaflow", "beat", "-s", f"{folder}/beat-schedule",
                        "-l", "WARNING"], worker_env, log_dir / "soak-beat.log")]
        fleet = Fleet(worker_env, log_dir)
        try:
            tokens = [login(port, name) for name in ("soak-alice", "soak-bob")]
            wait = time.monotonic() + 90
            while client.zcard("vokaflow:workers") < sum(n for n, _, _ in WORKERS.values()):
                if time.monotonic() > wait:
                    raise RuntimeError(f"the workers did not start; see {log_dir}")
                time.sleep(0.2)
            window, half = args.submit_seconds, args.tasks // 2
            faults = [(window * at, f"kill {t}") for at, t in zip((0.1, 0.32, 0.63, 0.78, 0.98), KILLS, strict=True)]
            faults += [(window * 0.22, "database down"), (window * 0.22 + args.outage, "database back"),
                       (window * 0.47, "restart redis")]
            print(f"{args.tasks} tasks, {'a Redis Cluster' if nodes else 'one Redis'}, database "
                  f"{'PostgreSQL' if postgres else 'SQLite'}, workers "
                  f"{', '.join(f'{n} {t}' for t, (n, _, _) in WORKERS.items())}", flush=True)
            t0 = time.monotonic()
            users = [User(port, token, range(n * half, args.tasks if n else half), t0, window)
                     for n, token in enumerate(tokens)]
            for user in users:
                user.start()
            for at, fault in sorted(faults):
                time.sleep(max(0.0, t0 + at - time.monotonic()))
                print(f"{time.monotonic() - t0:5.1f} s  {fault}", flush=True)
                if fault.startswith("kill "):
                    fleet.kill(fault.split()[1])
                elif fault == "restart redis" and nodes:
                    nodes.restart_primary_of_partition_0()
                elif fault == "restart redis":
                    own.stop()
                    time.sleep(1)
                    client = own.start()
                elif fault == "database down":
                    cut.go_down()
                else:
                    cut.come_back()
            for user in users:
                user.join(300)
            failed_submit = [u.error for u in users if u.error or u.is_alive()]
            ids_by_index = {i: t for u in users for i, t in u.ids.items()}
            order = sorted(ids_by_index)
            ids = [ids_by_index[i] for i in order]
            failing = {ids_by_index[i] for i in order if i % 10 == 0}
            deadline, last = time.monotonic() + args.timeout, None
            while True:  # every final state and every dead letter in the table
                states = metas(client, ids)
                final = sum(1 for m in states if m and m["status"] in ("SUCCESS", "FAILURE"))
                rows = Counter(DeadLetter.objects.filter(task_id__in=ids).values_list("task_id", flat=True))
                if final == len(ids) and set(rows) >= failing:
                    break
                if (final, len(rows)) != last:
                    last, deadline = (final, len(rows)), max(deadline, time.monotonic() + 30)  # still moving
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            wall = time.monotonic() - t0
            idle = time.monotonic() + 30  # the fleet writes its last acknowledgements and freed places
            while (left := leftovers(client, owners)) and time.monotonic() < idle:
                time.sleep(0.5)
            from vokaflow.core.slots import task_part

            redeliveries = [int(v) for s in range(0, len(ids), 1000) for v in client.mget_nonatomic(
                [f"vokaflow:redeliveries:{task_part(t)}" for t in ids[s:s + 1000]]) if v]
            succeeded = sum(1 for m in states if m and m["status"] == "SUCCESS")
            wrong = [i for i, m in zip(order, states, strict=True) if m and m["status"] in ("SUCCESS", "FAILURE")
                     and not correct(i, m)]
            stray = DeadLetter.objects.exclude(task_id__in=failing).count()
            print(f"submitted        {len(ids)} of {args.tasks} by 2 users ({sum(u.retried for u in users)} "
                  f"batches retried after a 503 or a dropped connection)"
                  + (f"; submissions failed: {failed_submit}" if failed_submit else ""))
            print(f"SUCCESS          {succeeded}")
            print(f"dead-lettered    {len(set(rows) & failing)} of {len(failing)} failing "
                  f"({sum(n - 1 for n in rows.values())} duplicate rows, {stray} rows for other tasks)")
            print(f"redelivered      {len(redeliveries)} tasks ({sum(redeliveries)} deliveries after the first), "
                  "delivered again after their worker or connection was lost: each may have run twice")
            print(f"lost             {len(ids) - final} (no final state)")
            print(f"wrong            {len(wrong)} (a wrong result or state)")
            print(f"left behind      {left or 'nothing'}")
            if left.get("quota places"):  # whose places: where their tasks ran, and how they ended
                held = [m.decode() for o in owners for m in client.zrange(PENDING.format(o), 0, -1)]
                print("                 their tasks ran on "
                      f"{dict(Counter((m or {}).get('worker') for m in metas(client, held)))}, ended "
                      f"{dict(Counter((m or {}).get('status') for m in metas(client, held)))}")
            print(f"wall time        {wall:.1f} s from the first submission to the last final state and dead letter")
            sys.exit(1 if failed_submit or final < len(ids) or wrong or stray or left
                     or set(rows) != failing else 0)
        finally:
            stop(procs + fleet.procs)
            own.stop()
            if nodes:
                nodes.stop()
            cut.close()


if __name__ == "__main__":
    main()
