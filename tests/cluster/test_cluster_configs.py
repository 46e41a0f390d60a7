"""cluster.yaml (AWS) and cluster.local.yaml (machines by IP) pass Ray's own cluster-launcher checks, offline:
defaults filled in by ``prepare_config`` exactly as ``ray up`` does, then the JSON schema and consistency
rules of ``validate_config``. Plus the house rules: a comment above every key, Ray pinned as in pyproject."""

import copy
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ["cluster.yaml", "cluster.local.yaml"]


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def ray_pin() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [re.fullmatch(r"ray(\[[^\]]*\])?==([\w.]+)", d.replace(" ", "")) for d in deps]
    (version,) = [m.group(2) for m in pins if m]
    return version


@pytest.mark.parametrize("name", CONFIGS)
def test_config_passes_ray_validation(name):
    prepared = prepare_config(copy.deepcopy(load(name)))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_validation_is_not_a_rubber_stamp():
    config = load("cluster.yaml")
    config["max_wokers"] = 4  # a typo of a top-level key
    with pytest.raises(jsonschema.ValidationError, match="max_wokers"):
        validate_config(prepare_config(config))
    config = load("cluster.yaml")
    config["available_node_types"]["gpu8.a100.spot"]["resources"] = {"GPU": 0.5}  # must be an integer
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(config))


def test_aws_cluster_shape():
    config = prepare_config(load("cluster.yaml"))
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0} and head["max_workers"] == 0  # no training or data task on the head
    gpu = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) > 0}
    instances = {t["node_config"]["InstanceType"] for t in gpu.values()}
    assert {"p4d.24xlarge", "p5.48xlarge", "g5.xlarge"} <= instances
    for name, node_type in gpu.items():  # every spot type has an on-demand twin of lower priority
        if node_type["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot":
            twins = [t for t in gpu.values() if t is not node_type
                     and t["node_config"]["InstanceType"] == node_type["node_config"]["InstanceType"]
                     and "InstanceMarketOptions" not in t["node_config"]]
            assert twins and all(t.get("priority", 0) < node_type["priority"] for t in twins), name
    assert sum(t["max_workers"] * t["resources"]["GPU"] for t in gpu.values()
               if t["node_config"]["InstanceType"] == "p4d.24xlarge") >= 64
    assert config["idle_timeout_minutes"] > 0 and config["max_workers"] >= 8
    assert config["file_mounts"] and any("pip install" in c and "-e" in c for c in config["setup_commands"])


def test_local_cluster_lists_machines_by_ip():
    config = load("cluster.local.yaml")
    provider = config["provider"]
    assert provider["type"] == "local" and provider["head_ip"] and provider["worker_ips"]
    assert config["auth"]["ssh_user"] and config["auth"]["ssh_private_key"]
    prepared = prepare_config(config)  # the launcher turns the IP list into one node type
    assert prepared["available_node_types"]["local.cluster.node"]["max_workers"] == len(provider["worker_ips"])


@pytest.mark.parametrize("name", CONFIGS)
def test_every_node_starts_ray_with_serves_proxy_callback(name):
    from serve.proxy_errors import PROXY_CALLBACK, PROXY_CALLBACK_ENV

    config = load(name)
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in config[key]
              if "ray start" in c]
    assert len(starts) == 2
    for command in starts:  # in the environment of `ray start`, so every proxy on the node reads it
        assert f"{PROXY_CALLBACK_ENV}={PROXY_CALLBACK} " in command.split("ray start")[0], command


@pytest.mark.parametrize("name", CONFIGS)
def test_every_key_has_a_comment_line_above_it(name):
    lines = (ROOT / name).read_text().splitlines()
    missing = []

    def visit(node):
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if not node.flow_style:  # keys of a block mapping, each on its own line
                    above = lines[key.start_mark.line - 1].strip() if key.start_mark.line else ""
                    if not above.startswith("#"):
                        missing.append(f"{name}:{key.start_mark.line + 1}: {key.value}")
                visit(value)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                visit(item)

    visit(yaml.compose((ROOT / name).read_text()))
    assert not missing, "keys without a comment line above them:\n" + "\n".join(missing)


def test_ray_version_in_the_yaml_matches_pyproject():
    version = ray_pin()
    image = load("cluster.yaml")["docker"]["image"]
    assert re.fullmatch(rf"rayproject/ray:{re.escape(version)}-py311-gpu", image), (image, version)
    import ray

    assert ray.__version__ == version  # the validating Ray is the pinned one
    # The on-prem cluster installs the project itself, which pins the same Ray.
    assert any("pip install" in c and "unip2" in c for c in load("cluster.local.yaml")["setup_commands"])
