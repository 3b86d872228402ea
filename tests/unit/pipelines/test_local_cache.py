"""The local task cache (efm.pipelines.cache) on a two-task pipeline of tiny components.

No `from __future__ import annotations`: kfp reads the components' annotations as types.
"""

import pickle
from pathlib import Path

import pytest
from kfp import dsl, local

from efm.pipelines.cache import ATTEMPT_SUFFIX, ENTRY_SUFFIX, LocalTaskCache, step_name

IMAGE = "python:3.11"  # not used locally: tasks run in this interpreter


@dsl.component(install_kfp_package=False, base_image=IMAGE)
def make(text: str, out: dsl.Output[dsl.Dataset], scores: dsl.Output[dsl.Metrics],
         kfp_run: str = dsl.PIPELINE_JOB_NAME_PLACEHOLDER):
    from pathlib import Path

    Path(out.path).write_text(text)
    scores.log_metric("length", len(text))  # metadata only: no file at scores.path
    out.metadata["made_in"] = kfp_run  # like a stage's MLflow run id: travels with the artifact


@dsl.component(install_kfp_package=False, base_image=IMAGE)
def read(data: dsl.Input[dsl.Dataset], suffix: str, kfp_run: str = dsl.PIPELINE_JOB_NAME_PLACEHOLDER) -> str:
    from pathlib import Path

    return f"{Path(data.path).read_text()}{suffix} made in {data.metadata['made_in']}, read in {kfp_run}"


@dsl.pipeline(name="cache-test")
def two_steps(text: str, suffix: str) -> str:
    first = make(text=text).set_caching_options(enable_caching=True)
    return read(data=first.outputs["out"], suffix=suffix).set_caching_options(enable_caching=False).output


def _run(root: Path, text: str = "a", suffix: str = "!", enabled: bool = True,
         rerun: tuple[str, ...] = ()) -> tuple[str, LocalTaskCache]:
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root / "pipeline_root"),
               raise_on_error=True)
    cache = LocalTaskCache.for_pipeline(two_steps, root / "cache", enabled, rerun)
    with cache.installed():
        task = two_steps(text=text, suffix=suffix)
    return task.output, cache


def test_a_second_run_reuses_cached_tasks_and_their_artifacts(tmp_path: Path) -> None:
    out1, c1 = _run(tmp_path)
    assert (c1.executed, c1.cached) == (["make", "read"], [])
    assert c1.cacheable == frozenset({"comp-make"})  # read is compiled without caching
    out2, c2 = _run(tmp_path)
    # The run-name placeholder is an input of make, yet it does not change the key.
    assert (c2.executed, c2.cached) == (["read"], ["make"])
    assert set(c1.seconds) == {"make", "read"} and set(c2.seconds) == {"read"}  # a cached task took no time
    assert all(t > 0 for t in c1.seconds.values())
    assert c1.run_name != c2.run_name
    # read got the first run's artifact (same file, same metadata) and ran in the second run
    assert out2 == f"a! made in {c1.run_name}, read in {c2.run_name}"
    assert out1 == f"a! made in {c1.run_name}, read in {c1.run_name}"
    assert not (tmp_path / "pipeline_root" / c2.run_name / "make").exists()


def test_other_inputs_a_disabled_cache_or_a_deleted_artifact_execute_again(tmp_path: Path) -> None:
    _, c1 = _run(tmp_path)
    _, c2 = _run(tmp_path, text="b")  # another input: another key
    assert c2.cached == []
    _, c3 = _run(tmp_path, enabled=False)
    assert c3.cached == [] and c3.executed == ["make", "read"]
    (entry,) = [p for p in (tmp_path / "cache").iterdir()
                if pickle.loads(p.read_bytes())["run"] == c1.run_name and p.suffix == ENTRY_SUFFIX]
    (tmp_path / "pipeline_root" / c1.run_name / "make" / "out").unlink()
    _, c4 = _run(tmp_path)  # c1's entry points to a missing file: a miss; c2 was "b"
    assert c4.cached == [] and entry.exists()


def test_a_rerun_step_executes_though_cached_and_its_outputs_replace_the_entry(tmp_path: Path) -> None:
    _run(tmp_path)
    out2, c2 = _run(tmp_path, rerun=("make",))
    assert (c2.executed, c2.cached) == (["make", "read"], [])
    assert out2 == f"a! made in {c2.run_name}, read in {c2.run_name}"  # read got the new artifact
    out3, c3 = _run(tmp_path)
    assert c3.cached == ["make"] and out3.startswith(f"a! made in {c2.run_name},")
    assert len(list((tmp_path / "cache").glob(f"*{ENTRY_SUFFIX}"))) == 1
    with pytest.raises(ValueError, match="no step evaluate in this pipeline; its steps: make, read"):
        LocalTaskCache.for_pipeline(two_steps, tmp_path / "cache", rerun=("make", "evaluate"))
    # A step's second and later tasks (another branch's) are kfp-numbered: one name reruns them all.
    assert [step_name(t) for t in ("self-improve", "self-improve-2", "report-append")] == [
        "self-improve", "self-improve", "report-append"]


def test_a_failed_task_is_not_cached_and_the_run_name_is_known(tmp_path: Path) -> None:
    @dsl.component(install_kfp_package=False, base_image=IMAGE)
    def boom(x: str) -> str:
        raise RuntimeError(x)

    @dsl.pipeline(name="fails")
    def failing(x: str) -> str:
        return boom(x=x).set_caching_options(enable_caching=True).output

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               raise_on_error=True)
    cache = LocalTaskCache.for_pipeline(failing, tmp_path / "cache")
    with pytest.raises(RuntimeError), cache.installed():
        failing(x="no")
    assert cache.run_name and cache.run_name.startswith("fails-")
    assert not list((tmp_path / "cache").glob(f"*{ENTRY_SUFFIX}"))


@dsl.component(install_kfp_package=False, base_image=IMAGE)
def checkpointed(needed: int, work: dsl.Output[dsl.Artifact]) -> int:
    """Saves one 'checkpoint' per attempt in its artifact and is interrupted until it has `needed`."""
    from pathlib import Path

    root = Path(work.path)
    root.mkdir(parents=True, exist_ok=True)
    done = len(list(root.iterdir())) + 1
    (root / f"checkpoint_{done}").write_text("")
    if done < needed:
        raise RuntimeError(f"interrupted after checkpoint {done}")
    return done


@dsl.pipeline(name="resume-test")
def long_step(needed: int) -> int:
    return checkpointed(needed=needed).set_caching_options(enable_caching=True).outputs["Output"]


def test_a_rerun_resumes_an_unfinished_task_from_what_it_left(tmp_path: Path) -> None:
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               raise_on_error=True)

    def run(needed: int = 3) -> tuple[int | None, LocalTaskCache]:
        cache = LocalTaskCache.for_pipeline(long_step, tmp_path / "cache")
        try:
            with cache.installed():
                return long_step(needed=needed).output, cache
        except RuntimeError:
            return None, cache

    first, c1 = run()
    assert first is None and c1.resumed == []
    second, c2 = run()  # starts from the first attempt's checkpoint
    assert second is None and c2.resumed == ["checkpointed"]
    third, c3 = run()
    assert third == 3 and c3.resumed == ["checkpointed"]
    # every attempt's files are in the finished task's artifact; the first run's are untouched
    assert sorted(p.name for p in (tmp_path / "root" / c3.run_name / "checkpointed" / "work").iterdir()) == [
        "checkpoint_1", "checkpoint_2", "checkpoint_3"]
    assert [p.name for p in (tmp_path / "root" / c1.run_name / "checkpointed" / "work").iterdir()] == ["checkpoint_1"]
    fourth, c4 = run()  # finished: cached, nothing left to resume
    assert fourth == 3 and c4.cached == ["checkpointed"] and c4.resumed == []
    assert not list((tmp_path / "cache").glob(f"*{ATTEMPT_SUFFIX}"))
    fresh, c5 = run(needed=1)  # other inputs: another key, a fresh start
    assert fresh == 1 and c5.resumed == []
