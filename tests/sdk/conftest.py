import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402


@pytest.fixture(scope="module", params=["daemon", "simulator"])
def endpoint(request):
    """A Runware URL: the endpoint of a daemon on --simulate, or the
    simulator on its own (`runwared sim`), which the same checks hold to
    Runware's behaviour."""
    if request.param == "daemon":
        server, url = harness.start_daemon("--simulate")
    else:
        server, url = harness.start_simulator()
    yield url
    server.stop()


@pytest.fixture()
def flaky(tmp_path_factory):
    """A daemon whose upstream (a separate simulator) drops every 700 ms.

    Yields (endpoint URL, simulator process)."""
    sim, sim_url = harness.start_faulty_simulator()
    key = tmp_path_factory.mktemp("key") / "key"
    key.write_text("sdk-check-key\n")
    d, url = harness.start_daemon("--upstream-url", sim_url, "--api-key-file", str(key))
    yield url, sim
    d.stop()
    if sim.proc.poll() is None:
        sim.stop()
