"""Deployment profiles: the same Definitions locally and on Kubernetes (dagster-k8s), GPU requests from the recipe,
the Postgres instance config and an object-store DVC remote (a local S3 endpoint, moto). The multi-GPU launchers'
refusals on a machine without the GPUs: tests/common/test_multi_gpu.py."""

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from tests_helpers import ROOT

K8S_DIR = ROOT / "resources" / "k8s"


def _load_definitions(profile: str, tmp_path: Path) -> dict:
    """The code location loaded in a fresh interpreter with TWINLOOP_DEPLOYMENT=profile."""
    script = ("import json; from assets.definitions import defs; "
              "print(json.dumps({'executor': getattr(defs.executor, 'name', None), "
              "'resources': {k: type(v).__name__ for k, v in defs.resources.items()}, "
              "'dvc_remote': getattr(defs.resources['dvc'].remote_url, 'env_var_name', defs.resources['dvc'].remote_url), 'root': defs.resources['paths'].root}))")
    env = {**os.environ, "TWINLOOP_DEPLOYMENT": profile, "DAGSTER_HOME": str(tmp_path)}
    env.pop("TWINLOOP_ROOT", None)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("profile", ["local", "k8s"])
def test_definitions_validate_in_both_profiles(profile, tmp_path):
    env = {**os.environ, "TWINLOOP_DEPLOYMENT": profile, "DAGSTER_HOME": str(tmp_path)}
    out = subprocess.run([str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-m",
                          "assets.definitions"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "passed validation" in out.stdout + out.stderr, out.stderr[-3000:]
    loaded = _load_definitions(profile, tmp_path)
    assert set(loaded["resources"]) == {"paths", "dvc", "compute", "robot", "pipes_subprocess"}
    if profile == "k8s":
        assert loaded["executor"] == "twinloop_k8s_job_executor"
        assert loaded["root"] == "/project" and loaded["dvc_remote"] == "TWINLOOP_DVC_REMOTE"  # read at run time
    else:
        assert loaded["executor"] in (None, "multi_or_in_process_executor")
        assert loaded["dvc_remote"] == ""


def test_unknown_profile_is_a_clear_error(monkeypatch):
    from resources.k8s import profile

    monkeypatch.setenv("TWINLOOP_DEPLOYMENT", "swarm")
    with pytest.raises(ValueError, match="expected 'local' or 'k8s'"):
        profile()


def test_gpu_assets_request_the_recipes_gpus_in_their_step_job(tmp_path, monkeypatch):
    """The Kubernetes Job dagster-k8s builds for a step: the executor's pod settings merged with the asset's op
    tags, exactly as its step handler merges them."""
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import UserDefinedDagsterK8sConfig, construct_dagster_k8s_job, get_user_defined_k8s_config

    from assets import ALL_ASSETS
    from resources.k8s import GPU_POOL, GPU_STAGES, executor_config, gpu_op_tags

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["bc"]["gpus"], params["rl"]["gpus"] = 2, 4
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("TWINLOOP_ROOT", str(tmp_path))
    monkeypatch.setenv("TWINLOOP_GPU_NODE_SELECTOR", "cloud.google.com/gke-accelerator=nvidia-h100-80gb")

    cfg = executor_config()
    executor_context = K8sContainerContext(
        env_secrets=cfg["env_secrets"], env_config_maps=cfg["env_config_maps"], env_vars=cfg["env_vars"], volume_mounts=cfg["volume_mounts"],
        volumes=cfg["volumes"], run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(cfg["step_k8s_config"]))
    launcher = types.SimpleNamespace(job_image=None, dagster_home="/opt/dagster/dagster_home",
                                     instance_config_map="twinloop-dagster-instance", postgres_password_secret=None)

    def step_job(tags: dict) -> dict:
        tags = {k: json.dumps(v) for k, v in tags.items()}  # how Dagster stores op tags (str -> str)
        context = executor_context.merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(tags)))
        job = construct_dagster_k8s_job(context.get_k8s_job_config("twinloop:test", launcher), ["dagster"], "step",
                                        user_defined_k8s_config=context.run_k8s_config, component="step_worker")
        return job.to_dict()

    expected = {"bc_policy": 2, "gaussian_splat": 1, "rl_policy": 4}
    for asset, gpus in expected.items():
        pod = step_job(gpu_op_tags(asset))["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["resources"]["limits"] == {"nvidia.com/gpu": str(gpus)}
        assert container["resources"]["requests"]["nvidia.com/gpu"] == str(gpus)
        assert pod["node_selector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
        assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
        assert {"name": "project", "mount_path": str(tmp_path)}.items() <= container["volume_mounts"][0].items()  # $TWINLOOP_ROOT
        assert pod["volumes"][0]["persistent_volume_claim"]["claim_name"] == "twinloop-project"
        assert {e["name"] for e in container["env"]} >= {"TWINLOOP_ROOT", "TWINLOOP_DEPLOYMENT"}
        sources = {(k, v["name"]) for e in container["env_from"] for k, v in e.items() if v}
        assert sources == {("config_map_ref", "twinloop-settings"), ("secret_ref", "twinloop-object-store")}
    cpu_pod = step_job({})["spec"]["template"]["spec"]  # a CPU stage: the executor's requests, no GPU, any node
    assert "nvidia.com/gpu" not in (cpu_pod["containers"][0]["resources"].get("limits") or {})
    assert cpu_pod["containers"][0]["resources"]["requests"] == {"cpu": "2", "memory": "8Gi"}
    assert not cpu_pod.get("node_selector")

    # the assets carry these tags and the gpu pool; the CPU stages carry neither
    by_name = {a.key.to_user_string(): a for a in ALL_ASSETS}
    for name, node in by_name.items():
        op = node.op
        if name in GPU_STAGES:
            assert node.op.pool == GPU_POOL, name
            requested = json.loads(op.tags["dagster-k8s/config"])["container_config"]["resources"]["limits"]
            assert requested == {"nvidia.com/gpu": "1"}, name  # the repository's recipe asks for one GPU
        else:
            assert "dagster-k8s/config" not in op.tags, name


def test_k8s_instance_config_matches_dagsters_schemas():
    from dagster._config import validate_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster_k8s import K8sRunLauncher
    from dagster_postgres import DagsterPostgresStorage

    config, _ = dagster_instance_config(str(K8S_DIR))  # the instance schema (raises on unknown/invalid keys)
    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    result = validate_config(K8sRunLauncher.config_type(), launcher["config"])
    assert result.success, result.errors
    result = validate_config(DagsterPostgresStorage.config_type(), config["storage"]["postgres"])
    assert result.success, result.errors
    assert config["concurrency"]["pools"]["default_limit"] >= 1
    values = yaml.safe_load((K8S_DIR / "values.yaml").read_text())
    [deployment] = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"][:2] == ["-m", "assets.definitions"]
    assert {"name": "TWINLOOP_DEPLOYMENT", "value": "k8s"} in deployment["env"]


@pytest.fixture
def s3_endpoint(monkeypatch):
    """A local S3 API (moto's server) with one bucket; AWS credentials as boto reads them."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    for key, value in (("AWS_ACCESS_KEY_ID", "twinloop"), ("AWS_SECRET_ACCESS_KEY", "twinloop"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(key, value)
    s3 = boto3.client("s3", endpoint_url=url)
    s3.create_bucket(Bucket="twinloop-dvc")
    yield url, s3
    server.stop()


def test_stage_outputs_push_to_an_object_store_and_pull_back(tmp_path, s3_endpoint, tiny_project):
    from resources import DvcResource, ProjectPaths

    url, s3 = s3_endpoint
    # no code copied: a one-stage dvc.yaml of its own
    project = tiny_project(tmp_path / "project", {
        "project": {"dvc_remote": "../local-store"},  # the recipe's local default: the profile overrides it
    }, code=())
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"make": {"cmd": "true", "outs": ["out"]}}}))
    (project / "out").mkdir()
    (project / "out" / "a.txt").write_text("the stage's output\n")
    (project / "out" / "b.bin").write_bytes(bytes(range(256)) * 40)

    dvc = DvcResource(paths=ProjectPaths(root=str(project)), remote_url="s3://twinloop-dvc/store",
                      s3_endpoint_url=url)
    md5 = dvc.commit_stage("make")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="twinloop-dvc", Prefix="store/").get("Contents", [])}
    assert len(keys) == 3  # two files + the directory listing, content-addressed (DVC 3: files/md5/xx/...)
    assert any(k.endswith(md5.replace(".dir", "")[2:] + ".dir") for k in keys), keys
    assert not (tmp_path / "local-store").exists()  # the recipe's local remote was not used

    # a fresh checkout (another pod, another machine) gets the outputs back from the object store
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("params.yaml", "dvc.yaml", "dvc.lock"):
        shutil.copy(project / name, clone / name)
    shutil.copytree(project / ".dvc", clone / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp"))
    subprocess.run(["git", "init", "-q"], cwd=clone, check=True)
    pulled = subprocess.run([sys.executable, "-m", "dvc", "pull", "make"], cwd=clone, capture_output=True, text=True)
    assert pulled.returncode == 0, pulled.stderr
    for name in ("a.txt", "b.bin"):
        assert (clone / "out" / name).read_bytes() == (project / "out" / name).read_bytes()
