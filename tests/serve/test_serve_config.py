"""The shipped ``serve/config.yaml`` and the typed app builder, checked without starting anything."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

CONFIG = Path(__file__).resolve().parents[2] / "serve" / "config.yaml"


def test_config_is_a_valid_serve_deploy_config():
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load(CONFIG.read_text())
    schema = ServeDeploySchema.model_validate(config)
    assert schema.http_options.host == "127.0.0.1" and schema.http_options.port == 8000
    (app,) = schema.applications
    assert app.import_path == "serve.app:build_app" and app.route_prefix == "/"
    deployments = {d.name: d for d in app.deployments}
    assert set(deployments) == {"Model"}  # the model replicas are the ingress: one hop from the proxy
    args = app.args
    assert args["max_queued_requests"] > 0 and args["max_ongoing_requests"] >= args["max_batch_size"]
    assert 1 <= args["min_replicas"] < args["max_replicas"] and args["target_ongoing_requests"] > 0


def test_config_installs_the_proxy_middleware_through_the_controller():
    from ray.serve.schema import ServeDeploySchema

    from serve.proxy_errors import PROXY_CALLBACK, PROXY_CALLBACK_ENV

    schema = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    # `serve deploy` and `serve run` hand these to the controller they create; its proxies inherit them.
    assert schema.controller_options.runtime_env == {"env_vars": {PROXY_CALLBACK_ENV: PROXY_CALLBACK}}


def test_config_args_build_the_app_through_the_typed_builder(tiny_checkpoint):
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from serve.app import build_app

    args = yaml.safe_load(CONFIG.read_text())["applications"][0]["args"]
    args["checkpoint"] = str(tiny_checkpoint)
    # As `serve run serve.app:build_app key=value` passes them: strings, validated into AppArgs.
    app = call_user_app_builder_with_args_if_necessary(build_app, {k: str(v) for k, v in args.items()})
    model = app._bound_deployment
    assert model.name == "Model" and model.init_kwargs["max_batch_size"] == args["max_batch_size"]
    assert model.ray_actor_options["num_gpus"] == args["model_num_gpus"]
    assert model.ray_actor_options["num_cpus"] == args["model_num_cpus"] + args["ingress_num_cpus"]
    autoscaling = model._deployment_config.autoscaling_config
    assert (autoscaling.min_replicas, autoscaling.max_replicas) == (args["min_replicas"], args["max_replicas"])
    assert autoscaling.target_ongoing_requests == args["target_ongoing_requests"]
    # Serve hands a replica its whole admission room, so the replica itself answers the overflow (JSON 503).
    assert model.max_ongoing_requests > args["max_ongoing_requests"] + args["max_queued_requests"]


def test_typed_builder_refuses_bad_arguments(tiny_checkpoint, tmp_path):
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from serve.app import build_app

    for bad in ({}, {"checkpoint": str(tmp_path / "missing")},
                {"checkpoint": str(tiny_checkpoint), "max_batch_size": "0"},
                {"checkpoint": str(tiny_checkpoint), "min_replicas": "3", "max_replicas": "2"},
                {"checkpoint": str(tiny_checkpoint), "no_such_option": "1"}):
        with pytest.raises(ValidationError):
            call_user_app_builder_with_args_if_necessary(build_app, bad)


def test_our_serve_package_and_rays_coexist():
    import ray.serve
    from ray import serve as ray_serve

    import serve
    import serve.app

    assert ray_serve is ray.serve and ray_serve.__name__ == "ray.serve" and hasattr(ray_serve, "batch")
    assert serve.__file__ == str(Path(__file__).resolve().parents[2] / "serve" / "__init__.py")
    assert callable(serve.app.build_app)
