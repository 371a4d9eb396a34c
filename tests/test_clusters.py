"""The cluster files in clusters/ are valid for the tools that read them: `ray up`, kubectl, sbatch."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTERS = Path(__file__).resolve().parent.parent / "clusters"
RAY_UP = ("local.yaml", "aws-gpu.yaml", "gcp-gpu.yaml")
SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


@pytest.mark.parametrize("name", RAY_UP)
def test_ray_up_config_validates_against_the_schema_shipped_with_ray(name: str) -> None:
    config = yaml.safe_load((CLUSTERS / name).read_text())
    jsonschema.validate(config, SCHEMA)  # the file as written
    validate_config(prepare_config(config))  # and as `ray up` sees it, provider defaults filled in
    assert any("pip install" in c or "make setup" in c for c in config["setup_commands"]), "installs this project"


def test_a_misspelled_key_fails_the_schema() -> None:
    """The check above can fail: the schema forbids keys it does not know."""
    config = yaml.safe_load((CLUSTERS / "aws-gpu.yaml").read_text())
    config["available_node_types"]["gpu-1x"]["max_worker"] = 4
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        jsonschema.validate(config, SCHEMA)


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "gcp-gpu.yaml"])
def test_cloud_clusters_autoscale_gpu_workers(name: str) -> None:
    config = yaml.safe_load((CLUSTERS / name).read_text())
    workers = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    assert workers and all(v["min_workers"] == 0 < v["max_workers"] for v in workers.values())
    assert config["docker"]["image"].endswith("py311-gpu") and ray.__version__ in config["docker"]["image"]


def kubernetes_objects(name: str) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all((CLUSTERS / name).read_text())}


def gpu_limits(spec: dict) -> list[str]:
    return [
        container["resources"]["limits"].get("nvidia.com/gpu")
        for group in spec["workerGroupSpecs"]
        for container in group["template"]["spec"]["containers"]
    ]


def test_kuberay_raycluster_has_gpu_workers_and_a_results_volume() -> None:
    objects = kubernetes_objects("kuberay-raycluster.yaml")
    cluster = objects["RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1"
    assert cluster["spec"]["rayVersion"] == ray.__version__
    assert gpu_limits(cluster["spec"]) == ["1"]
    claim = cluster["spec"]["headGroupSpec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert objects["PersistentVolumeClaim"]["metadata"]["name"] == claim


def test_kuberay_rayjob_runs_the_spec_of_its_configmap(tmp_path: Path) -> None:
    from harness.spec import load_spec

    objects = kubernetes_objects("kuberay-rayjob.yaml")
    config_map, job = objects["ConfigMap"], objects["RayJob"]
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    [volume] = [v for v in head["volumes"] if v.get("configMap", {}).get("name") == config_map["metadata"]["name"]]
    [mount] = [m for m in head["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    [spec_name] = config_map["data"]
    assert f" {mount['mountPath']}/{spec_name} " in job["spec"]["entrypoint"]  # the entrypoint runs that file
    (tmp_path / spec_name).write_text(config_map["data"][spec_name])
    assert load_spec(tmp_path / spec_name).name == "quickstart"


def test_the_docker_build_context_leaves_out_environments_results_and_history() -> None:
    ignored = (CLUSTERS.parent / ".dockerignore").read_text().split()
    assert {".venv", "results", "site", "data", ".git", "**/__pycache__", ".pytest_cache"} <= set(ignored)


def test_kuberay_rayjob_runs_harness_on_its_own_gpu_cluster() -> None:
    job = kubernetes_objects("kuberay-rayjob.yaml")["RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    assert job["spec"]["entrypoint"].startswith("harness run ") and "--address auto" in job["spec"]["entrypoint"]
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == ray.__version__
    assert gpu_limits(job["spec"]["rayClusterSpec"]) == ["1"]


def test_slurm_script_is_valid_bash_that_starts_ray_and_runs_the_harness() -> None:
    script = CLUSTERS / "slurm.sbatch"
    subprocess.run([shutil.which("bash") or "bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert text.startswith("#!/bin/bash\n") and "#SBATCH --nodes=" in text
    assert "ray start --head" in text and 'ray start --address="$head_ip:$PORT"' in text
    assert 'harness run "$SPEC" --results "$RESULTS" --address "$head_ip:$PORT"' in text


@pytest.mark.parametrize("name", RAY_UP)
def test_ray_up_clusters_refuse_callers_without_the_token_and_keep_the_dashboard_on_loopback(name: str) -> None:
    config = yaml.safe_load((CLUSTERS / name).read_text())
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all("export RAY_AUTH_MODE=token;" in c for c in starts)
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token", "every node gets the token"
    assert not any("dashboard-host" in c for c in starts), "the job API is reached through `ray dashboard` only"


def test_slurm_jobs_use_a_fresh_token_in_the_environment() -> None:
    text = (CLUSTERS / "slurm.sbatch").read_text()
    assert "export RAY_AUTH_MODE=token\n" in text and "token_hex(32)" in text and "export RAY_AUTH_TOKEN\n" in text
    assert text.index("export RAY_AUTH_TOKEN") < text.index("ray start --head")
