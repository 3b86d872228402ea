"""Vertex AI: the vertex-target YAML parses strictly and asks for TPU on SFT and CPU limits
elsewhere; submit/schedule send exactly the built request through the client seam (a fake
here: nothing reaches Google Cloud); the CLI's --dry-run and bad parameters send nothing."""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from efm import cli
from efm.components import EFM_IMAGE
from efm.config import RunConfig, debug_config
from efm.pipelines import vertex
from efm.pipelines.experiment import compile_pipeline, make_experiment_pipeline
from efm.pipelines.vertex import VertexConfig, VertexResources

PROJECT, REGION, ROOT = "my-project-123", "us-central1", "gs://efm-bucket/pipelines"
SA = "efm-runner@my-project-123.iam.gserviceaccount.com"
RESOURCE = "projects/123/locations/us-central1/pipelineJobs/efm-fake"


class FakeJob:
    """Records what is called on the `aiplatform.PipelineJob` stand-in."""

    resource_name = RESOURCE

    def __init__(self, calls: list[tuple[str, dict[str, Any]]]) -> None:
        self.calls = calls

    def submit(self, service_account: str | None = None) -> None:
        self.calls.append(("submit", {"service_account": service_account}))

    def create_schedule(self, cron: str, display_name: str, max_concurrent_run_count: int = 1,
                        max_run_count: int | None = None, service_account: str | None = None) -> Any:
        self.calls.append(("create_schedule", {"cron": cron, "display_name": display_name,
                                               "max_concurrent_run_count": max_concurrent_run_count,
                                               "max_run_count": max_run_count,
                                               "service_account": service_account}))
        return type("Schedule", (), {"resource_name": RESOURCE.replace("pipelineJobs", "schedules")})()


class FakeClient:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def init(self, project: str, location: str, staging_bucket: str) -> None:
        self.calls.append(("init", {"project": project, "location": location, "staging_bucket": staging_bucket}))

    def pipeline_job(self, **kwargs: Any) -> FakeJob:
        self.calls.append(("pipeline_job", kwargs))
        return FakeJob(self.calls)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    """The default client factory returns the fake, so the CLI uses it too."""
    client = FakeClient()
    monkeypatch.setattr(vertex, "make_client", lambda: client)
    return client


def _spec(path: Path) -> tuple[dict, pipeline_spec_pb2.PipelineSpec]:
    raw = yaml.safe_load(path.read_text())
    return raw, json_format.ParseDict(raw, pipeline_spec_pb2.PipelineSpec())  # strict: unknown fields fail


def _steps(spec: pipeline_spec_pb2.PipelineSpec) -> dict[str, pipeline_spec_pb2.PipelineTaskSpec]:
    """Every task that runs a container, by name: the root's and those of groups (the vertex
    graph runs inside an exit handler group)."""
    dags = [spec.root.dag, *(c.dag for c in spec.components.values() if c.HasField("dag"))]
    return {name: t for dag in dags for name, t in dag.tasks.items()
            if spec.components[t.component_ref.name].executor_label}


def _tasks(spec: pipeline_spec_pb2.PipelineSpec, stage: str) -> list[pipeline_spec_pb2.PipelineTaskSpec]:
    return [t for t in _steps(spec).values() if t.task_info.name.startswith(f"{stage}-")]


def _executor(raw: dict, spec: pipeline_spec_pb2.PipelineSpec, task: pipeline_spec_pb2.PipelineTaskSpec) -> dict:
    label = spec.components[task.component_ref.name].executor_label
    return raw["deploymentSpec"]["executors"][label]["container"]


@pytest.fixture(scope="module")
def vertex_yaml(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, pipeline_spec_pb2.PipelineSpec]:
    path = compile_pipeline(tmp_path_factory.mktemp("vertex") / "p.yaml", [0.1, 0.2], [0], target="vertex")
    return _spec(path)


def test_vertex_yaml_parses_strictly_and_runs_sft_as_a_tpu_custom_job(vertex_yaml) -> None:
    raw, spec = vertex_yaml
    sft = _tasks(spec, "sft")
    assert len(sft) == 2
    for task in sft:
        component = raw["components"][task.component_ref.name]
        # the TPU lands in the custom job's worker_pool_specs (the wrapped component's default)
        (pool,) = component["inputDefinitions"]["parameters"]["worker_pool_specs"]["defaultValue"]
        assert pool["machine_spec"] == {"machine_type": "ct5lp-hightpu-4t"}  # TPU VM: no accelerator fields
        assert pool["replica_count"] == 1
        assert pool["container_spec"]["image_uri"] == EFM_IMAGE  # our code runs on the TPU host
        container = _executor(raw, spec, task)
        assert "google-cloud-pipeline-components" in container["image"]  # the launcher, not our image
        assert container["args"][:2] == ["--type", "CustomJob"]
        assert "resources" not in container
        assert task.inputs.parameters["display_name"].runtime_value.constant.string_value.startswith("efm-sft-f")
        assert task.retry_policy.max_retry_count == 1 and task.caching_options.enable_cache
        assert set(task.inputs.artifacts) == {"train", "validation"}
    # select consumes the custom job's model output
    for task in _tasks(spec, "select"):
        producer = task.inputs.artifacts["sft_model"].task_output_artifact.producer_task
        assert _steps(spec)[producer].task_info.name.startswith("sft-")


def test_vertex_yaml_puts_cpu_and_memory_limits_on_the_other_steps(vertex_yaml) -> None:
    raw, spec = vertex_yaml
    others = [t for t in _steps(spec).values() if not t.task_info.name.startswith("sft-")]
    # start-tracking, stage-configs, dataset, validate, 5 steps per branch, and end-tracking
    assert len(others) == 4 + 5 * 2 + 1
    for task in others:
        container = _executor(raw, spec, task)
        assert container["image"] == EFM_IMAGE
        assert container["resources"]["resourceCpuLimit"] == "4"
        assert container["resources"]["resourceMemoryLimit"] == "16G"
        assert "accelerator" not in container["resources"]  # none unless configured


def test_vertex_runs_every_step_inside_an_exit_handler_that_ends_tracking(vertex_yaml) -> None:
    """A failed Vertex run reaches no report step: the exit task fails its MLflow runs."""
    raw, spec = vertex_yaml
    assert set(spec.root.dag.tasks) == {"exit-handler-1", "end-tracking"}
    end = spec.root.dag.tasks["end-tracking"]
    assert end.trigger_policy.strategy == end.trigger_policy.TriggerStrategy.ALL_UPSTREAM_TASKS_COMPLETED
    assert end.inputs.parameters["status"].task_final_status.producer_task == "exit-handler-1"
    assert end.inputs.parameters["tracking_uri"].component_input_parameter == "tracking_uri"
    assert not end.caching_options.enable_cache
    assert "end_experiment(status.state" in " ".join(_executor(raw, spec, end)["command"])
    group = spec.components[spec.root.dag.tasks["exit-handler-1"].component_ref.name].dag
    assert set(_steps(spec)) - set(group.tasks) == {"end-tracking"}  # every other step is inside


def test_multi_host_topology_and_self_improve_accelerator(tmp_path: Path) -> None:
    resources = VertexResources(sft_tpu_topology="4x4", cpu_limit="8", memory_limit="32G",
                                self_improve_accelerator_type="NVIDIA_L4", sft_service_account=SA)
    raw, spec = _spec(compile_pipeline(tmp_path / "p.yaml", [0.5], [3], target="vertex", resources=resources))
    (sft,) = _tasks(spec, "sft")
    # the gcpc util has no topology argument: the task carries the worker pool with tpu_topology
    (pool,) = json_format.MessageToDict(sft.inputs.parameters["worker_pool_specs"].runtime_value.constant)
    assert pool["machine_spec"] == {"machine_type": "ct5lp-hightpu-4t", "tpu_topology": "4x4"}
    component = raw["components"][sft.component_ref.name]
    assert component["inputDefinitions"]["parameters"]["service_account"]["defaultValue"] == SA
    (si,) = _tasks(spec, "self-improve")
    res = _executor(raw, spec, si)["resources"]
    assert res["accelerator"]["resourceType"] == "NVIDIA_L4" and res["accelerator"]["resourceCount"] == "1"
    assert res["resourceCpuLimit"] == "8" and res["resourceMemoryLimit"] == "32G"


def test_vertex_runs_pretraining_as_a_tpu_custom_job_too(tmp_path: Path) -> None:
    from efm.pipelines.experiment import GraphShape

    raw, spec = _spec(compile_pipeline(tmp_path / "p.yaml", [0.5], [3], target="vertex",
                                       shape=GraphShape(pretrain=True)))
    (pre,) = [t for t in _steps(spec).values() if t.task_info.name == "pretrain"]
    component = raw["components"][pre.component_ref.name]
    (pool,) = component["inputDefinitions"]["parameters"]["worker_pool_specs"]["defaultValue"]
    assert pool["machine_spec"] == {"machine_type": "ct5lp-hightpu-4t"}
    assert _executor(raw, spec, pre)["args"][:2] == ["--type", "CustomJob"]
    assert pre.inputs.parameters["display_name"].runtime_value.constant.string_value == "efm-pretrain"
    (sft,) = _tasks(spec, "sft")
    assert set(sft.inputs.artifacts) == {"train", "validation", "pretrained"}
    assert _executor(raw, spec, sft)["args"][:2] == ["--type", "CustomJob"]


def test_local_target_is_unchanged_plain_components(tmp_path: Path) -> None:
    raw, spec = _spec(compile_pipeline(tmp_path / "p.yaml", [0.5], [3]))
    executors = raw["deploymentSpec"]["executors"].values()
    assert {e["container"]["image"] for e in executors} == {EFM_IMAGE}
    assert not any("CustomJob" in e["container"].get("args", []) for e in executors)
    assert not any("resources" in e["container"] for e in executors)
    (sft,) = _tasks(spec, "sft")
    assert set(sft.inputs.parameters) == {"config_json", "fraction", "seed", "tracking_uri"}
    assert set(_steps(spec)) == set(spec.root.dag.tasks) and "end-tracking" not in _steps(spec)  # no exit handler
    assert "Output" in raw["root"]["outputDefinitions"]["artifacts"]  # the summary, for kfp.local
    with pytest.raises(ValueError, match="target"):
        make_experiment_pipeline([0.5], [0], target="cloud")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="resources"):
        make_experiment_pipeline([0.5], [0], resources=VertexResources())


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"sft_tpu_topology": "3x3"}, "sft_tpu_topology"),  # 9 chips: not whole 4-chip hosts
    ({"sft_tpu_topology": "four"}, "sft_tpu_topology"),
    ({"sft_machine_type": "n1-standard-8", "sft_tpu_topology": "2x2"}, "sft_tpu_topology"),
    ({"sft_machine_type": "CT5LP"}, "sft_machine_type"),
    ({"cpu_limit": "lots"}, "cpu_limit"),
    ({"memory_limit": "16GB"}, "memory_limit"),
    ({"self_improve_accelerator_type": "nvidia-l4"}, "self_improve_accelerator_type"),
])
def test_bad_resources_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        VertexResources(**kwargs)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"project": ""}, "project"),
    ({"project": "My Project"}, "project"),
    ({"region": "us central"}, "region"),
    ({"region": "central"}, "region"),
    ({"pipeline_root": "/tmp/root"}, "pipeline_root"),
    ({"pipeline_root": "s3://bucket"}, "pipeline_root"),
    ({"service_account": "not-an-email"}, "service_account"),
    ({"labels": {"Team": "x"}}, "labels"),
])
def test_bad_vertex_settings_name_the_field(kwargs: dict, field: str) -> None:
    base = {"project": PROJECT, "region": REGION, "pipeline_root": ROOT}
    with pytest.raises(ValueError, match=field):
        VertexConfig(**{**base, **kwargs})


@pytest.mark.parametrize("cron", ["0 3 * * *", "*/15 8-18 * * MON-FRI", "0 0 1,15 JAN *",
                                  "TZ=America/New_York 0 3 * * *", "CRON_TZ=Europe/Paris 30 2 * * 0"])
def test_valid_cron(cron: str) -> None:
    assert vertex.validate_cron(cron) == " ".join(cron.split())


@pytest.mark.parametrize("cron", ["0 3 * *", "0 3 * * * *", "60 * * * *", "* 24 * * *", "* * 0 * *",
                                  "* * * 13 *", "* * * * FOO", "*/0 * * * *", "", "@daily"])
def test_invalid_cron(cron: str) -> None:
    with pytest.raises(ValueError, match="cron"):
        vertex.validate_cron(cron)


def _settings(**kwargs: Any) -> VertexConfig:
    return VertexConfig(project=PROJECT, region=REGION, pipeline_root=ROOT, service_account=SA, **kwargs)


def test_submit_records_exactly_the_request(tmp_path: Path) -> None:
    template = tmp_path / "p.yaml"
    template.write_text("{}")
    cfg = debug_config()
    client = FakeClient()
    settings = _settings(labels={"team": "robots"}, tracking_uri="https://mlflow.example.com")
    out = vertex.submit(settings, template, cfg, client_factory=lambda: client)
    assert client.calls == [
        ("init", {"project": PROJECT, "location": REGION, "staging_bucket": ROOT}),
        ("pipeline_job", {"display_name": "efm-pointmass", "template_path": str(template.resolve()),
                          "pipeline_root": ROOT, "parameter_values": {"config_json": cfg.to_json(),
                                                                      "tracking_uri": "https://mlflow.example.com"},
                          "enable_caching": None, "labels": {"app": "efm", "domain": "pointmass", "team": "robots"},
                          "project": PROJECT, "location": REGION}),
        ("submit", {"service_account": SA}),
    ]
    assert out["pipeline_job"] == RESOURCE
    assert out["request"] == vertex.build_pipeline_job_request(settings, template, cfg)
    assert RunConfig.from_json(client.calls[1][1]["parameter_values"]["config_json"]) == cfg


def test_schedule_records_exactly_the_request(tmp_path: Path) -> None:
    template = tmp_path / "p.yaml"
    template.write_text("{}")
    cfg = debug_config()
    client = FakeClient()
    out = vertex.schedule("0 3 * * *", _settings(enable_caching=False), template, cfg.to_json(),
                          display_name="nightly", max_run_count=30, client_factory=lambda: client)
    assert [name for name, _ in client.calls] == ["init", "pipeline_job", "create_schedule"]
    job = client.calls[1][1]
    assert job["display_name"] == "nightly" and job["enable_caching"] is False
    assert job["parameter_values"] == {"config_json": cfg.to_json(), "tracking_uri": ""}
    assert client.calls[2][1] == {"cron": "0 3 * * *", "display_name": "nightly-schedule",
                                  "max_concurrent_run_count": 1, "max_run_count": 30, "service_account": SA}
    assert out["schedule"].endswith("/schedules/efm-fake")


def test_missing_template_or_bad_schedule_sends_nothing(tmp_path: Path) -> None:
    client = FakeClient()
    with pytest.raises(FileNotFoundError):
        vertex.submit(_settings(), tmp_path / "absent.yaml", debug_config(), client_factory=lambda: client)
    (tmp_path / "p.yaml").write_text("{}")
    with pytest.raises(ValueError, match="cron"):
        vertex.schedule("daily", _settings(), tmp_path / "p.yaml", debug_config(), client_factory=lambda: client)
    with pytest.raises(ValueError, match="max_run_count"):
        vertex.schedule("0 3 * * *", _settings(), tmp_path / "p.yaml", debug_config(), max_run_count=0,
                        client_factory=lambda: client)
    assert client.calls == []


def _signature_args(path: Path, cls: str, method: str) -> set[str]:
    """Parameter names of a method in the installed SDK's source (importing aiplatform costs ~10 s)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for fn in node.body:
                if isinstance(fn, ast.FunctionDef) and fn.name == method:
                    a = fn.args
                    return {x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs]} - {"self"}
    raise AssertionError(f"{cls}.{method} not found in {path}")


def test_request_matches_the_installed_aiplatform_api(tmp_path: Path) -> None:
    spec = importlib.util.find_spec("google.cloud.aiplatform")
    assert spec is not None and spec.origin is not None
    sdk = Path(spec.origin).parent
    (tmp_path / "p.yaml").write_text("{}")
    request = vertex.build_schedule_request(_settings(), tmp_path / "p.yaml", debug_config(), "0 3 * * *")
    submit = vertex.build_pipeline_job_request(_settings(), tmp_path / "p.yaml", debug_config())["submit"]
    assert set(request["init"]) <= _signature_args(sdk / "initializer.py", "_Config", "init")
    assert set(request["pipeline_job"]) <= _signature_args(sdk / "pipeline_jobs.py", "PipelineJob", "__init__")
    assert set(submit) <= _signature_args(sdk / "pipeline_jobs.py", "PipelineJob", "submit")
    assert set(request["create_schedule"]) <= _signature_args(sdk / "pipeline_jobs.py", "PipelineJob",
                                                              "create_schedule")


VERTEX_ARGS = ["--project", PROJECT, "--region", REGION, "--pipeline-root", ROOT, "--service-account", SA,
               "--debug", "--fractions", "0.5", "--seeds", "7"]


def test_cli_dry_run_prints_the_request_and_sends_nothing(fake: FakeClient, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pipeline.yaml"
    assert cli.main(["schedule", *VERTEX_ARGS, "--cron", "0 3 * * *", "--out", str(out), "--dry-run",
                     "--no-cache", "--label", "team=robots"]) == 0
    assert fake.calls == []
    printed = json.loads(capsys.readouterr().out)
    request = printed["request"]
    assert printed["dry_run"] is True
    assert request["pipeline_job"]["template_path"] == str(out.resolve())
    assert request["pipeline_job"]["enable_caching"] is False
    assert request["pipeline_job"]["labels"]["team"] == "robots"
    assert request["create_schedule"]["cron"] == "0 3 * * *"
    cfg = RunConfig.from_json(request["pipeline_job"]["parameter_values"]["config_json"])
    assert cfg.data.fractions == (0.5,) and cfg.sft.num_steps == debug_config().sft.num_steps
    _, spec = _spec(out)  # the printed template is the compiled vertex pipeline
    (sft,) = _tasks(spec, "sft")
    assert sft.task_info.name == "sft-f0.5-s7"
    fractions = _steps(spec)["start-tracking"].inputs.parameters["fractions"]  # what the parent run logs
    assert fractions.runtime_value.constant.string_value == "0.5"


def test_cli_submit_sends_through_the_client(fake: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["submit", *VERTEX_ARGS, "--sft-machine-type", "ct5lp-hightpu-8t"]) == 0
    assert [name for name, _ in fake.calls] == ["init", "pipeline_job", "submit"]
    assert fake.calls[2][1] == {"service_account": SA}
    printed = json.loads(capsys.readouterr().out)
    assert printed["pipeline_job"] == RESOURCE
    assert not Path(printed["request"]["pipeline_job"]["template_path"]).exists()  # temporary, cleaned up


@pytest.mark.parametrize(("change", "field"), [
    (["--region", "us central"], "region"),
    (["--pipeline-root", "/local/root"], "pipeline_root"),
    (["--service-account", "runner"], "service_account"),
    (["--project", "X"], "project"),
    (["--cron", "0 3 * *"], "cron"),
    (["--fractions", "1.5"], "fractions"),
    (["--config", '{"sft": {"num_steps": 0}}'], "sft.num_steps"),
    (["--sft-tpu-topology", "3x3"], "sft_tpu_topology"),
    (["--label", "novalue"], "--label"),
    (["--tracking-uri", "sqlite:///mlflow.db"], "tracking_uri"),
])
def test_cli_bad_parameters_exit_2_and_send_nothing(fake: FakeClient, capsys: pytest.CaptureFixture[str],
                                                    change: list[str], field: str) -> None:
    args = ["schedule", *VERTEX_ARGS, "--cron", "0 3 * * *", *change]  # argparse: the last value wins
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert field in err and "error" in err
    assert fake.calls == []


def test_cli_compile_targets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["compile", "--fractions", "0.5", "--seeds", "1", "--out", str(tmp_path / "v.yaml")]) == 0
    assert json.loads(capsys.readouterr().out)["target"] == "vertex"
    raw, _ = _spec(tmp_path / "v.yaml")
    assert "ct5lp-hightpu-4t" in json.dumps(raw)
    assert cli.main(["compile", "--target", "local", "--fractions", "0.5", "--out", str(tmp_path / "l.yaml")]) == 0
    assert "CustomJob" not in (tmp_path / "l.yaml").read_text()
