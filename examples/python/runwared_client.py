"""A Python client of runwared: enhance a prompt, stream images.

Stubs come from the daemon's proto, generated at run time:

    python -m grpc_tools.protoc -I ../../proto --python_out=gen --grpc_python_out=gen \
        ../../proto/runware/v1/runware.proto

Usage, with a daemon running (`runwared serve --simulate`):

    python runwared_client.py [ADDRESS]      # default 127.0.0.1:7433, or unix:///path
"""
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
PROTO = HERE.parent.parent / "proto"


def load_stubs(out_dir):
    """Generates the runware.v1 stubs into out_dir and imports them."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO}", f"--python_out={out}",
         f"--grpc_python_out={out}", str(PROTO / "runware/v1/runware.proto")],
        check=True,
    )
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    from runware.v1 import runware_pb2, runware_pb2_grpc  # noqa: E402

    return runware_pb2, runware_pb2_grpc


def channel(address):
    """A channel to the daemon: "host:port" or "unix:///path/runwared.sock".

    Over a Unix socket, gRPC C-core sends the socket path as :authority,
    which the daemon's HTTP/2 server rejects as malformed; name a plain
    authority instead.
    """
    import grpc

    options = [("grpc.default_authority", "localhost")] if address.startswith("unix:") else []
    return grpc.insecure_channel(address, options=options)


def enhance(stub, pb, prompt, versions=3, timeout=30):
    """Every enhanced version of `prompt`, in order."""
    resp = stub.PromptEnhance(
        pb.PromptEnhanceRequest(prompt=prompt, prompt_versions=versions), timeout=timeout
    )
    return resp.task_uuid, [v.text for v in resp.versions]


def stream_images(stub, pb, prompt, n=2, model="runware:101@1", timeout=60):
    """Yields each image as it arrives."""
    req = pb.ImageInferenceRequest(
        positive_prompt=prompt, model=model, width=512, height=512, number_results=n
    )
    yield from stub.ImageInference(req, timeout=timeout)


def main():
    address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:7433"
    pb, pb_grpc = load_stubs(HERE / "gen")
    with channel(address) as ch:
        stub = pb_grpc.RunwareStub(ch)
        _, texts = enhance(stub, pb, "a lighthouse at dusk")
        for t in texts:
            print(t)
        for image in stream_images(stub, pb, "a lighthouse at dusk"):
            print(image.index, image.image_uuid, image.image_url)


if __name__ == "__main__":
    main()
