"""The CLI's own logic: what it checks and what it hands the stages."""

from __future__ import annotations

from pathlib import Path

import pytest

from efm import cli


def test_an_input_given_by_uri_keeps_its_prefix(fake_gcs: Path) -> None:
    (fake_gcs / "ds").mkdir()
    assert str(cli._existing("gs://bucket/ds", "dataset")) == "gs://bucket/ds"  # pathlib: gs:/bucket/ds
    with pytest.raises(FileNotFoundError, match="dataset not found: gs://bucket/nope"):
        cli._existing("gs://bucket/nope", "dataset")


def test_a_config_that_names_another_domain_is_refused() -> None:
    """The rest of the config would keep the other domain's defaults (model, tokenizer)."""
    with pytest.raises(ValueError, match=r"sets env\.domain 'tabletop' but the domain is 'pointmass'"):
        cli.load_config("pointmass", '{"env": {"domain": "tabletop"}}')
    assert cli.load_config("tabletop", '{"env": {"domain": "tabletop"}}').domain == "tabletop"


def test_zero_episodes_or_steps_are_refused_not_ignored(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["dataset", "--debug", "--episodes", "0", "--out", str(tmp_path / "ds")]) == 2
    assert "data.num_episodes" in capsys.readouterr().err and not (tmp_path / "ds").exists()
    assert cli.main(["pretrain", "--debug", "--domain", "tabletop", "--steps", "0", "--out", str(tmp_path / "p")]) == 2
    assert "pretrain.num_steps" in capsys.readouterr().err


def test_the_ui_port_is_checked_by_the_parser() -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["ui", "--out", "runs", "--port", "99999"])
    assert cli.build_parser().parse_args(["ui", "--out", "runs", "--port", "5001"]).port == 5001


@pytest.mark.parametrize("command", [["pretrain", "--debug", "--domain", "tabletop", "--steps", "1"], ["run", "--debug"]])
def test_an_out_that_is_a_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, command: list[str]) -> None:
    (tmp_path / "afile").write_text("kept")
    assert cli.main([*command, "--out", str(tmp_path / "afile")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"efm {command[0]}: error: {tmp_path / 'afile'} exists and is not a directory"
    assert (tmp_path / "afile").read_text() == "kept"


def test_writing_a_schema_refuses_another_domain_and_keeps_a_reviewed_one(tmp_path: Path) -> None:
    """`efm data validate --write-schema` replaces the committed schema only with --overwrite,
    and never from another domain's demonstrations."""
    from efm.config import debug_config
    from efm.data import validation
    from efm.data.rlds import DatasetError
    from efm.stages import dataset_stage

    cfg = debug_config()
    dataset_stage(cfg.overridden({"data": {"num_episodes": 4, "validation_episodes": 1}}), tmp_path / "ds", progress=False)
    with pytest.raises(DatasetError, match="holds pointmass demonstrations, not tabletop"):
        validation.infer_and_write_schema(debug_config("tabletop"), tmp_path / "ds", root=tmp_path / "schemas")
    reviewed = tmp_path / "schemas" / "pointmass" / "steps_schema.pbtxt"
    reviewed.parent.mkdir(parents=True)
    reviewed.write_text("# reviewed")
    with pytest.raises(ValueError, match=r"holds the pointmass schema already .*--overwrite replaces it"):
        validation.infer_and_write_schema(cfg, tmp_path / "ds", root=tmp_path / "schemas")
    assert reviewed.read_text() == "# reviewed"
