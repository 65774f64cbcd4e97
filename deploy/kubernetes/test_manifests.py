"""Checks the Kubernetes example: a native sidecar with gRPC probes on a
numeric port, the key from a Secret file, a shared socket, sized resources."""
import pathlib

import yaml

HERE = pathlib.Path(__file__).parent


def pod():
    docs = [d for d in yaml.safe_load_all((HERE / "pod.yaml").read_text()) if d]
    pods = [d for d in docs if d["kind"] == "Pod"]
    assert len(pods) == 1
    return pods[0]


def sidecar(p):
    (c,) = [c for c in p["spec"]["initContainers"] if c["name"] == "runwared"]
    return c


def arg(c, name):
    for a in c["args"]:
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    raise AssertionError(f"--{name} missing")


def test_native_sidecar_with_grpc_probes_on_a_numeric_port():
    c = sidecar(pod())
    assert c["restartPolicy"] == "Always"
    port = int(arg(c, "listen").rsplit(":", 1)[1])
    for probe, service in [("startupProbe", "liveness"), ("livenessProbe", "liveness"), ("readinessProbe", "readiness")]:
        grpc = c[probe]["grpc"]
        assert isinstance(grpc["port"], int) and grpc["port"] == port, probe
        assert grpc["service"] == service, probe
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 20


def test_startup_follows_liveness_so_an_unreachable_runware_does_not_restart_the_sidecar():
    # Readiness waits for Runware; a startup probe on it would restart the
    # sidecar whenever Runware is unreachable at start for longer than the
    # probe's budget, which liveness is designed never to do.
    c = sidecar(pod())
    assert c["startupProbe"]["grpc"]["service"] == c["livenessProbe"]["grpc"]["service"] == "liveness"


def test_no_service_account_token_and_metrics_on_the_pod_ip_only():
    p = pod()
    assert p["spec"]["automountServiceAccountToken"] is False
    c = sidecar(p)
    metrics = arg(c, "metrics-listen")
    assert not metrics.startswith("0.0.0.0") and not metrics.startswith("[::]")
    assert metrics.startswith("$(POD_IP):") or metrics.startswith("127.")
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    annotations = p["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == metrics.rsplit(":", 1)[1]


def test_listening_beyond_loopback_is_guarded_by_a_token():
    p = pod()
    c = sidecar(p)
    assert not arg(c, "listen").startswith("127.")
    token = arg(c, "auth-token-file")
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in p["spec"]["volumes"]}
    (name,) = [n for n, m in mounts.items() if token.startswith(m["mountPath"] + "/")]
    assert "secret" in volumes[name]


def test_api_key_comes_from_a_secret_file_never_a_literal():
    p = pod()
    c = sidecar(p)
    env = {e["name"]: e for e in c["env"]}
    assert "RUNWARE_API_KEY" not in env
    path = env["RUNWARE_API_KEY_FILE"]["value"]
    mounts = [m for m in c["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    assert mounts and mounts[0]["readOnly"] is True
    volume = {v["name"]: v for v in p["spec"]["volumes"]}[mounts[0]["name"]]
    assert volume["secret"]["secretName"] == "runware-api-key"
    assert path.rsplit("/", 1)[1] == "api-key"


def test_app_shares_the_socket_and_starts_after_the_sidecar():
    p = pod()
    c = sidecar(p)
    socket = arg(c, "unix-socket")
    (app,) = p["spec"]["containers"]
    app_mounts = [m["mountPath"] for m in app["volumeMounts"]]
    assert any(socket.startswith(m + "/") for m in app_mounts)
    assert {e["name"]: e["value"] for e in app["env"]}["RUNWARED_SOCKET"] == socket
    # Same group for both containers: the socket is mode 0660.
    assert p["spec"]["securityContext"]["runAsGroup"] == p["spec"]["securityContext"]["fsGroup"]


def test_resources_and_hardening():
    p = pod()
    c = sidecar(p)
    assert c["resources"]["requests"]["memory"] and c["resources"]["requests"]["cpu"]
    assert c["resources"]["limits"]["memory"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    drain = int(arg(c, "drain-timeout").rstrip("s"))
    assert p["spec"]["terminationGracePeriodSeconds"] > drain


def test_containerfile_is_minimal():
    text = (HERE / "Containerfile").read_text()
    assert "distroless" in text and "USER nonroot" in text
    assert 'ENTRYPOINT ["/usr/local/bin/runwared"]' in text


def test_state_survives_a_restart_of_the_sidecar_in_place():
    p = pod()
    c = sidecar(p)
    state = arg(c, "state-dir")
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == state]
    (volume,) = [v for v in p["spec"]["volumes"] if v["name"] == mount["name"]]
    # On the pod's disk (not in memory: it counts against no container's
    # limit), bounded, and the app does not see it.
    assert "emptyDir" in volume and volume["emptyDir"].get("medium") != "Memory"
    assert volume["emptyDir"]["sizeLimit"]
    app = [c for c in p["spec"]["containers"] if c["name"] == "app"][0]
    assert all(m["name"] != mount["name"] for m in app["volumeMounts"])
