"""Where model steps run: the Dagster pool and the op tags of the assets that need a GPU.

The assets that run models (completions, response features, reward scores, judgements, policy
log-probs, training) are in the pool `gpu` and carry `GPU_TAGS`. A deployment caps the pool at
its GPU count (`dagster instance concurrency set gpu 1`, or `concurrency.pools.defaultLimit` in
the Helm values). The tags depend on where the code location runs, read once when the
definitions load, so switching needs no code change:

| variable | values | meaning |
|---|---|---|
| `AUF_DEPLOYMENT` | `local` (default), `k8s` | `k8s`: one pod per step (`k8s_job_executor`) |
| `AUF_K8S_GPUS_PER_STEP` | integer >= 0, default 1 | `nvidia.com/gpu` limit of a GPU step's pod |
| `AUF_K8S_GPU_NODE_SELECTOR` | JSON object, optional | node selector of GPU step pods |
| `AUF_K8S_GPU_TOLERATIONS` | JSON list, optional | tolerations of GPU step pods |

On `k8s` the GPU steps get a `dagster-k8s/config` tag with those settings (`0` GPUs: no GPU
request); the other steps get none (their pods take the run launcher's defaults). On `local`
there are no tags: the pool alone keeps model steps apart. A bad value stops the definitions from
loading with a message that names the variable: a deployment that silently dropped its GPU
requests would be worse. See docs/deployment.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import dagster as dg

GPU_POOL = "gpu"

DEPLOYMENT_ENV = "AUF_DEPLOYMENT"
DEPLOYMENTS = ("local", "k8s")
GPUS_PER_STEP_ENV = "AUF_K8S_GPUS_PER_STEP"
GPU_NODE_SELECTOR_ENV = "AUF_K8S_GPU_NODE_SELECTOR"
GPU_TOLERATIONS_ENV = "AUF_K8S_GPU_TOLERATIONS"

GPU_RESOURCE = "nvidia.com/gpu"
K8S_CONFIG_TAG = "dagster-k8s/config"  # what dagster-k8s reads on an op (dagster_k8s.job)


class DeploymentSettingError(ValueError):
    """An `AUF_DEPLOYMENT`/`AUF_K8S_*` variable with a value that cannot be used."""


def deployment(env: Mapping[str, str] | None = None) -> str:
    """`local` or `k8s`, from `AUF_DEPLOYMENT` (empty or unset: `local`)."""
    env = os.environ if env is None else env
    value = (env.get(DEPLOYMENT_ENV) or "local").strip().lower()
    if value not in DEPLOYMENTS:
        raw = env.get(DEPLOYMENT_ENV)
        raise DeploymentSettingError(
            f"{DEPLOYMENT_ENV}={raw!r}: expected one of {', '.join(DEPLOYMENTS)}"
        )
    return value


def _json_setting(env: Mapping[str, str], name: str, kind: type) -> object | None:
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DeploymentSettingError(f"{name}: not valid JSON ({exc})") from None
    if not isinstance(value, kind):
        raise DeploymentSettingError(f"{name}: expected a JSON {kind.__name__}, got {raw!r}")
    return value


def gpu_k8s_config(env: Mapping[str, str] | None = None) -> dict:
    """The `dagster-k8s/config` of a GPU step's pod (an empty dict when it asks for nothing)."""
    env = os.environ if env is None else env
    raw = (env.get(GPUS_PER_STEP_ENV) or "1").strip()
    try:
        gpus = int(raw)
    except ValueError:
        gpus = -1
    if gpus < 0:
        raise DeploymentSettingError(f"{GPUS_PER_STEP_ENV}={raw!r}: expected an integer >= 0")
    config: dict = {}
    if gpus:
        config["container_config"] = {"resources": {"limits": {GPU_RESOURCE: str(gpus)}}}
    pod_spec: dict = {}
    selector = _json_setting(env, GPU_NODE_SELECTOR_ENV, dict)
    if selector:
        if not all(isinstance(v, str) for v in selector.values()):
            raise DeploymentSettingError(f"{GPU_NODE_SELECTOR_ENV}: values must be strings")
        pod_spec["node_selector"] = selector
    tolerations = _json_setting(env, GPU_TOLERATIONS_ENV, list)
    if tolerations:
        if not all(isinstance(t, dict) for t in tolerations):
            raise DeploymentSettingError(f"{GPU_TOLERATIONS_ENV}: expected a list of objects")
        pod_spec["tolerations"] = tolerations
    if pod_spec:
        config["pod_spec_config"] = pod_spec
    return config


def gpu_tags(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The op tags of the assets in the `gpu` pool, for the deployment `env` selects."""
    env = os.environ if env is None else env
    tags: dict[str, str] = {}
    if deployment(env) == "k8s":
        config = gpu_k8s_config(env)
        if config:
            # A JSON string: what dagster-k8s parses, and a tag value Dagster keeps as it is.
            tags[K8S_CONFIG_TAG] = json.dumps(config, sort_keys=True)
    return tags


def default_executor(env: Mapping[str, str] | None = None) -> dg.ExecutorDefinition | None:
    """The code location's default executor: None (Dagster's own) locally, one pod a step on k8s.

    The k8s executor takes no image or environment of its own: the step pods get the code
    location's image and the run launcher's settings (env, config maps, secrets, volumes) from
    the Helm release. dagster_k8s is imported only here, so a local install does not need it.
    """
    if deployment(env) != "k8s":
        return None
    try:
        from dagster_k8s import k8s_job_executor
    except ImportError as exc:
        raise ImportError(
            f"{DEPLOYMENT_ENV}=k8s needs dagster-k8s: pip install '.[k8s]' ({exc})"
        ) from exc
    return k8s_job_executor


GPU_TAGS = gpu_tags()
