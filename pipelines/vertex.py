"""Vertex AI: where each step runs, checks on every setting, and what is sent to Vertex.

Everything here is plain Python until a request is sent: settings validate themselves on
construction (a bad region or bucket fails before any compile or API call), a request is a
dict built by `build_pipeline_job_request` / `build_schedule_request`, and `execute` replays
that dict against a `VertexClient`. So `--dry-run` prints exactly what `execute` would send,
and tests swap the client for a fake that records calls. Only `AiplatformClient` imports
`google.cloud.aiplatform`, and only when it is used.

Where steps run on Vertex (see `efm.pipelines.experiment`): SFT is a Vertex custom job on a
TPU VM (`VertexResources.sft_machine_type`, a single-host TPU v5e slice by default); every
other step runs on a CPU machine sized by `cpu_limit`/`memory_limit`; Self-Improvement may ask
for an accelerator (`self_improve_accelerator_type`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from efm.config import RunConfig

if TYPE_CHECKING:  # experiment imports this module's resources
    from efm.pipelines.experiment import GraphShape

DEFAULT_SFT_MACHINE_TYPE = "ct5lp-hightpu-4t"  # one TPU v5e host, 4 chips (topology 2x2)

_PROJECT = re.compile(r"^(?:[a-z][a-z0-9.-]*[a-z0-9]:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_REGION = re.compile(r"^[a-z]+(?:-[a-z]+)+[0-9]+$")  # us-central1, europe-west4, ...
_BUCKET = re.compile(r"^gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](?:/.*)?$")
_TRACKING_SERVER = re.compile(r"^(https?://[^/\s]+(?:/\S*)?|databricks(?:://\S+)?)$")
_EMAIL = re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
_MACHINE_TYPE = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)+$")
_TOPOLOGY = re.compile(r"^[1-9][0-9]*(?:x[1-9][0-9]*){1,2}$")  # 2x2, 4x4, 2x2x1
_ACCELERATOR = re.compile(r"^[A-Z][A-Z0-9_]*$")  # NVIDIA_L4, TPU_V5_LITEPOD
_CPU = re.compile(r"^[0-9]+(?:\.[0-9]+)?m?$")  # what kfp's set_cpu_limit accepts
_MEMORY = re.compile(r"^[0-9]+(?:\.[0-9]+)?(?:E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?$")
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_DISPLAY_NAME_MAX = 128


def _check(cond: bool, name: str, value: Any, rule: str) -> None:
    if not cond:
        raise ValueError(f"invalid Vertex setting: {name}={value!r} ({rule})")


def _check_labels(labels: Mapping[str, str]) -> None:
    for k, v in labels.items():
        _check(bool(_LABEL_KEY.match(str(k))), "labels", k,
               "keys: lowercase letter first, then lowercase letters, digits, _ or -, at most 63")
        _check(bool(_LABEL_VALUE.match(str(v))), "labels", f"{k}={v}",
               "values: lowercase letters, digits, _ or -, at most 63")


def chips_per_host(machine_type: str) -> int | None:
    """TPU chips on one host of a TPU VM machine type ("ct5lp-hightpu-4t" -> 4), else None."""
    m = re.fullmatch(r"ct[0-9a-z]+-[a-z]+-([0-9]+)t", machine_type)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class VertexResources:
    """Machines per step; fixed when the pipeline is compiled, so they live in the YAML.

    sft_tpu_topology: None for a single-host slice (the machine type alone carries the TPU);
    a topology such as "4x4" asks Vertex for a multi-host slice of that machine type (the
    machine spec's `tpu_topology`). The SFT code then has to run under `jax.distributed`.
    sft_accelerator_type: leave empty for TPU VM machine types; set it (with a count) only for
    machine types that take attached accelerators, such as GPUs.
    sft_service_account: run-as account of the SFT custom job; empty: the pipeline's account
    when compiled by `submit`/`schedule`, otherwise Vertex's Custom Code Service Agent.
    """

    sft_machine_type: str = DEFAULT_SFT_MACHINE_TYPE
    sft_tpu_topology: str | None = None
    sft_accelerator_type: str = ""
    sft_accelerator_count: int = 1
    sft_boot_disk_gb: int = 100
    sft_service_account: str = ""
    cpu_limit: str = "4"  # every step but SFT; Vertex picks the machine from these limits
    memory_limit: str = "16G"
    self_improve_accelerator_type: str | None = None  # e.g. "NVIDIA_L4"
    self_improve_accelerator_count: int = 1

    def __post_init__(self) -> None:
        _check(bool(_MACHINE_TYPE.match(self.sft_machine_type)), "sft_machine_type", self.sft_machine_type,
               "a Vertex machine type such as ct5lp-hightpu-4t")
        if self.sft_tpu_topology is not None:
            _check(bool(_TOPOLOGY.match(self.sft_tpu_topology)), "sft_tpu_topology", self.sft_tpu_topology,
                   "chips per dimension such as 4x4 or 2x2x1")
            per_host = chips_per_host(self.sft_machine_type)
            _check(per_host is not None, "sft_tpu_topology", self.sft_tpu_topology,
                   f"needs a TPU VM machine type (ct*-*-<chips>t), not {self.sft_machine_type}")
            chips = math.prod(int(d) for d in self.sft_tpu_topology.split("x"))
            _check(chips % per_host == 0, "sft_tpu_topology", self.sft_tpu_topology,
                   f"{chips} chips is not a whole number of {self.sft_machine_type} hosts ({per_host} chips each)")
        _check(not self.sft_accelerator_type or bool(_ACCELERATOR.match(self.sft_accelerator_type)),
               "sft_accelerator_type", self.sft_accelerator_type, "empty or an AcceleratorType such as NVIDIA_L4")
        _check(self.sft_accelerator_count >= 1, "sft_accelerator_count", self.sft_accelerator_count, ">= 1")
        _check(self.sft_boot_disk_gb >= 10, "sft_boot_disk_gb", self.sft_boot_disk_gb, ">= 10")
        _check(not self.sft_service_account or bool(_EMAIL.match(self.sft_service_account)),
               "sft_service_account", self.sft_service_account, "empty or a service account email")
        _check(bool(_CPU.match(self.cpu_limit)), "cpu_limit", self.cpu_limit, "cores such as 4 or 500m")
        _check(bool(_MEMORY.match(self.memory_limit)), "memory_limit", self.memory_limit,
               "a size such as 16G or 512Mi")
        _check(self.self_improve_accelerator_type is None or bool(_ACCELERATOR.match(self.self_improve_accelerator_type)),
               "self_improve_accelerator_type", self.self_improve_accelerator_type,
               "None or an accelerator type such as NVIDIA_L4")
        _check(self.self_improve_accelerator_count >= 1, "self_improve_accelerator_count",
               self.self_improve_accelerator_count, ">= 1")

    @property
    def sft_machine_spec(self) -> dict[str, Any]:
        """The `machine_spec` of the SFT worker pool, as the CustomJob API reads it."""
        spec: dict[str, Any] = {"machine_type": self.sft_machine_type}
        if self.sft_accelerator_type:
            spec.update(accelerator_type=self.sft_accelerator_type, accelerator_count=self.sft_accelerator_count)
        if self.sft_tpu_topology:
            spec["tpu_topology"] = self.sft_tpu_topology
        return spec


@dataclass(frozen=True)
class VertexConfig:
    """Where and as whom the pipeline runs on Vertex AI, and the machines of its steps.

    enable_caching: None keeps the per-step settings compiled into the pipeline
    (`experiment.CACHING`); False reruns every step; True caches every step.
    tracking_uri: an MLflow server the pipeline's machines can reach ("" tracks nothing).
    """

    project: str
    region: str
    pipeline_root: str
    service_account: str = ""
    enable_caching: bool | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    resources: VertexResources = field(default_factory=VertexResources)
    tracking_uri: str = ""

    def __post_init__(self) -> None:
        _check(bool(self.project), "project", self.project, "required")
        _check(bool(_PROJECT.match(self.project)), "project", self.project,
               "a Google Cloud project ID: 6-30 lowercase letters, digits or hyphens")
        _check(bool(_REGION.match(self.region)), "region", self.region, "a Vertex AI region such as us-central1")
        _check(bool(_BUCKET.match(self.pipeline_root)), "pipeline_root", self.pipeline_root,
               "a Cloud Storage path gs://BUCKET[/PATH]")
        _check(not self.service_account or bool(_EMAIL.match(self.service_account)), "service_account",
               self.service_account, "empty or an email such as NAME@PROJECT.iam.gserviceaccount.com")
        _check(self.enable_caching in (None, True, False), "enable_caching", self.enable_caching,
               "None, True or False")
        _check_labels(self.labels)
        _check(not self.tracking_uri or bool(_TRACKING_SERVER.match(self.tracking_uri)), "tracking_uri",
               self.tracking_uri, "empty, or an MLflow server such as https://mlflow.example.com: a local "
               "store (sqlite:, file:, a path) is out of reach of Vertex machines")

    def sft_resources(self) -> VertexResources:
        """Resources to compile with: the SFT job runs as the pipeline's account unless set."""
        if self.resources.sft_service_account or not self.service_account:
            return self.resources
        return dataclasses.replace(self.resources, sft_service_account=self.service_account)


_CRON_FIELDS = (  # name, low, high, names
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")),
    ("day of week", 0, 7, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")),
)
_CRON_ITEM = re.compile(r"^(\*|[0-9A-Za-z]+(?:-[0-9A-Za-z]+)?)(?:/([0-9]+))?$")


def validate_cron(cron: str) -> str:
    """A 5-field cron expression, optionally after CRON_TZ=<zone> or TZ=<zone>, as Vertex takes.

    Checked here because Vertex only rejects a bad schedule after the request is sent.
    """
    text = cron.strip()
    fields = text.split()
    if fields and re.match(r"^(CRON_TZ|TZ)=[A-Za-z0-9_+/-]+$", fields[0]):
        fields = fields[1:]
    _check(len(fields) == 5, "cron", cron, "5 fields: minute hour day-of-month month day-of-week, e.g. '0 3 * * *'")
    for value, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        for item in value.split(","):
            m = _CRON_ITEM.match(item)
            _check(m is not None, "cron", cron, f"bad {name} field {value!r}")
            assert m is not None
            base, step = m.group(1), m.group(2)
            _check(step is None or int(step) >= 1, "cron", cron, f"bad step in {name} field {value!r}")
            if base == "*":
                continue
            for part in base.split("-"):
                if part.isdigit():
                    n = int(part)
                else:
                    _check(part.upper() in names, "cron", cron, f"bad {name} {part!r}")
                    n = names.index(part.upper()) + low
                _check(low <= n <= high, "cron", cron, f"{name} {part} not in {low}..{high}")
    return " ".join(text.split())


def _display_name(name: str, what: str = "display_name") -> str:
    _check(0 < len(name) <= _DISPLAY_NAME_MAX, what, name, f"1 to {_DISPLAY_NAME_MAX} characters")
    return name


def _config_json(config: RunConfig | str) -> tuple[str, RunConfig]:
    cfg = config if isinstance(config, RunConfig) else RunConfig.from_json(config)
    return cfg.to_json(), cfg


def build_pipeline_job_request(vertex: VertexConfig, template_path: str | Path, config: RunConfig | str,
                               display_name: str | None = None) -> dict[str, Any]:
    """Everything `execute` sends for one run: `init` (aiplatform.init), `pipeline_job`
    (aiplatform.PipelineJob arguments) and `submit` (PipelineJob.submit arguments)."""
    path = Path(template_path)
    if not path.is_file():
        raise FileNotFoundError(f"compiled pipeline not found: {path}")
    config_json, cfg = _config_json(config)
    labels = {"app": "efm", "domain": cfg.domain, **vertex.labels}
    _check_labels(labels)
    return {
        "init": {"project": vertex.project, "location": vertex.region, "staging_bucket": vertex.pipeline_root},
        "pipeline_job": {
            "display_name": _display_name(display_name or f"efm-{cfg.domain}"),
            "template_path": str(path.resolve()),
            "pipeline_root": vertex.pipeline_root,
            "parameter_values": {"config_json": config_json, "tracking_uri": vertex.tracking_uri},
            "enable_caching": vertex.enable_caching,
            "labels": labels,
            "project": vertex.project,
            "location": vertex.region,
        },
        "submit": {"service_account": vertex.service_account or None},
    }


def build_schedule_request(vertex: VertexConfig, template_path: str | Path, config: RunConfig | str, cron: str,
                           display_name: str | None = None, max_concurrent_run_count: int = 1,
                           max_run_count: int | None = None) -> dict[str, Any]:
    """As `build_pipeline_job_request`, with `create_schedule` (PipelineJob.create_schedule
    arguments) in place of `submit`: Vertex starts a run of the job at every cron tick."""
    cron = validate_cron(cron)
    _check(max_concurrent_run_count >= 1, "max_concurrent_run_count", max_concurrent_run_count, ">= 1")
    _check(max_run_count is None or max_run_count >= 1, "max_run_count", max_run_count, "None or >= 1")
    request = build_pipeline_job_request(vertex, template_path, config, display_name)
    del request["submit"]
    request["create_schedule"] = {
        "cron": cron,
        "display_name": _display_name(f"{request['pipeline_job']['display_name']}-schedule"),
        "max_concurrent_run_count": max_concurrent_run_count,
        "max_run_count": max_run_count,
        "service_account": vertex.service_account or None,
    }
    return request


class PipelineJobHandle(Protocol):
    """The part of `aiplatform.PipelineJob` that we call."""

    def submit(self, service_account: str | None = None) -> Any: ...

    def create_schedule(self, cron: str, display_name: str, max_concurrent_run_count: int = 1,
                        max_run_count: int | None = None, service_account: str | None = None) -> Any: ...


class VertexClient(Protocol):
    """The seam between this module and the Vertex SDK (a fake in tests)."""

    def init(self, project: str, location: str, staging_bucket: str) -> None: ...

    def pipeline_job(self, **kwargs: Any) -> PipelineJobHandle: ...


class AiplatformClient:
    """`VertexClient` over `google.cloud.aiplatform` (imported on first use: it is slow)."""

    def init(self, project: str, location: str, staging_bucket: str) -> None:
        from google.cloud import aiplatform

        aiplatform.init(project=project, location=location, staging_bucket=staging_bucket)

    def pipeline_job(self, **kwargs: Any) -> PipelineJobHandle:
        from google.cloud import aiplatform

        return aiplatform.PipelineJob(**kwargs)


def make_client() -> VertexClient:
    """The default client factory; looked up at call time so tests can replace it."""
    return AiplatformClient()


def execute(request: Mapping[str, Any], client_factory: Callable[[], VertexClient] | None = None) -> dict[str, Any]:
    """Sends a request built above, call by call as written in it; returns the request and
    the resource name Vertex gave the job or schedule."""
    client = (client_factory or make_client)()
    client.init(**request["init"])
    job = client.pipeline_job(**request["pipeline_job"])
    if "create_schedule" in request:
        created = job.create_schedule(**request["create_schedule"])
        kind = "schedule"
    else:
        job.submit(**request["submit"])
        created, kind = job, "pipeline_job"
    return {"request": dict(request), kind: getattr(created, "resource_name", None)}


def compile_for_vertex(path: str | Path, fractions: Sequence[float], seeds: Sequence[int],
                       resources: VertexResources | None = None, shape: GraphShape | None = None) -> Path:
    """The experiment pipeline with SFT (and pretraining) as TPU custom jobs and sized CPU
    steps; `shape` default: no transfer domains, no pretraining."""
    from efm.pipelines.experiment import GraphShape, compile_pipeline

    return compile_pipeline(path, fractions, seeds, target="vertex", resources=resources or VertexResources(),
                            shape=shape or GraphShape())


def submit(vertex: VertexConfig, template_path: str | Path, config: RunConfig | str, *,
           display_name: str | None = None,
           client_factory: Callable[[], VertexClient] | None = None) -> dict[str, Any]:
    """Starts one run of a compiled pipeline on Vertex AI Pipelines."""
    return execute(build_pipeline_job_request(vertex, template_path, config, display_name), client_factory)


def schedule(cron: str, vertex: VertexConfig, template_path: str | Path, config: RunConfig | str, *,
             display_name: str | None = None, max_concurrent_run_count: int = 1,
             max_run_count: int | None = None,
             client_factory: Callable[[], VertexClient] | None = None) -> dict[str, Any]:
    """Creates a Vertex AI schedule that runs a compiled pipeline at every cron tick."""
    request = build_schedule_request(vertex, template_path, config, cron, display_name,
                                     max_concurrent_run_count, max_run_count)
    return execute(request, client_factory)
