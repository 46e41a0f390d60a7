"""Deploy the Serve config with the code of a job's working directory: run it as a Ray job,

    ray job submit --working-dir . -- python -m serve.deploy serve/config.yaml [checkpoint=/mnt/shared/.../checkpoint]

exactly as training is submitted. ``serve deploy`` alone sends a config that names no code: the replicas import
whatever ``serve.app`` the nodes had when they started, so code edited after ``ray up`` never reaches them. Here
the job's working directory (uploaded by ``ray job submit``, a ``gcs://`` package) becomes every application's
``runtime_env.working_dir`` (merged with the config's own runtime_env), and the config is deployed through the
dashboard's Serve API, as ``serve deploy`` does. ``key=value`` arguments replace entries of the applications'
``args`` (checkpoint, gallery, replicas, ...). Replicas started later (autoscaling, a replica replaced after a
crash) start from the same package; ``serve status`` / ``serve config`` show it as any deploy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml
from pydantic import ValidationError

from serve.app import AppArgs


def with_arguments(config: dict, overrides: dict[str, str]) -> dict:
    """The config with ``overrides`` replacing its applications' ``args``, each application's args validated: a
    wrong one is refused here, naming the field, before anything connects or deploys."""
    applications = []
    for application in config.get("applications") or []:
        application = {**application, "args": {**(application.get("args") or {}), **overrides}}
        try:
            AppArgs.model_validate(application["args"])
        except ValidationError as error:
            raise SystemExit(f"error: application {application.get('name')!r}: {error}") from None
        applications.append(application)
    if not applications:
        raise SystemExit("error: the config has no applications")
    return {**config, "applications": applications}


def with_working_dir(config: dict, working_dir: str) -> dict:
    """The config with every application's ``runtime_env.working_dir`` set (beside its own runtime_env)."""
    return {**config, "applications": [
        {**application, "runtime_env": {**(application.get("runtime_env") or {}), "working_dir": working_dir}}
        for application in config["applications"]]}


def parse_overrides(items: list[str]) -> dict[str, str]:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: {item!r} is not key=value")
        overrides[key] = yaml.safe_load(value)
    return overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="the Serve config (serve/config.yaml)")
    parser.add_argument("args", nargs="*", help="key=value replacing the applications' args, e.g. checkpoint=...")
    options = parser.parse_args(argv)
    config = yaml.safe_load(Path(options.config).read_text())
    config = with_arguments(config, parse_overrides(options.args))
    import ray
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    context = ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
    working_dir = ray.get_runtime_context().runtime_env.get("working_dir")
    if not working_dir:
        raise SystemExit("error: no working directory: run this as `ray job submit --working-dir . -- python -m "
                         "serve.deploy ...`")
    config = with_working_dir(config, working_dir)
    ServeSubmissionClient(f"http://{context.dashboard_url}").deploy_applications(config)
    names = ", ".join(application["name"] for application in config["applications"])
    print(f"[serve] deployed {names} with the code of {working_dir} (serve status shows it starting)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
