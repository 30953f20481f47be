"""Every Redis key name VokaFlow writes, in one place (`redis-cli --scan --pattern 'vokaflow:*'`).

The rule every script, MULTI and multi-key command follows, on one Redis as on a cluster: each
key it touches is passed in KEYS (never built inside a script), and on a Redis Cluster all of
them share one hash tag, so they share a slot (vokaflow.core.slots has the layout). On a single
Redis or Sentinel the names below are used as they are.
"""

from urllib.parse import quote, unquote

from vokaflow.core.slots import LAYOUT, tagged, task_part

PREFIX = "vokaflow:"

# Submission
TASK_RECORD = PREFIX + "task:{}"  # task id → the submission record (JSON), expires with the result
IDEMPOTENCY = PREFIX + "idem:{}:{}"  # (owner: user id or "system", key) → the first submission's task id
REVOKED = PREFIX + "revoked"  # sorted set: task id → expiry; revokes a worker started later honours
REDELIVERIES = PREFIX + "redeliveries:{}"  # task id → deliveries that ended with the worker gone
CANCEL = PREFIX + "cancel:{}"  # task id → why a running thread-pool task is asked to stop (revoked, time limit)

# kombu's Redis transport: messages taken but not yet acknowledged (delivery tag → message)
UNACKED = "unacked"
PENDING = PREFIX + "pending:{}"  # owner → sorted set: task id → when it stops counting (the quota)

# Broker
BELL = PREFIX + "bell:{}"  # worker type short name → stream an idle consumer waits on
BODY = PREFIX + "body:{}"  # delivery tag → the body of a large message, kept out of its queue
REPLICATED = PREFIX + "replicated"  # marker written before WAIT (tasks.submit; per group on a cluster)
PURGING = PREFIX + "purging:{}"  # a purged queue's messages while their bodies are deleted (workers.queues)
SCHEDULED = PREFIX + "scheduled:{}"  # worker type short name → sorted set: message → due (epoch s)
# A Redis Cluster only (vokaflow.announce), both per partition group:
LEVELS = PREFIX + "levels:{}"  # worker type short name → hash: rank → announcements, <rank>s → found stale
ANNOUNCING = PREFIX + "announcing"  # hash: queue → the token of its announcement under way, or "done"

# Dead letters waiting for the database
DLQ_PENDING = PREFIX + "dlq:pending"

# Locks (lock_keys: on a cluster the lock and its counter are tagged with the lock's key)
LOCK = PREFIX + "lock:"  # + key
FENCE = PREFIX + "fence:"  # + key: the fencing counter
LOCK_RELEASED = PREFIX + "lock-released:"  # + key: pub/sub channel a waiter listens on

# Fleet
WORKER = PREFIX + "worker:{}"  # worker name → heartbeat (JSON, with a TTL)
WORKERS = PREFIX + "workers"  # sorted set: worker name → last seen
STATS = PREFIX + "stats:{}:{}"  # (worker type, priority) → hash of outcome → count
DONE = PREFIX + "done:{}"  # epoch second → tasks finished in it
HISTORY = PREFIX + "history:{}:{}:{}"  # (bucket seconds, completed|failed, epoch // bucket) → count
PAUSED = PREFIX + "paused"  # set of paused levels, "GENERAL_PURPOSE:LOW": their queues are not consumed
LAUNCHERS = PREFIX + "launchers"  # host → the launcher's process table

# Schedules (tasks.schedules). A schedule's keys share the tag {s<id>}: the record script touches both.
SCHEDULE_STATE = PREFIX + "schedule:{{s{}}}"  # schedule id → hash: last_due, last_task, last_task_due
SCHEDULE_RUNS = PREFIX + "schedule:{{s{}}}:runs"  # schedule id → hash: due (epoch s) → what happened (JSON)
SCHEDULE_CHANGES = PREFIX + "schedule-changes"  # stream of changed schedule ids, read by every beat

# Limits (tasks.limits). An instance (a limit, or one value of its `per` argument) has the tag
# {lim:<name>|<quoted value>}: its start and let-out scripts touch all six of its keys.
LIMITS = PREFIX + "limits"  # hash: name → the API's definition (JSON)
LIMITS_WAITING = PREFIX + "limits:waiting"  # set of instances with tasks waiting (JSON [name, value])
LIMIT_RUNNING = PREFIX + "limit:{}:running"  # tag → sorted set: task id → lease expiry
LIMIT_TAT = PREFIX + "limit:{}:tat"  # tag → the rate's theoretical arrival time (epoch s)
LIMIT_WAITING = PREFIX + "limit:{}:waiting"  # tag → sorted set: task id → place (priority, enqueue time)
LIMIT_MESSAGES = PREFIX + "limit:{}:messages"  # tag → hash: task id → place and message; m:<id>: let out, until pushed
LIMIT_MOVED = PREFIX + "limit:{}:moved"  # tag → sorted set: task id let out → when
LIMIT_PLAN = PREFIX + "limit:{}:plan"  # tag → when the rate's let-out tasks planned so far end (epoch s)
LIMIT_SCAN = PREFIX + "limit:{lim:*"
HELD = PREFIX + "held:{}"  # task id → the limit it waits for

# Failed logins in the current window (vokaflow.login_limit)
# One hash tag for both: the limiter's script counts a user and an address at once (one slot on a
# cluster; login attempts are few, so one slot carries them all).
LOGIN_FAILURES_USER = PREFIX + "{{login-failures}}:user:{}"  # digest of the user name → count
LOGIN_FAILURES_ADDRESS = PREFIX + "{{login-failures}}:addr:{}"  # client address → count

# Django's cache (throttling)
CACHE_PREFIX = PREFIX + "cache"


def task_key(template: str, task_id: str) -> str:
    """A key of one task (TASK_RECORD, REDELIVERIES, CANCEL): on a cluster tagged by its id, so a
    task's keys share the slot of its queue (vokaflow.core.slots)."""
    return template.format(task_part(task_id))


def in_group(name: str, tag: str | None) -> str:
    """A key of a partition group (a scheduled set, a large message's body): with the group's tag
    on a cluster, as it is on one Redis (tag None)."""
    return name + tagged(tag) if tag else name


def cluster_layout() -> bool:
    return LAYOUT.cluster


def lock_keys(key: str, cluster: bool) -> tuple[str, str]:
    """(lock, fencing counter) of lock `key`. On a cluster both carry the hash tag ``{key}``: the
    acquire script touches both (a ``}`` inside the key ends the tag early, for both alike)."""
    part = "{" + key + "}" if cluster else key
    return LOCK + part, FENCE + part



def limit_tag(name: str, value: str) -> str:
    """The hash tag of a limit instance; the value quoted, so no brace or bar of it ends the tag."""
    return "{lim:" + name + "|" + quote(value, safe="") + "}"


def parse_limit_tag(key: str) -> tuple[str, str]:
    """(name, value) of a limit instance's key."""
    inner = key[key.index("{lim:") + 5:key.index("}")]
    name, _, value = inner.partition("|")
    return name, unquote(value)
