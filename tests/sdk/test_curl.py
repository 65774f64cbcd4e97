"""`curl` against the REST door of the daemon and of the simulator, as the README shows it."""

import json
import shutil
import subprocess
import uuid

import pytest


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_posts_a_task_array_and_gets_every_result(endpoint):
    http = endpoint.replace("ws://", "http://")
    task = str(uuid.uuid4())
    body = json.dumps([
        {"taskType": "authentication", "apiKey": "local"},
        {"taskType": "promptEnhance", "taskUUID": task, "prompt": "a dog", "promptVersions": 2},
    ])
    out = subprocess.run(
        ["curl", "-s", "--fail-with-body", http, "-H", "Content-Type: application/json", "-d", body],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    data = json.loads(out)["data"]
    assert [d["taskUUID"] for d in data] == [task, task]
    assert all(d["text"].startswith("a dog") for d in data)
