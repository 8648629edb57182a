import pytest
from flwr.supercore.task_identity import TaskIdentity



@pytest.fixture()
def server_identity(monkeypatch):
    """Flower builds a message's metadata from the running task's identity; outside a run,
    tests set one (a server task on node 0)."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
