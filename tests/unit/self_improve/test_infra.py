"""infra/ray: the KubeRay manifest and the fleet config that goes with it agree."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from efm.cli import load_config

RAY = Path(__file__).parents[3] / "infra" / "ray"


def test_raycluster_offers_what_the_fleet_config_asks_for() -> None:
    cluster = yaml.safe_load((RAY / "raycluster.yaml").read_text())
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    offered: dict[str, dict[str, float]] = {}
    for group in cluster["spec"]["workerGroupSpecs"]:
        params = group["rayStartParams"]
        offered[group["groupName"]] = json.loads(json.loads(params["resources"]))  # KubeRay's quoted JSON
        if "num-gpus" in params:
            limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
            assert limits["nvidia.com/gpu"] == params["num-gpus"]
    cfg = load_config("pointmass", str(RAY / "fleet.json")).self_improve
    assert cfg.runtime == "ray"
    for role, group in (("actor", "actors"), ("service", "service"), ("learner", "learner")):
        asked = getattr(cfg.fleet, role).resources
        assert asked and all(offered[group].get(k, 0) >= v for k, v in asked.items()), (role, asked, offered[group])
    import ray

    assert cluster["spec"]["rayVersion"] == ray.__version__  # the image's Ray (the lock's) must match
