"""Data validation (TFDV): a clean dataset passes, injected anomalies are caught by name, the
gate's exit codes, the Dataflow options (against a fake), and the LanguageTable import's
clipping report. Fixtures are tiny RLDS datasets; each validation is one in-process Beam run."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from efm.cli import main
from efm.config import ValidationConfig, debug_config
from efm.data import languagetable, validation
from efm.data import rlds as rlds_io
from efm.data.rlds import DatasetError
from efm.data.validation import tables
from efm.envs.base import Episode

DOMAIN = "fixture"
LENGTHS = [5, 6, 7, 8, 9, 10, 11, 12]


def make_episode(i: int, length: int, *, action_scale: float = 0.9, position_dtype: type = np.float32,
                 drop: str | None = None) -> Episode:
    rng = np.random.default_rng(i)
    obs = {"position": rng.uniform(-1, 1, (length + 1, 2)).astype(position_dtype),
           "velocity": rng.normal(size=(length + 1, 2)).astype(np.float32),
           "rgb": rng.integers(0, 256, (length + 1, 8, 12, 3), dtype=np.uint8)}
    if drop:
        obs.pop(drop)
    return Episode(observations=obs,
                   actions=(rng.uniform(-1, 1, (length, 2)) * action_scale).astype(np.float32),
                   instruction=f"move to target {i}", goal={"target": rng.uniform(-1, 1, 2).astype(np.float32)},
                   success=i % 2 == 0, episode_id=f"ep-{i}", optimal_length=float(length))


def write(path: Path, n: int = 32, lengths: list[int] | None = None, **kwargs: object) -> Path:
    lengths = lengths or LENGTHS
    return rlds_io.write_episodes([make_episode(i, lengths[i % len(lengths)], **kwargs) for i in range(n)], path)


@pytest.fixture(scope="module")
def schema_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture domain's schema, inferred from a clean dataset with the domain rules."""
    tmp = tmp_path_factory.mktemp("schema")
    stats = validation.compute_statistics(write(tmp / "clean"), tmp / "stats")
    flat = {t: stats[t][validation.ALL] for t in validation.TABLES}
    schemas = validation.infer_domain_schema(flat, validation.SchemaRules(max_episode_steps=20))
    validation.write_schemas(schemas, flat, DOMAIN, tmp / "schemas")
    return tmp / "schemas"


def check(path: Path, schema_root: Path, tmp_path: Path, **kwargs: object) -> validation.ValidationReport:
    return validation.validate_dataset(path, DOMAIN, tmp_path / "report", schema_root=schema_root, **kwargs)


def test_schema_pins_the_domain_rules(schema_root: Path) -> None:
    schemas = validation.load_schemas(DOMAIN, schema_root)
    steps = {f.name: f for f in schemas["steps"].feature}
    episodes = {f.name: f for f in schemas["episodes"].feature}
    assert (steps["action"].float_domain.min, steps["action"].float_domain.max) == (-1.0, 1.0)
    assert all(steps[f].HasField("bool_domain") for f in ("is_first", "is_last", "is_terminal"))
    assert episodes["length"].int_domain.min == 1 and episodes["length"].int_domain.max == 20
    assert episodes["instruction_bytes"].int_domain.min == 1
    assert episodes["instruction"].presence.min_fraction == 1.0
    # camera images: summarised by format and size, not per pixel
    assert "observation/rgb" not in steps
    assert (steps["observation/rgb/height"].int_domain.min, steps["observation/rgb/width"].int_domain.max) == (8, 12)
    assert steps["action"].drift_comparator.jensen_shannon_divergence.threshold > 0


def test_every_observation_mode_has_its_reviewed_schema_in_the_repository(tmp_path: Path) -> None:
    """Each domain's defaults, and Aloha with its cameras rendered, name a schema that ships
    with the repository; the camera schema holds the state schema's features and the two
    stacked images (summarised), and a missing one names the command that infers it."""
    from efm.config import DOMAINS, aloha_camera_config, default_config

    names = {validation.schema_name(default_config(d)) for d in DOMAINS}
    cameras = validation.schema_name(aloha_camera_config())
    assert names == set(DOMAINS) and cameras == "aloha-insertion-cameras"
    steps = {name: {f.name for f in validation.load_schemas(name)["steps"].feature} for name in names | {cameras}}
    assert steps[cameras] - steps["aloha-insertion"] == {
        f"observation/{camera}/{part}" for camera in ("rgb", "rgb_wrist")
        for part in ("format", "height", "width", "channels", "bytes")}
    assert steps["aloha-insertion"] < steps[cameras]
    with pytest.raises(DatasetError, match=r"--domain aloha-insertion --config configs/aloha-cameras\.json"):
        validation.load_schemas(cameras, tmp_path)


def test_a_clean_dataset_passes_and_the_report_is_written(schema_root: Path, tmp_path: Path) -> None:
    report = check(write(tmp_path / "other", n=24), schema_root, tmp_path)
    assert report.ok, report.summary()
    assert report.counts["all"] == {"episodes": 24, "steps": sum(LENGTHS[i % 8] + 1 for i in range(24))}
    out = tmp_path / "report"
    assert json.loads((out / validation.REPORT_JSON).read_text())["ok"] is True
    page = (out / validation.REPORT_HTML).read_text()
    assert "<img" in page and "observation/rgb/format" in page and "passed" in page
    assert (out / validation.FACETS_HTML).is_file()


def make_bad_episode(i: int) -> Episode:
    """One anomaly per episode kind: actions out of range, a missing feature, zero-length
    episodes, a wrong dtype."""
    if i % 4 == 0:
        e = make_episode(i, 6, action_scale=3.0)
    elif i % 4 == 1:
        e = make_episode(i, 0)
    else:
        e = make_episode(i, 7)
    e.observations.pop("velocity")
    e.observations["position"] = e.observations["position"].astype(np.int32)
    return e


def test_injected_anomalies_are_caught_by_name(schema_root: Path, tmp_path: Path) -> None:
    path = rlds_io.write_episodes([make_bad_episode(i) for i in range(16)], tmp_path / "bad")
    report = check(path, schema_root, tmp_path)
    expected = {
        "steps:action:FLOAT_TYPE_BIG_FLOAT", "steps:action:FLOAT_TYPE_SMALL_FLOAT",  # out of range
        "steps:observation/velocity:SCHEMA_MISSING_COLUMN",  # a missing feature
        "episodes:length:INT_TYPE_SMALL_INT",  # zero-length episodes
        "steps:observation/position:UNEXPECTED_DATA_TYPE",  # a wrong dtype
    }
    assert not report.ok
    assert expected <= {a.name for a in report.failed}, report.summary()
    assert all(e in report.summary() for e in expected)
    # known drift, accepted by name, prefix or glob: reported, but passes
    accepted = report.accepting(["steps:action", "steps:observation/*", "episodes:length:INT_TYPE_SMALL_INT"])
    assert accepted.ok and len(accepted.anomalies) == len(report.anomalies) and "(accepted)" in accepted.summary()
    page = (tmp_path / "report" / validation.REPORT_HTML).read_text()
    assert all(e in page for e in expected) and "FAILED" in page
    assert set(json.loads((tmp_path / "report" / validation.REPORT_JSON).read_text())["failed"]) >= expected


def test_accepted_anomaly_names() -> None:
    assert validation.is_accepted("steps:action:FLOAT_TYPE_BIG_FLOAT", ["*"])
    assert validation.is_accepted("steps:action:FLOAT_TYPE_BIG_FLOAT", ["steps:action"])
    assert validation.is_accepted("episodes:length:INT_TYPE_SMALL_INT", ["episodes:length:*"])
    assert not validation.is_accepted("steps:action_extras/x:FLOAT_TYPE_BIG_FLOAT", ["steps:action"])
    report = validation.ValidationReport("d", "p", [validation.Anomaly(
        "steps:action:FLOAT_TYPE_BIG_FLOAT", "steps", "action", "FLOAT_TYPE_BIG_FLOAT", "too big", "schema",
        accepted=True)])
    assert report.ok and "(accepted)" in report.summary()


def test_drift_against_the_reference_and_skew_between_branch_splits(schema_root: Path, tmp_path: Path) -> None:
    """Actions shrunk 5x stay in range but drift from the domain's reference statistics; a
    branch whose validation split is the shrunk half is skewed against its training split."""
    episodes = [make_episode(i, LENGTHS[i % 8], action_scale=0.9 if i < 32 else 0.1) for i in range(64)]
    path = rlds_io.write_episodes(episodes, tmp_path / "drifted")
    stats = validation.compute_statistics(path, tmp_path / "stats", {
        "train": [f"ep-{i}" for i in range(32)], "validation": [f"ep-{i}" for i in range(32, 64)]})
    schemas = validation.load_schemas(DOMAIN, schema_root)
    found, skipped = validation.validate_statistics(stats, schemas, validation.load_reference(DOMAIN, schema_root),
                                                    {"f0.5-s0": ("train", "validation")}, min_episodes=16)
    assert {(a.name, a.check, a.slice) for a in found} == {
        ("steps:action:COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH", "skew", "f0.5-s0")}
    shrunk = {t: {**stats[t], validation.ALL: stats[t]["validation"]} for t in validation.TABLES}
    found, _ = validation.validate_statistics(shrunk, schemas, validation.load_reference(DOMAIN, schema_root),
                                              min_episodes=16)
    assert {(a.name, a.check) for a in found} == {("steps:action:COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH", "drift")}
    assert not skipped and stats["episodes"]["train"].datasets[0].num_examples == 32
    # with too few episodes the comparisons are left out, and the report says so
    _, skipped = validation.validate_statistics(stats, schemas, validation.load_reference(DOMAIN, schema_root),
                                                {"f0.5-s0": ("train", "validation")})
    assert len(skipped) == 2


def test_branch_slices_are_the_subsample_splits() -> None:
    from efm.data.subsample import nested_fractions, split_validation

    ids = [f"ep-{i}" for i in range(100)]
    slices, branches = validation.branch_slices(ids, 10, [0.1, 0.5], [3])
    train, val = split_validation(ids, 10, 3)
    assert slices["validation-s3"] == val
    assert slices["train-f0.5-s3"] == nested_fractions(train, [0.5], 3)[0.5]
    assert branches == {"f0.1-s3": ("train-f0.1-s3", "validation-s3"), "f0.5-s3": ("train-f0.5-s3", "validation-s3")}


def test_image_headers() -> None:
    png = tf.io.encode_png(np.zeros((7, 9, 3), np.uint8)).numpy()
    jpeg = tf.io.encode_jpeg(np.zeros((5, 11, 3), np.uint8)).numpy()
    assert tables._png_or_jpeg_header(png) == ("png", 7, 9, 3)
    assert tables._png_or_jpeg_header(jpeg) == ("jpeg", 5, 11, 3)
    assert tables._png_or_jpeg_header(b"junk")[0] == "unknown"


class _Stop(Exception):
    pass


def test_dataflow_options_are_built_from_the_config_and_the_step(tmp_path: Path) -> None:
    """On Vertex the step passes its project, region and artifact URI; nothing is sent (fake)."""
    from apache_beam.options.pipeline_options import (
        GoogleCloudOptions,
        StandardOptions,
        WorkerOptions,
    )

    from efm.components import EFM_IMAGE

    cfg = debug_config().replace(validation=ValidationConfig(
        runner="DataflowRunner", dataflow_project="my-project", dataflow_region="europe-west4", dataflow_max_workers=8))
    episodes = write(tmp_path / "ds", n=4)
    seen = []

    def fake_pipeline(options: object) -> None:
        seen.append(options)
        raise _Stop

    with pytest.raises(_Stop):
        validation.run_validation(cfg, episodes, tmp_path / "out", temp_root=f"{validation.GCS_FUSE_PREFIX}bucket/pipeline-root/validate/statistics",
                                  job_name="efm-experiment-2026", make_pipeline=fake_pipeline)
    (options,) = seen
    gcp = options.view_as(GoogleCloudOptions)
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    assert (gcp.project, gcp.region) == ("my-project", "europe-west4")
    assert gcp.temp_location == "gs://bucket/pipeline-root/validate/statistics/dataflow"
    assert gcp.job_name == "efm-validate-efm-experiment-2026"
    assert options.view_as(WorkerOptions).sdk_container_image == EFM_IMAGE
    assert options.view_as(WorkerOptions).max_num_workers == 8
    with pytest.raises(ValueError, match="project"):
        validation.beam_options(validation.BeamSettings(runner="DataflowRunner", region="us-central1",
                                                        temp_location="gs://b/t"))
    with pytest.raises(ValueError, match="runner"):
        ValidationConfig(runner="SparkRunner")


def test_dataflow_validations_never_share_a_statistics_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two validations with one configured temp location (a schedule's runs at once) write their
    statistics to folders of their own, so neither reads the other's."""
    from efm.data.validation import run

    cfg = debug_config().replace(validation=ValidationConfig(
        runner="DataflowRunner", dataflow_project="p", dataflow_region="r", dataflow_temp_location="gs://b/tmp"))
    episodes = write(tmp_path / "ds", n=4)
    folders = []

    def record(directory: object, out_dir: str, *args: object, **kwargs: object) -> None:
        folders.append(out_dir)
        raise _Stop

    monkeypatch.setattr(run, "compute_statistics", record)
    for _ in range(2):
        with pytest.raises(_Stop):
            validation.run_validation(cfg, episodes, tmp_path / "out")
    assert all(f.startswith("gs://b/tmp/stats/") for f in folders) and folders[0] != folders[1]


def test_submit_passes_project_and_region_to_a_dataflow_validation() -> None:
    cfg = debug_config().replace(validation=ValidationConfig(runner="DataflowRunner"))
    v = validation.on_dataflow_of(cfg, "my-project", "us-central1").validation
    assert (v.dataflow_project, v.dataflow_region) == ("my-project", "us-central1")
    pinned = cfg.replace(validation=ValidationConfig(runner="DataflowRunner", dataflow_region="europe-west4"))
    assert validation.on_dataflow_of(pinned, "p", "us-central1").validation.dataflow_region == "europe-west4"
    assert validation.on_dataflow_of(debug_config(), "p", "r") == debug_config()  # DirectRunner: unchanged


@pytest.fixture(scope="module")
def pointmass(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A clean debug pointmass dataset, and a copy whose first episodes have a wrong action scale."""
    from efm.stages import dataset_stage

    tmp = tmp_path_factory.mktemp("pointmass")
    dataset_stage(debug_config(), tmp / "clean", progress=False)
    bad = list(rlds_io.iter_episodes(tmp / "clean"))
    for e in bad[:3]:
        e.actions = e.actions * 10.0
    rlds_io.write_episodes(bad, tmp / "bad")
    return {"clean": tmp / "clean", "bad": tmp / "bad"}


def test_the_gate_exits_0_on_the_domain_schema_and_2_with_named_anomalies(pointmass: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    """`efm data validate` against the repository's reviewed pointmass schema."""
    with redirect_stdout(io.StringIO()) as out, redirect_stderr(io.StringIO()):
        assert main(["data", "validate", str(pointmass["clean"]), "--domain", "pointmass", "--debug",
                     "--fractions", "0.5", "--seeds", "0", "--out", str(tmp_path / "report")]) == 0
    assert json.loads(out.getvalue())["ok"] is True
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()) as err:
        assert main(["data", "validate", str(pointmass["bad"]), "--domain", "pointmass", "--debug"]) == 2
    assert "steps:action:FLOAT_TYPE_BIG_FLOAT" in err.getvalue()


def test_the_pipeline_step_fails_with_its_report_in_the_log_outputs_and_mlflow(
        pointmass: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The validate component's body on a dataset with a wrong action scale (kfp artifacts as
    plain objects, a local MLflow store)."""
    from kfp.dsl import HTML, Artifact, Dataset, Metrics
    from mlflow.tracking import MlflowClient

    from efm.components import stages
    from efm.components.tracking import RUN_ID, start_experiment
    from efm.tracking import Tracker, local_artifacts, local_store

    uri = local_store(tmp_path)
    Tracker(uri, artifact_location=local_artifacts(tmp_path))
    cfg = debug_config()
    parent = start_experiment(cfg, uri, "run-1", "f0.5-s0")  # the step finds it by the KFP run name
    art = {n: cls(name=n, uri=str(tmp_path / "kfp" / n)) for n, cls in
           (("statistics", Artifact), ("page", HTML), ("facets", HTML), ("metrics", Metrics))}
    (tmp_path / "kfp").mkdir()
    episodes = Dataset(name="episodes", uri=str(pointmass["bad"]), metadata={RUN_ID: ""})
    with pytest.raises(validation.ValidationError, match="steps:action:FLOAT_TYPE_BIG_FLOAT"):
        stages.validate.python_func(config_json=cfg.to_json(), episodes=episodes, fractions="0.5", seeds="0",
                                    tracking_uri=uri, kfp_run="run-1", kfp_task="validate",
                                    **art)
    assert "steps:action:FLOAT_TYPE_BIG_FLOAT" in capsys.readouterr().out  # the step's log
    assert "steps:action:FLOAT_TYPE_BIG_FLOAT" in Path(art["page"].path).read_text()  # its KFP outputs
    assert art["statistics"].metadata["ok"] is False and art["metrics"].metadata["validation.anomalies"] >= 1
    assert (Path(art["statistics"].path) / "steps_stats.pb").is_file()
    client = MlflowClient(uri)  # and MLflow: a failed run with the report
    run = client.get_run(art["statistics"].metadata[RUN_ID])
    assert run.info.status == "FAILED" and run.data.metrics["validation.anomalies"] >= 1
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert {"validation.html", "validation.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


def test_languagetable_import_reports_clipping_and_refuses_a_wrong_scale(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    source = languagetable.write_languagetable_fixture(tmp_path / "lt", 4, 6, seed=0, image_shape=(12, 16, 3))
    stats = languagetable.import_languagetable(source, tmp_path / "ok", image_size=(6, 8))
    assert stats["clipped"]["action"]["values"] == 0 and stats["clipped"]["action"]["total"] == 4 * 5 * 2
    monkeypatch.setattr(languagetable, "MAX_ACTION", 0.005)  # 6x too small: most actions saturate
    with pytest.raises(DatasetError, match=r"feature 'action': \d+ of 40 values"):
        languagetable.import_languagetable(source, tmp_path / "bad", image_size=(6, 8))
    assert not (tmp_path / "bad").exists()
    stats = languagetable.import_languagetable(source, tmp_path / "allowed", image_size=(6, 8),
                                               max_clipped_fraction=1.0)
    assert 0 < stats["clipped"]["action"]["fraction"] <= 1.0
    assert np.abs(np.concatenate([e.actions for e in rlds_io.iter_episodes(tmp_path / "allowed")])).max() <= 1.0
