"""Fencing counters are bounded: every one has a TTL, and it outlives any lock that uses it."""

from vokaflow import locks


def fence_ttls(client) -> dict[str, int]:
    return {key.decode(): client.ttl(key) for key in client.scan_iter(match="vokaflow:fence:*", count=1000)}


def test_a_thousand_distinct_lock_keys_leave_no_counter_without_a_ttl(redis_client, monkeypatch):
    monkeypatch.setenv("VOKAFLOW_FENCE_TTL", "3600")
    for i in range(1000):
        locks.release(locks.acquire(f"batch:{i}", ttl=5, client=redis_client), client=redis_client)
    ttls = fence_ttls(redis_client)
    assert len(ttls) == 1000
    assert all(3500 < ttl <= 3600 for ttl in ttls.values()), sorted(set(ttls.values()))[:5]


def test_a_lock_longer_than_the_fence_ttl_keeps_its_counter_alive(redis_client, monkeypatch):
    monkeypatch.setenv("VOKAFLOW_FENCE_TTL", "10")
    lease = locks.acquire("long", ttl=600, client=redis_client)
    assert 590 < redis_client.ttl("vokaflow:fence:long") <= 600
    locks.extend(lease, 3000, client=redis_client)
    assert 2990 < redis_client.ttl("vokaflow:fence:long") <= 3000
    locks.release(lease, client=redis_client)
    # the next holder still gets a larger token: the counter did not restart
    assert locks.acquire("long", ttl=1, client=redis_client).fencing_token == lease.fencing_token + 1


def test_every_acquire_pushes_the_counter_ttl_out_again(redis_client, monkeypatch):
    monkeypatch.setenv("VOKAFLOW_FENCE_TTL", "100")
    locks.release(locks.acquire("again", ttl=1, client=redis_client), client=redis_client)
    redis_client.expire("vokaflow:fence:again", 5)
    locks.release(locks.acquire("again", ttl=1, client=redis_client), client=redis_client)
    assert 90 < redis_client.ttl("vokaflow:fence:again") <= 100
