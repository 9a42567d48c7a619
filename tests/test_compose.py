"""docker-compose.yml and Dockerfile: every service points at the others consistently.

There is no Docker engine where these tests run, so they check the files
themselves: hosts, ports, environment, volumes, healthchecks, depends_on,
and that the llmpulse commands parse with the real command line.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from llmpulse.config import load_settings
from llmpulse.dashboards.grafana import GRAFANA_JSON_DIR, provisioning_files

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
LLMPULSE = [n for n, s in SERVICES.items() if str(s.get("image", "")).startswith("llmpulse")]
KAFKA_NODES = ("kafka", "kafka-2", "kafka-3")


def _env(name: str) -> dict[str, str]:
    env = SERVICES[name].get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: _defaults(str(v)) for k, v in env.items()}


def _defaults(text: str) -> str:
    """Compose interpolation with the defaults the file gives (``${X:-d}`` → d)."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)


def _cmd(name: str) -> list[str]:
    c = SERVICES[name]["command"]
    return shlex.split(c) if isinstance(c, str) else [str(x) for x in c]


def _health_port(name: str) -> int:
    test = " ".join(SERVICES[name]["healthcheck"]["test"])
    m = re.search(r"(?:localhost|127\.0\.0\.1):(\d+)", test)
    assert m, f"{name}: healthcheck names no local port: {test}"
    return int(m.group(1))


def _depends(name: str) -> dict[str, Any]:
    dep = SERVICES[name].get("depends_on", {})
    return {d: {} for d in dep} if isinstance(dep, list) else dep


def test_the_expected_services_exist() -> None:
    assert set(SERVICES) == {"kafka", "kafka-2", "kafka-3", "clickhouse", "grafana", "worker",
                             "notifier", "retrain", "serving", "simulator", "otel-collector"}
    for node in KAFKA_NODES:
        assert SERVICES[node]["image"].startswith("apache/kafka:")
    assert SERVICES["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    assert SERVICES["grafana"]["image"].startswith("grafana/grafana:")


def test_depends_on_targets_exist_are_healthchecked_and_acyclic() -> None:
    for name in SERVICES:
        for dep, cond in _depends(name).items():
            assert dep in SERVICES, f"{name} depends on unknown {dep}"
            if cond.get("condition") == "service_healthy":
                assert "healthcheck" in SERVICES[dep], f"{name} waits for {dep}'s health: none"
            assert "demo" not in SERVICES[dep].get("profiles", []) or \
                "demo" in SERVICES[name].get("profiles", []), f"{name} needs demo-only {dep}"
    seen: dict[str, int] = {}

    def visit(n: str) -> None:
        assert seen.get(n) != 1, f"depends_on cycle through {n}"
        if seen.get(n) == 2:
            return
        seen[n] = 1
        for d in _depends(n):
            visit(d)
        seen[n] = 2

    for n in SERVICES:
        visit(n)
    for name in (*KAFKA_NODES, "clickhouse", "grafana", "worker", "serving"):
        assert "healthcheck" in SERVICES[name], name


def test_kafka_listeners_agree_with_what_llmpulse_connects_to() -> None:
    internal, voters, published = [], [], set()
    for node in KAFKA_NODES:
        env = _env(node)
        listeners = dict(re.findall(r"(\w+)://[^:,]*:(\d+)", env["KAFKA_LISTENERS"]))
        advertised = dict(re.findall(r"(\w+)://([^,]+)", env["KAFKA_ADVERTISED_LISTENERS"]))
        protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
        assert set(listeners) == set(protocols)
        assert set(advertised) <= set(listeners)
        assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
        assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
        assert advertised["PLAINTEXT"].split(":")[0] == SERVICES[node]["hostname"] == node
        voters.append(f"{env['KAFKA_NODE_ID']}@{node}:{listeners['CONTROLLER']}")
        assert "broker" in env["KAFKA_PROCESS_ROLES"] and "controller" in env["KAFKA_PROCESS_ROLES"]
        assert _health_port(node) == int(listeners["PLAINTEXT"])
        internal.append(advertised["PLAINTEXT"])
        host_port, container_port = SERVICES[node]["ports"][0].split(":")
        assert advertised["EXTERNAL"].split(":")[1] == host_port
        assert container_port == listeners["EXTERNAL"]
        published.add(host_port)
    assert len(published) == len(KAFKA_NODES)
    for node in KAFKA_NODES:
        assert _env(node)["KAFKA_CONTROLLER_QUORUM_VOTERS"] == ",".join(voters)
    bootstrap = ",".join(internal)
    for name in LLMPULSE:
        assert _env(name)["LLMPULSE_KAFKA"] == bootstrap, name
    sim = _cmd("simulator")
    assert sim[sim.index("--bootstrap") + 1] == bootstrap


def test_kafka_keeps_three_copies_and_acknowledges_two() -> None:
    """Replication 3, min.insync.replicas 2, one cluster id, a volume of each node's own:
    one node can be lost without losing an acknowledged write (docs/cluster.md)."""
    envs = [_env(node) for node in KAFKA_NODES]
    assert len({e["KAFKA_NODE_ID"] for e in envs}) == len(KAFKA_NODES)
    assert len({e["CLUSTER_ID"] for e in envs}) == 1
    import base64

    assert len(base64.urlsafe_b64decode(envs[0]["CLUSTER_ID"] + "==")) == 16  # a KRaft cluster id
    for e in envs:
        assert e["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
        assert e["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert e["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
        assert e["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "3"
        assert e["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2"
        assert e["KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"] == "false"
    volumes = [SERVICES[node]["volumes"][0].split(":")[0] for node in KAFKA_NODES]
    assert len(set(volumes)) == len(KAFKA_NODES) and set(volumes) <= set(COMPOSE["volumes"])
    for name in LLMPULSE:
        if "kafka" in _depends(name):  # waits for the whole cluster, not one node
            assert set(KAFKA_NODES) <= set(_depends(name)), name


def test_clickhouse_dsn_matches_the_server_and_grafana() -> None:
    ch = _env("clickhouse")
    for name in LLMPULSE:
        env = _env(name)
        dsn = urlparse(env["LLMPULSE_CLICKHOUSE"])
        assert (dsn.scheme, dsn.hostname, dsn.port) == ("http", "clickhouse", 8123), name
        assert (dsn.username, dsn.password) == (ch["CLICKHOUSE_USER"], ch["CLICKHOUSE_PASSWORD"])
        settings = load_settings(env=env, path=None)  # the real configuration check
        assert not settings.embedded_store and not settings.embedded_broker
    assert _health_port("clickhouse") == 8123
    ds = yaml.safe_load(provisioning_files()["datasources/llmpulse.yaml"])["datasources"][0]
    assert (ds["jsonData"]["host"], ds["jsonData"]["port"]) == ("clickhouse", 8123)
    assert ds["jsonData"]["username"] == ch["CLICKHOUSE_USER"]
    var = ds["secureJsonData"]["password"].lstrip("$")
    assert _env("grafana")[var] == ch["CLICKHOUSE_PASSWORD"]


def test_grafana_mounts_the_committed_provisioning() -> None:
    g = SERVICES["grafana"]
    assert "grafana-clickhouse-datasource" in _env("grafana")["GF_INSTALL_PLUGINS"]
    mounts = {}
    for v in g["volumes"]:
        src, dst = v.split(":")[:2]
        if src.startswith("./"):
            assert (ROOT / src).is_dir(), src
            mounts[dst] = ROOT / src
    assert "/etc/grafana/provisioning/datasources" in mounts
    provider = yaml.safe_load((mounts["/etc/grafana/provisioning/dashboards"] /
                               "llmpulse.yaml").read_text())["providers"][0]
    path = provider["options"]["path"]
    assert path == GRAFANA_JSON_DIR
    base = next(dst for dst in mounts if path.startswith(dst + "/"))
    host_dir = mounts[base] / path[len(base) + 1:]
    assert sorted(p.name for p in host_dir.glob("*.json")) == sorted(
        Path(rel).name for rel in provisioning_files() if rel.endswith(".json"))
    assert _health_port("grafana") == int(g["ports"][0].split(":")[1])


def test_workers_serve_http_where_their_healthcheck_looks(tmp_path: Path) -> None:
    w = SERVICES["worker"]
    assert _cmd("worker") == ["llmpulse", "up"]
    assert w["deploy"]["replicas"] == 2
    config = COMPOSE["configs"]["llmpulse-config"]["content"]
    path = tmp_path / "llmpulse.yaml"
    path.write_text(config)
    settings = load_settings(env=_env("worker"), path=path)
    assert settings.http.host == "0.0.0.0"
    assert settings.signals.stop == "save"  # a rolling restart keeps the windows open
    assert _health_port("worker") == settings.http.port
    assert str(settings.http.port) in [str(p) for p in w["expose"]]
    for name, svc in SERVICES.items():
        for c in svc.get("configs", []):
            assert c["source"] in COMPOSE["configs"], name
            if name in LLMPULSE:
                assert c["target"] == "/app/llmpulse.yaml"  # the CLI's default --config in WORKDIR
    assert re.search(r"^WORKDIR /app$", DOCKERFILE, re.M)


def test_serving_has_a_gpu_and_retrain_finds_it() -> None:
    s = SERVICES["serving"]
    [dev] = s["deploy"]["resources"]["reservations"]["devices"]
    assert dev["driver"] == "nvidia" and "gpu" in dev["capabilities"]
    cmd = _cmd("serving")
    port = int(cmd[cmd.index("--port") + 1])
    assert _health_port("serving") == port
    assert f"{port}:{port}" in s["ports"]
    serve = urlparse(_env("retrain")["LLMPULSE_SERVE_URL"])
    assert (serve.hostname, serve.port) == ("serving", port)
    assert "serving" in _depends("retrain")
    assert {v.split(":")[0] for v in s["volumes"]} & {v.split(":")[0] for v in
                                                      SERVICES["retrain"]["volumes"]}


def test_images_are_built_and_volumes_declared() -> None:
    stages = re.findall(r"^FROM \S+ AS (\w+)", DOCKERFILE, re.M)
    built = {}
    for name, svc in SERVICES.items():
        if "build" in svc:
            assert svc["build"]["target"] in stages, name
            built[svc["image"]] = svc["build"]["target"]
    for name in LLMPULSE:
        assert SERVICES[name]["image"] in built, f"{name} uses an image no service builds"
    assert built["llmpulse-gpu:latest"] == "gpu"
    declared = set(COMPOSE["volumes"])
    for name, svc in SERVICES.items():
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if not src.startswith(("./", "/")):
                assert src in declared, f"{name}: volume {src} not declared"


def test_dockerfile_is_multi_stage_and_runs_as_non_root() -> None:
    froms = re.findall(r"^FROM ", DOCKERFILE, re.M)
    assert len(froms) >= 3
    for stage in ("runtime", "gpu"):
        body = DOCKERFILE.split(f" AS {stage}\n", 1)[1].split("\nFROM ", 1)[0]
        user = re.findall(r"^USER (\S+)", body, re.M)
        assert user and user[-1] not in ("root", "0"), stage
    assert "useradd" in DOCKERFILE
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignore and ".git" in ignore


def test_simulator_is_a_demo_profile_and_its_command_parses() -> None:
    from llmpulse.cli import build_parser

    assert SERVICES["simulator"]["profiles"] == ["demo"]
    assert SERVICES["otel-collector"]["profiles"] == ["otel"]
    assert all("profiles" not in s for n, s in SERVICES.items()
               if n not in ("simulator", "otel-collector"))
    parser = build_parser()
    for name in LLMPULSE:
        cmd = _cmd(name)
        if cmd[0] == "llmpulse":
            args = parser.parse_args(cmd[1:])
            assert args.command == cmd[1]
    args = parser.parse_args(_cmd("simulator")[1:])
    assert [i.kind for i in args.incident] == ["latency_spike", "prompt_drift",
                                              "segment_quality_drop", "hallucination_burst"]


@pytest.mark.parametrize("name", ["notifier", "retrain", "serving"])
def test_python_entry_points(name: str) -> None:
    cmd = _cmd(name)
    assert cmd[:2] == ["python", "-m"]
    module = cmd[2]
    spec = importlib.util.find_spec(module)
    main = importlib.util.find_spec(module + ".__main__") if spec and spec.submodule_search_locations \
        else spec
    if spec is None or main is None or (
            main is spec and "__main__" not in Path(str(spec.origin)).read_text()):
        pytest.skip(f"{name}: entry point `python -m {module}` is not in the tree yet")
    assert main is not None


def test_public_listeners_get_a_tokens_file_and_the_retrain_worker_its_token() -> None:
    """`up` and the model server refuse a 0.0.0.0 bind without tokens: compose must mount them."""
    declared = COMPOSE["secrets"]
    for name in ("worker", "serving", "retrain"):
        svc = SERVICES[name]
        tokens = _env(name)["LLMPULSE_TOKENS_FILE"]
        assert tokens == "/run/secrets/llmpulse_tokens", name
        assert "llmpulse_tokens" in svc["secrets"], name
    assert _env("retrain")["LLMPULSE_TOKEN_FILE"] == "/run/secrets/llmpulse_retrain_token"
    assert "llmpulse_retrain_token" in SERVICES["retrain"]["secrets"]
    for svc in SERVICES.values():
        for s in svc.get("secrets", []):
            assert s in declared
            assert not Path(declared[s]["file"]).is_absolute()
    assert "secrets/" in (ROOT / ".gitignore").read_text().split()


SYSTEM_LOGS = ("query_log", "query_thread_log", "query_views_log", "part_log", "trace_log",
               "text_log", "metric_log", "asynchronous_metric_log", "session_log",
               "opentelemetry_span_log", "processors_profile_log", "asynchronous_insert_log",
               "backup_log", "error_log", "blob_storage_log", "s3queue_log", "crash_log")


def test_clickhouse_system_logs_are_off_or_expire() -> None:
    import xml.etree.ElementTree as ET

    [mount] = SERVICES["clickhouse"]["configs"]
    assert mount["target"].startswith("/etc/clickhouse-server/config.d/")
    assert mount["target"].endswith(".xml")
    root = ET.fromstring(COMPOSE["configs"][mount["source"]]["content"])
    assert root.tag == "clickhouse"
    settings = {child.tag: child for child in root}
    for name in SYSTEM_LOGS:
        el = settings.get(name)
        assert el is not None, f"{name}: neither removed nor given a TTL"
        if el.get("remove") == "1":
            continue
        ttl = el.findtext("ttl") or ""
        m = re.fullmatch(r"event_date \+ INTERVAL (\d+) DAY DELETE", ttl.strip())
        assert m and 0 < int(m.group(1)) <= 30, f"{name}: ttl {ttl!r}"


def test_the_collector_exports_to_the_topic_and_broker_the_workers_read() -> None:
    from llmpulse.streams.otlp import TOPIC_OTLP_SPANS

    config = yaml.safe_load(COMPOSE["configs"]["otelcol-config"]["content"])
    kafka = config["exporters"]["kafka"]
    assert kafka["topic"] == TOPIC_OTLP_SPANS
    assert kafka["encoding"] in ("otlp_proto", "otlp_json")
    assert kafka["brokers"] == SERVICES["worker"]["environment"]["LLMPULSE_KAFKA"].split(",")
    pipeline = config["service"]["pipelines"]["traces"]
    assert pipeline["exporters"] == ["kafka"] and pipeline["receivers"] == ["otlp"]
    assert set(pipeline["processors"]) <= set(config["processors"])
    assert "worker" in _depends("otel-collector")
