"""The Kubernetes path (deploy/, auf_assets/placement.py): tags, executor, Helm values, image.

Nothing here needs a cluster, a network or Docker. The definitions are loaded with
AUF_DEPLOYMENT=k8s in a subprocess (the tags are read when the modules load); the parts that need
dagster-k8s (the `k8s` extra) skip without it. `helm template` runs only where `helm` is
installed and AUF_HELM_CHART names a local copy of the dagster/dagster chart.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from auf_assets import placement
from auf_assets.jobs import ROUND_CHAIN_TAGS
from auf_assets.placement import GPU_POOL, GPU_RESOURCE, K8S_CONFIG_TAG, DeploymentSettingError
from resources.home import CHAIN_TAG_LIMIT

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
VALUES = DEPLOY / "helm" / "values.yaml"
PVC = DEPLOY / "helm" / "auf-home-pvc.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"

try:
    import dagster_k8s  # noqa: F401

    HAS_DAGSTER_K8S = True
except ImportError:
    HAS_DAGSTER_K8S = False
needs_dagster_k8s = pytest.mark.skipif(
    not HAS_DAGSTER_K8S, reason="dagster-k8s is not installed (pip install '.[k8s]')"
)

# Assets that run models and must ask for a GPU on k8s (at least these; the rule is the pool).
MODEL_ASSETS = {"completions", "response_features", "reward_scores", "judgements"}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUF_DEPLOYMENT", "AUF_K8S"))}
    return {**env, **extra}


def _run(args: list[str], env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


# -- placement: the tags and the executor a deployment setting selects ---------------------------


def test_local_steps_have_no_tags_and_the_executor_is_dagsters():
    assert placement.gpu_tags({}) == {}
    assert placement.gpu_tags({"AUF_DEPLOYMENT": "local", "AUF_K8S_GPUS_PER_STEP": "4"}) == {}
    assert placement.default_executor({}) is None
    assert placement.deployment({"AUF_DEPLOYMENT": " K8S "}) == "k8s"


def test_k8s_tags_ask_for_gpus_with_optional_placement():
    tags = placement.gpu_tags({"AUF_DEPLOYMENT": "k8s"})
    assert json.loads(tags[K8S_CONFIG_TAG]) == {
        "container_config": {"resources": {"limits": {GPU_RESOURCE: "1"}}}
    }
    env = {
        "AUF_DEPLOYMENT": "k8s",
        "AUF_K8S_GPUS_PER_STEP": "2",
        "AUF_K8S_GPU_NODE_SELECTOR": '{"nvidia.com/gpu.present": "true"}',
        "AUF_K8S_GPU_TOLERATIONS": '[{"key": "nvidia.com/gpu", "operator": "Exists"}]',
    }
    config = json.loads(placement.gpu_tags(env)[K8S_CONFIG_TAG])
    assert config["container_config"]["resources"]["limits"] == {GPU_RESOURCE: "2"}
    assert config["pod_spec_config"] == {
        "node_selector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
    }
    # 0 turns GPU requests off; a node selector alone still applies.
    assert placement.gpu_tags({"AUF_DEPLOYMENT": "k8s", "AUF_K8S_GPUS_PER_STEP": "0"}) == {}
    only_selector = placement.gpu_tags({**env, "AUF_K8S_GPUS_PER_STEP": "0"})
    assert "container_config" not in json.loads(only_selector[K8S_CONFIG_TAG])


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"AUF_DEPLOYMENT": "kubernetes"}, "AUF_DEPLOYMENT"),
        ({"AUF_DEPLOYMENT": "k8s", "AUF_K8S_GPUS_PER_STEP": "one"}, "AUF_K8S_GPUS_PER_STEP"),
        ({"AUF_DEPLOYMENT": "k8s", "AUF_K8S_GPUS_PER_STEP": "-1"}, "AUF_K8S_GPUS_PER_STEP"),
        ({"AUF_DEPLOYMENT": "k8s", "AUF_K8S_GPU_NODE_SELECTOR": "{bad"}, "NODE_SELECTOR"),
        ({"AUF_DEPLOYMENT": "k8s", "AUF_K8S_GPU_NODE_SELECTOR": '["a"]'}, "NODE_SELECTOR"),
        ({"AUF_DEPLOYMENT": "k8s", "AUF_K8S_GPU_NODE_SELECTOR": '{"a": 1}'}, "NODE_SELECTOR"),
        ({"AUF_DEPLOYMENT": "k8s", "AUF_K8S_GPU_TOLERATIONS": '{"key": "x"}'}, "TOLERATIONS"),
        ({"AUF_DEPLOYMENT": "k8s", "AUF_K8S_GPU_TOLERATIONS": '["x"]'}, "TOLERATIONS"),
    ],
)
def test_a_bad_setting_stops_loading_with_the_variable_named(env, variable):
    with pytest.raises(DeploymentSettingError, match=variable):
        placement.gpu_tags(env)


def test_the_local_definitions_keep_dagsters_default_executor():
    if placement.deployment() != "local":
        pytest.skip("this shell sets AUF_DEPLOYMENT")
    from auf_assets import definitions

    job = definitions.defs.resolve_job_def("active_round")
    assert job.executor_def is dg.multi_or_in_process_executor


# What the subprocess prints: each asset's pool and op tags, as the modules built them.
_COLLECT = """
import json, sys
import dagster as dg
from auf_assets import bench, labels, policy_loop, prompts, release, round, training
out = {}
for module in (bench, labels, policy_loop, prompts, release, round, training):
    for value in vars(module).values():
        if isinstance(value, dg.AssetsDefinition) and value.is_executable:
            for key in value.keys:
                out[key.to_user_string()] = {"pool": value.node_def.pool,
                                             "tags": dict(value.node_def.tags)}
print(json.dumps(out))
"""


@pytest.mark.process
def test_on_k8s_the_gpu_pool_assets_ask_their_pods_for_a_gpu_and_no_other_does():
    proc = _run([sys.executable, "-c", _COLLECT], _env(AUF_DEPLOYMENT="k8s"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assets = json.loads(proc.stdout.strip().splitlines()[-1])
    gpu = {name for name, a in assets.items() if a["pool"] == GPU_POOL}
    assert gpu >= MODEL_ASSETS
    assert gpu != set(assets), "some assets must be outside the gpu pool"
    for name, a in assets.items():
        if name in gpu:
            config = json.loads(a["tags"][K8S_CONFIG_TAG])
            assert config["container_config"]["resources"]["limits"] == {GPU_RESOURCE: "1"}, name
        else:
            assert K8S_CONFIG_TAG not in a["tags"], name


_K8S_DEFS = """
import json
from types import SimpleNamespace
from auf_assets import definitions
from auf_assets.placement import GPU_TAGS
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import construct_dagster_k8s_job, get_user_defined_k8s_config

defs = definitions.defs
executors = {defs.resolve_job_def(j).executor_def.name
             for j in ("active_round", "pair_selection", "labelled_round", "policy_round")}
# A GPU step's pod as the k8s executor builds it: the run's container context (the code
# location's volumes), then the step's dagster-k8s/config tag.
base = K8sContainerContext(
    namespace="auf",
    volumes=[{"name": "auf-home", "persistentVolumeClaim": {"claimName": "auf-home"}}],
    volume_mounts=[{"name": "auf-home", "mountPath": "/data/auf"}],
)
ctx = base.merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(GPU_TAGS)))
launcher = SimpleNamespace(job_image=None, dagster_home="/opt/dagster/dagster_home",
                           instance_config_map="dagster-instance", postgres_password_secret="pg")
job = construct_dagster_k8s_job(
    job_config=ctx.get_k8s_job_config("registry/auf:1", launcher),
    args=["dagster", "api", "execute_step"], job_name="dagster-step-x", pod_name="dagster-step-x",
    component="step_worker", user_defined_k8s_config=ctx.run_k8s_config, labels={},
)
pod = job.spec.template.spec
print(json.dumps({
    "executors": sorted(executors),
    "limits": pod.containers[0].resources.limits,
    "mounts": [m.mount_path for m in pod.containers[0].volume_mounts],
    "tolerations": [t.key for t in pod.tolerations or []],
}))
"""


@pytest.mark.process
@needs_dagster_k8s
def test_on_k8s_the_definitions_use_one_pod_per_step_and_gpu_steps_get_gpus():
    env = _env(
        AUF_DEPLOYMENT="k8s",
        AUF_K8S_GPU_TOLERATIONS='[{"key": "nvidia.com/gpu", "operator": "Exists"}]',
    )
    proc = _run([sys.executable, "-c", _K8S_DEFS], env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["executors"] == ["k8s"]
    assert out["limits"] == {GPU_RESOURCE: "1"}
    assert out["mounts"] == ["/data/auf"]
    assert out["tolerations"] == ["nvidia.com/gpu"]


@pytest.mark.process
@needs_dagster_k8s
def test_dagster_definitions_validate_passes_on_k8s(tmp_path):
    dagster = Path(sys.executable).with_name("dagster")
    cmd = [str(dagster)] if dagster.exists() else [sys.executable, "-m", "dagster"]
    env = _env(AUF_DEPLOYMENT="k8s", DAGSTER_HOME=str(tmp_path))
    proc = _run([*cmd, "definitions", "validate", "-m", "auf_assets.definitions"], env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "Validation successful" in proc.stdout + proc.stderr


# -- the Helm values -------------------------------------------------------------------------------

# The dagster/dagster chart's top-level keys (its values.schema.json and values.yaml). The chart
# lets unknown top-level keys through, so a typo there would be ignored silently.
_CHART_KEYS = """global nameOverride fullnameOverride rbacEnabled imagePullSecrets dagsterWebserver
dagster-user-deployments postgresql generatePostgresqlPasswordSecret generateCeleryConfigSecret
rabbitmq redis flower ingress computeLogManager scheduler runLauncher pythonLogs dagsterDaemon
busybox migrate telemetry serviceAccount retention concurrency additionalInstanceConfig"""
CHART_TOP_LEVEL = set(_CHART_KEYS.split())


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load(VALUES.read_text())


@pytest.fixture(scope="module")
def code_location(values) -> dict:
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    return deployment


def test_the_values_use_only_chart_keys_at_the_top(values):
    assert set(values) <= CHART_TOP_LEVEL, set(values) - CHART_TOP_LEVEL


def test_the_code_location_runs_our_module_on_k8s_with_the_store_on_a_shared_volume(
    values, code_location
):
    assert values["dagster-user-deployments"]["enabled"] is True
    args = code_location.get("codeServerArgs") or code_location.get("dagsterApiGrpcArgs")
    assert args == ["-m", "auf_assets.definitions"]
    assert code_location["port"] == 4000
    assert code_location["includeConfigInLaunchedRuns"] == {"enabled": True}
    env = code_location["env"]
    assert all(isinstance(v, str) for v in env.values()), "env values must be strings"
    assert env["AUF_DEPLOYMENT"] == "k8s"
    # The settings in the values are ones placement accepts.
    assert K8S_CONFIG_TAG in placement.gpu_tags(env)
    (mount,) = code_location["volumeMounts"]
    (volume,) = code_location["volumes"]
    assert mount["name"] == volume["name"]
    assert mount["mountPath"] == env["AUF_HOME"]
    pvc = yaml.safe_load(PVC.read_text())
    assert pvc["kind"] == "PersistentVolumeClaim"
    assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert values["global"]["dagsterHome"]


def test_runs_are_k8s_jobs_on_postgres_with_the_daemon_on(values):
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert "k8sRunLauncher" in values["runLauncher"]["config"]
    assert values["postgresql"]["enabled"] is True
    assert values["generatePostgresqlPasswordSecret"] is True
    # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; dagster-postgres brings psycopg2.
    scheme = values["postgresql"]["postgresqlScheme"]
    assert scheme == "postgresql+psycopg2"
    if importlib.util.find_spec("dagster_postgres"):
        import sqlalchemy

        sqlalchemy.create_engine(f"{scheme}://user@localhost/db").dispose()  # no connection
    daemon = values["dagsterDaemon"]
    assert daemon["enabled"] is True
    assert daemon["runCoordinator"] == {"enabled": True, "type": "QueuedRunCoordinator"}


def test_the_run_queue_and_the_gpu_pool_match_the_code(values):
    concurrency = values["concurrency"]
    assert concurrency["enabled"] is True
    assert set(concurrency) <= {"enabled", "pools", "runs"}
    assert set(concurrency["pools"]) <= {"defaultLimit", "granularity", "opGranularityRunBuffer"}
    assert set(concurrency["runs"]) <= {"maxConcurrentRuns", "tagConcurrencyLimits"}
    (chain_limit,) = concurrency["runs"]["tagConcurrencyLimits"]
    assert chain_limit == CHAIN_TAG_LIMIT
    assert {chain_limit["key"]: chain_limit["value"]} == ROUND_CHAIN_TAGS


def _instance_yaml(values: dict) -> dict:
    """The `concurrency` and `run_coordinator` of the dagster.yaml the chart writes from values
    (its helpers/instance/_concurrency.tpl: the same settings, in snake_case)."""
    pools = values["concurrency"]["pools"]
    runs = values["concurrency"]["runs"]
    snake = {"defaultLimit": "default_limit", "opGranularityRunBuffer": "op_granularity_run_buffer"}
    return {
        "run_coordinator": {
            "module": "dagster._core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": {},
        },
        "concurrency": {
            "pools": {snake.get(k, k): v for k, v in pools.items()},
            "runs": {"tag_concurrency_limits": runs["tagConcurrencyLimits"]},
        },
        "telemetry": {"enabled": False},
    }


def test_dagster_accepts_the_instance_config_the_values_make(values, tmp_path):
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(_instance_yaml(values)))
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        config = instance.get_concurrency_config()
        pools = values["concurrency"]["pools"]
        assert config.pool_config.default_pool_limit == pools["defaultLimit"]
        assert config.pool_config.pool_granularity.value == "op"
        assert CHAIN_TAG_LIMIT in config.run_queue_config.tag_concurrency_limits


@pytest.mark.skipif(
    not (shutil.which("helm") and os.environ.get("AUF_HELM_CHART")),
    reason="needs `helm` and AUF_HELM_CHART (a local dagster/dagster chart, folder or .tgz)",
)
@pytest.mark.process
def test_helm_template_renders_the_values(values):
    proc = _run(
        ["helm", "template", "auf", os.environ["AUF_HELM_CHART"], "-f", str(VALUES)], os.environ
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    (instance,) = [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-instance")
    ]
    rendered = yaml.safe_load(instance["data"]["dagster.yaml"])
    assert rendered["concurrency"]["runs"]["tag_concurrency_limits"] == [CHAIN_TAG_LIMIT]
    assert rendered["concurrency"]["pools"]["default_limit"] == 1
    assert rendered["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert rendered["run_storage"]["module"] == "dagster_postgres.run_storage"


# -- the image and the docs ------------------------------------------------------------------------


def test_the_dockerfile_serves_the_code_location_and_pins_torch_like_constraints():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:\$\{PYTHON_VERSION\}-slim$", text, re.M)
    assert re.search(r"^ARG PYTHON_VERSION=3\.11$", text, re.M)
    assert not re.search(r"^ENTRYPOINT", text, re.M), "the chart passes its own args"
    assert re.search(r"^EXPOSE 4000$", text, re.M)
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    assert cmd[:3] == ["dagster", "code-server", "start"] and "auf_assets.definitions" in cmd
    (torch_pin,) = [
        line
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if line.startswith("torch==")
    ]
    assert torch_pin in text
    assert "'.[k8s]'" in text and "'.[k8s,gpu]'" in text


def test_the_docs_name_every_deployment_setting():
    docs = (REPO / "docs" / "deployment.md").read_text()
    for name in (
        placement.DEPLOYMENT_ENV,
        placement.GPUS_PER_STEP_ENV,
        placement.GPU_NODE_SELECTOR_ENV,
        placement.GPU_TOLERATIONS_ENV,
    ):
        assert name in docs
