"""One shared worker of each type (module scope): routing, results, batch, countdown, revoke, retries."""

from rest_framework.test import APIClient

from tasks.submit import submit_task
from tests.conftest import task_meta, wait_for, wait_for_state
from tests.e2e.test_workers import done_at
from vokaflow.core.queues import partition_for

BASE = "/api/high-scale-tasks"


class TestWithOneWorkerPerType:
    def test_each_type_runs_only_on_its_own_workers(self, module_workers):
        ids = {t: submit_task("vokaflow.echo", args=[t], worker_type=t) for t in module_workers}
        for worker_type, task_id in ids.items():
            meta = wait_for_state(task_id)
            assert meta["worker"] == module_workers[worker_type].name
            assert meta["queue"].startswith(f"{worker_type}.normal.p")
            assert meta["result"] == {"args": [worker_type], "kwargs": {}}

    def test_builtin_tasks_do_their_work(self, module_workers):
        cpu = submit_task("vokaflow.cpu", args=[1000])
        assert wait_for_state(cpu)["result"] == sum(i * i for i in range(1000))
        failed = submit_task("vokaflow.fail", args=["boom"])
        meta = wait_for_state(failed, ("FAILURE",))
        assert type(meta["result"]).__name__ == "TaskFailed" and meta["retries"] == 0

    def test_state_endpoint_follows_a_task_to_success(self, module_workers, db, django_user_model):
        client = APIClient()
        client.force_authenticate(django_user_model.objects.create_user("bob"))
        submitted = client.post(f"{BASE}/tasks/", {"task": "vokaflow.echo", "args": [1, 2]}, format="json")
        task_id = submitted.json()["task_id"]
        body = wait_for(lambda: (b := client.get(f"{BASE}/tasks/{task_id}/").json())["state"] == "SUCCESS" and b)
        assert body["result"] == {"args": [1, 2], "kwargs": {}}
        assert body["worker"] == module_workers["general"].name and body["finished_at"]

    def test_a_batch_of_1000_all_finish(self, module_workers, db, django_user_model):
        client = APIClient()
        client.force_authenticate(django_user_model.objects.create_user("carol"))
        tasks = [{"task": "vokaflow.noop", "worker_type": "IO_INTENSIVE"} for _ in range(1000)]
        body = client.post(f"{BASE}/tasks/batch/", {"tasks": tasks}, format="json").json()
        ids = [t["task_id"] for t in body["tasks"]]
        wait_for(lambda: all(task_meta(i)["status"] == "SUCCESS" for i in ids[-20:]), 60, 0.2, "the batch")
        assert all(task_meta(i)["status"] == "SUCCESS" for i in ids)

    def test_countdown_delays_a_task_behind_later_ones(self, module_workers):
        delayed = submit_task("vokaflow.echo", args=["late"], countdown=3)
        prompt = submit_task("vokaflow.echo", args=["now"])
        wait_for_state(prompt)
        assert task_meta(delayed)["status"] == "PENDING"
        meta = wait_for_state(delayed, timeout=20)
        assert (done_at(meta) - done_at(task_meta(prompt))).total_seconds() >= 2

    def test_a_revoked_task_never_runs(self, module_workers, db, django_user_model):
        client = APIClient()
        dave = django_user_model.objects.create_user("dave")
        client.force_authenticate(dave)
        task_id = submit_task("vokaflow.echo", args=["no"], countdown=2, owner=dave.pk)  # dave's own task
        assert client.delete(f"{BASE}/tasks/{task_id}/").json()["state"] == "REVOKED"
        follow_up = submit_task("vokaflow.echo", countdown=3)
        wait_for_state(follow_up)
        assert task_meta(task_id)["status"] == "REVOKED"

    def test_retries_back_off_and_stay_in_their_queue(self, module_workers):
        task_id = submit_task("vokaflow.flaky", kwargs={"failure_rate": 1.0, "seed": 1}, priority="HIGH",
                              partition_key="p")
        meta = wait_for_state(task_id, ("FAILURE",), timeout=60)
        assert meta["retries"] == 3 and type(meta["result"]).__name__ == "TransientFailure"
        assert meta["queue"] == f"general.high.p{partition_for('p', 8)}"
