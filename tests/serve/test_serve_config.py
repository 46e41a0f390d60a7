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
    assert set(deployments) == {"Ingress", "Model"}
    model = deployments["Model"]
    assert model.max_queued_requests > 0 and model.max_ongoing_requests >= app.args["max_batch_size"]
    assert model.autoscaling_config["min_replicas"] >= 1


def test_config_args_build_the_app_through_the_typed_builder(tiny_checkpoint):
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from serve.app import build_app

    args = yaml.safe_load(CONFIG.read_text())["applications"][0]["args"]
    args["checkpoint"] = str(tiny_checkpoint)
    # As `serve run serve.app:build_app key=value` passes them: strings, validated into AppArgs.
    app = call_user_app_builder_with_args_if_necessary(build_app, {k: str(v) for k, v in args.items()})
    ingress = app._bound_deployment
    assert ingress.name == "Ingress"
    model = ingress.init_args[0]._bound_deployment
    assert model.name == "Model" and model.init_kwargs["max_batch_size"] == args["max_batch_size"]
    assert model.ray_actor_options["num_gpus"] == args["model_num_gpus"]


def test_typed_builder_refuses_bad_arguments(tiny_checkpoint, tmp_path):
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from serve.app import build_app

    for bad in ({}, {"checkpoint": str(tmp_path / "missing")},
                {"checkpoint": str(tiny_checkpoint), "max_batch_size": "0"},
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
