"""cxr_max.sources: the one rule for where data comes from (and the synthetic default)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import cxr_max.synthetic
from cxr_max.sources import DataSource, resolve_source, synthetic_world_of


@pytest.fixture()
def fake_world(tmp_path, monkeypatch):
    """ensure_synthetic replaced by a recorder returning a world-shaped folder (nothing is generated)."""
    world = tmp_path / "world"
    for sub in ("mimic-cxr-jpg", "mimic-cxr", "trajectories", "ms-cxr-t"):
        (world / sub).mkdir(parents=True)
    (world / "truth.jsonl").write_text("")
    calls = []

    def ensure_synthetic(**kwargs):
        calls.append(kwargs)
        return world

    monkeypatch.setattr(cxr_max.synthetic, "ensure_synthetic", ensure_synthetic)
    return world, calls


def test_no_data_means_the_synthetic_world_for_every_location(fake_world):
    world, calls = fake_world
    src = resolve_source()
    assert calls == [{"seed": 0}]
    assert src == DataSource(data_dir=world / "mimic-cxr-jpg", dicom_dir=world / "mimic-cxr",
                             trajectories=world / "trajectories", preferences=None, ms_cxr_t=world / "ms-cxr-t",
                             world=world, default_world=True)
    assert src.synthetic and src.describe() == {"source": "embedded synthetic", "synthetic": True, "location": None}
    (world / "preferences").mkdir()
    assert resolve_source().preferences == world / "preferences"  # only when the world has them


def test_the_world_fills_only_what_was_not_given(fake_world, tmp_path):
    world, calls = fake_world
    mine = tmp_path / "mine.jsonl"
    src = resolve_source(trajectories=mine, dicom_dir=tmp_path, ms_cxr_t=tmp_path / "pairs.csv", seed=3,
                         synthetic_patients=12)
    assert calls == [{"seed": 3, "n_patients": 12}]
    assert (src.data_dir, src.trajectories, src.dicom_dir, src.ms_cxr_t) == (
        world / "mimic-cxr-jpg", mine, tmp_path, tmp_path / "pairs.csv")
    assert (src.seed, src.synthetic_patients) == (3, 12)


def test_a_data_dir_is_used_as_given_and_nothing_synthetic_is_added(fake_world, tmp_path):
    _, calls = fake_world
    src = resolve_source(tmp_path / "jpg", tmp_path / "traj")
    assert calls == []
    assert src == DataSource(data_dir=tmp_path / "jpg", trajectories=tmp_path / "traj")
    assert not src.synthetic and src.describe() == {"source": "mimic-cxr-jpg", "synthetic": False,
                                                    "location": str(tmp_path / "jpg")}
    # a location the caller needs is missing next to a real copy: an error naming it, not the world's files
    with pytest.raises(ValueError, match=r"compare: data_dir=.* without trajectories="):
        resolve_source(tmp_path / "jpg", needs=("images", "trajectories"), stage="compare")
    assert calls == []
    assert resolve_source("~/jpg").data_dir == Path.home() / "jpg"


def test_an_explicit_synthetic_world_is_reported_as_synthetic(tmp_path):
    world = tmp_path / "w"
    (world / "mimic-cxr-jpg").mkdir(parents=True)
    (world / "truth.jsonl").write_text("")
    assert synthetic_world_of(world / "mimic-cxr-jpg") == world and synthetic_world_of(world) == world
    assert synthetic_world_of(tmp_path) is None
    src = resolve_source(world / "mimic-cxr-jpg")
    assert src.world == world and src.synthetic and not src.default_world
    assert src.describe() == {"source": "embedded synthetic", "synthetic": True,
                              "location": str(world / "mimic-cxr-jpg")}
    assert src.trajectories is None  # not needed: not filled
    # a needed location not given comes from that same world (not from the default one)
    needing = resolve_source(world / "mimic-cxr-jpg", needs=("images", "trajectories", "ms_cxr_t"))
    assert (needing.trajectories, needing.ms_cxr_t, needing.preferences) == (world / "trajectories", world / "ms-cxr-t", None)


def test_no_world_when_every_needed_location_is_given(fake_world, tmp_path):
    _, calls = fake_world
    src = resolve_source(trajectories=tmp_path / "t", needs=("trajectories",))
    assert calls == [] and src.data_dir is None and not src.synthetic
    assert src.describe() == {"source": "files", "synthetic": None, "location": str(tmp_path / "t")}
    # the same call needing the images too: the world provides them (and keeps the given trajectories)
    both = resolve_source(trajectories=tmp_path / "t", needs=("images", "trajectories"))
    assert len(calls) == 1 and both.trajectories == tmp_path / "t" and both.default_world


def test_require_data_refuses_the_default_world(fake_world):
    _, calls = fake_world
    with pytest.raises(ValueError, match=r"learn: this job requires a data location \(data_dir=.*synthetic"):
        resolve_source(require_data=True, stage="learn")
    assert calls == []
    with pytest.raises(ValueError, match=r"unknown need\(s\) \['pixels'\]"):
        resolve_source(needs=("pixels",))


def test_data_source_is_frozen(tmp_path):
    src = resolve_source(tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        src.data_dir = None


def test_the_real_default_world(synthetic_root):
    src = resolve_source()
    assert src.world == synthetic_root and src.data_dir == synthetic_root / "mimic-cxr-jpg"
    assert src.trajectories.is_dir() and (src.data_dir / "mimic-cxr-2.0.0-metadata.csv.gz").is_file()


def test_the_builder_resolves_its_sources_here(synthetic_root, tmp_path):
    from cxr_max.builder import CxrMax

    b = CxrMax(config_name="trajectories", images="path", cache_dir=str(tmp_path / "hf"))
    b._split_generators(None)
    assert b._require_context().source == resolve_source()
    jpg = str(synthetic_root / "mimic-cxr-jpg")
    b = CxrMax(config_name="mimic", data_dir=jpg, images="path", cache_dir=str(tmp_path / "hf2"))
    b._split_generators(None)
    assert b._require_context().source == resolve_source(jpg)


# -- the callers that used to decide the synthetic default themselves ---------------------------------------------


def _real_copy(tmp_path) -> Path:
    real = tmp_path / "real" / "mimic-cxr-jpg"
    real.mkdir(parents=True, exist_ok=True)
    return real


def test_drift_report_on_a_real_copy_needs_its_trajectories(fake_world, tmp_path, capsys):
    """A real --data_dir without --trajectories is an error naming the option, never the synthetic world's."""
    from cxr_max.cli.main import main

    code = main(["drift-report", "--data_dir", str(_real_copy(tmp_path)), "--out", str(tmp_path / "rep")])
    err = capsys.readouterr().err
    assert code == 1
    assert "drift-report" in err and "trajectories=" in err
    assert fake_world[1] == []  # no world was built


def test_compare_stage_on_a_real_copy_needs_its_trajectories(fake_world, tmp_path):
    from cxr_max.stages import compare

    args = compare.CompareArguments(output_dir=str(tmp_path / "out"), data_dir=str(_real_copy(tmp_path)))
    with pytest.raises(ValueError, match=r"compare: data_dir=.* without trajectories="):
        compare.main(args)
    assert fake_world[1] == []


def test_apo_reads_every_folder_from_one_source(fake_world, tmp_path):
    from cxr_max.stages import apo

    a, world = apo.with_world(apo.APOArguments(output_dir=str(tmp_path / "o")))
    assert (Path(a.data_dir), Path(a.trajectories), world) == (
        fake_world[0] / "mimic-cxr-jpg", fake_world[0] / "trajectories", fake_world[0])
    with pytest.raises(ValueError, match="apo: data_dir=.* without trajectories="):
        apo.with_world(apo.APOArguments(data_dir=str(_real_copy(tmp_path))))
    traj = tmp_path / "t.jsonl"
    a, world = apo.with_world(apo.APOArguments(data_dir=str(_real_copy(tmp_path)), trajectories=str(traj)))
    assert world is None and Path(a.trajectories) == traj


def test_describe_data_of_a_folder_is_the_sources_record(tmp_path):
    from cxr_max.training.recipe_utils import describe_data

    real = _real_copy(tmp_path)
    assert describe_data(data_dir=str(real)) == resolve_source(real).describe() == {
        "source": "mimic-cxr-jpg", "synthetic": False, "location": str(real)}
    (real.parent / "truth.jsonl").write_text("")
    assert describe_data(data_dir=str(real))["synthetic"] is True
