"""The Python client against a real daemon (on its built-in simulator)."""
import os
import pathlib
import re
import subprocess
import urllib.request

import grpc
import pytest

import runwared_client

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    binary = os.environ.get("RUNWARED_BIN", str(ROOT / "target/debug/runwared"))
    socket = tmp_path_factory.mktemp("sock") / "runwared.sock"
    proc = subprocess.Popen(
        [binary, "serve", "--simulate", "--listen", "127.0.0.1:0", "--runware-listen", "127.0.0.1:0",
         "--unix-socket", str(socket)],
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": os.environ.get("PATH", ""), "NO_COLOR": "1"},
    )
    address = None
    for line in proc.stderr:  # the daemon says where it listens
        m = re.search(r"gRPC listening on TCP addr=(\S+)", line)
        if m:
            address = m.group(1)
        if "gRPC listening on Unix socket" in line:
            break
    assert address, "the daemon did not start"
    yield address, socket
    proc.terminate()
    assert proc.wait(timeout=30) == 0


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    return runwared_client.load_stubs(tmp_path_factory.mktemp("gen"))


def test_enhance_a_prompt(daemon, stubs):
    pb, pb_grpc = stubs
    with runwared_client.channel(daemon[0]) as channel:
        uuid, texts = runwared_client.enhance(pb_grpc.RunwareStub(channel), pb, "a dog", versions=3)
    assert len(texts) == 3
    assert all(t.startswith("a dog") for t in texts)
    assert re.fullmatch(r"[0-9a-f-]{36}", uuid)


def test_stream_images_over_the_unix_socket(daemon, stubs):
    pb, pb_grpc = stubs
    with runwared_client.channel(f"unix://{daemon[1]}") as channel:
        images = list(runwared_client.stream_images(pb_grpc.RunwareStub(channel), pb, "a cat", n=2))
    assert [i.index for i in images] == [0, 1]
    assert len({i.image_uuid for i in images}) == 2
    # The simulator's URLs point at itself on loopback, and download.
    for image in images:
        with urllib.request.urlopen(image.image_url, timeout=10) as answer:
            assert answer.headers["Content-Type"].startswith("image/")
            assert len(answer.read()) > 0


def test_errors_carry_the_parameter(daemon, stubs):
    pb, pb_grpc = stubs
    with runwared_client.channel(daemon[0]) as channel:
        stub = pb_grpc.RunwareStub(channel)
        with pytest.raises(grpc.RpcError) as e:
            list(stub.ImageInference(pb.ImageInferenceRequest(positive_prompt="a cat", model="m", width=500, height=512)))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith("width: ")
