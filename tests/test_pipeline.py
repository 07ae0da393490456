"""End to end: the sample config, run by the real runner on a Dask LocalCluster,
scored against the sample movie's ground truth; config errors; resume."""

from pathlib import Path

import numpy as np
import pytest

from pipeline import load_results
from pipeline.cli.app import main as cli_main
from pipeline.errors import InputError
from pipeline.eval.evaluate import evaluate
from pipeline.io import store
from pipeline.run.config import load_config
from pipeline.run.runner import STAGES, Run, run
from pipeline.sim.truth import load_truth

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_CONFIG = ROOT / "configs" / "sample.yaml"


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    config = load_config(SAMPLE_CONFIG, [f"output.dir={out}"])
    path = run(config)
    return config, load_results(path)


def test_sample_run_matches_ground_truth(sample_run):
    config, results = sample_run
    truth = load_truth(config.input.path)
    scores = evaluate(results, truth)
    assert scores["segmentation_ap50"] >= 0.9
    assert scores["cell_id_consistency"] >= 0.95
    assert scores["detection_precision"] >= 0.95 and scores["detection_recall"] >= 0.95
    assert scores["localization_rmse_px"] < 2 * scores["localization_crlb_px"]
    assert scores["state_accuracy"] >= 0.9
    for kind in ("internalization", "release"):  # ~20 true events each: the 95 % CI must cover truth
        assert scores[f"k_{kind}_per_min_ci_covers_true"], kind


def test_summary_puts_each_cells_truth_beside_its_estimate(sample_run):
    """The printed summary pairs every found cell with the simulated cell under it."""
    from pipeline.eval.report import summary_text

    config, results = sample_run
    truth = load_truth(config.input.path)
    lines = summary_text(results, truth).splitlines()
    rows = lines[lines.index(next(line for line in lines if line.startswith("per cell:"))) + 1:]
    assert len(rows) == len(results.cells) == len(truth.cells)
    true_ids = [int(row.rsplit("(", 1)[1].rstrip(")")) for row in rows]
    assert sorted(true_ids) == sorted(truth.cells["cell_id"])  # one-to-one
    for row, true_id in zip(rows, true_ids):
        n_int_found, n_int_true = int(row.split()[7]), int(row.split()[-3])
        expected = truth.cells.set_index("cell_id").loc[true_id, "n_internalization"]
        assert n_int_true == expected and abs(n_int_found - n_int_true) <= 2


def test_store_holds_every_part_of_the_contract(sample_run):
    config, results = sample_run
    assert results.attrs["complete"] and list(results.attrs["stages_completed"]) == list(STAGES)
    assert results.attrs["config"]["segment"]["model"] == config.segment.model
    assert results.attrs["input_checksum"].startswith("sha256:")
    assert results.pixel_size_um == pytest.approx(0.2) and results.frame_interval_s == pytest.approx(3.0)
    labels = results.cell_labels
    assert labels.shape == (70, 256, 256) and hasattr(labels, "dask")
    assert set(results.particles["state"]) <= {"extracellular", "membrane_bound", "vesicular", "released"}
    assert {"track_id", "cell_id", "distance_um", "zone", "state"} <= set(results.particles.columns)
    assert set(results.events["kind"]) <= {"binding", "unbinding", "internalization", "release"}
    ds = results.kinetics
    assert set(ds.dims) == {"cell_id", "frame"} and ds.sizes["frame"] == 70
    assert ds["cum_internalization"].isel(frame=-1).sum() == (results.events["kind"] == "internalization").sum()
    assert set(results.cells["cell_id"]) == set(ds["cell_id"].values)
    assert (results.path / "tracks.geff").is_dir()


def test_run_store_is_an_ome_zarr_image_with_geff_linked_to_labels(sample_run):
    """Issue 15: a real run's store validates as an NGFF 0.5 image (ome-zarr-models), with geff's validator."""
    import geff
    import zarr
    from ome_zarr_models.v05.image import Image

    _, results = sample_run
    image = Image.from_zarr(zarr.open_group(results.path, mode="r"))
    assert image.labels.label_paths == ["cells", "segmentation"]
    root = zarr.open_array(results.path / "0", mode="r")
    assert root.shape == (70, len(results.attrs["channel_names"]), 256, 256)
    assert [c["label"] for c in image.ome_attributes.omero["channels"]] == results.attrs["channel_names"]
    cells = image.labels.get_image_labels_group("cells").ome_attributes.image_label
    assert {c.label_value for c in cells.colors} == {0, *np.unique(results.cell_labels.compute()).tolist()}
    geff.validate_structure(results.path / "tracks.geff")
    metadata = geff.GeffMetadata.read(results.path / "tracks.geff")
    assert metadata.related_objects[0].path == "../labels/cells/0"


def test_rerun_refuses_to_overwrite_complete_results(sample_run, tmp_path):
    config, results = sample_run
    keep = config.model_copy(update={"output": config.output.model_copy(update={"overwrite": False})})
    before = results.particles
    with pytest.raises(InputError, match="already holds complete results"):
        run(keep)
    after = load_results(results.path).particles
    assert before.equals(after)


def test_rerun_with_overwrite_keeps_a_curated_store(sample_run, tmp_path):
    import shutil

    import pandas as pd

    from pipeline.io.curation import curation_versions, save_corrections

    config, results = sample_run
    copy = tmp_path / results.path.name
    shutil.copytree(results.path, copy)
    track = int(results.tracks["track_id"].iloc[0])
    save_corrections(copy, pd.DataFrame({"track_id": [track], "first_frame": [0], "last_frame": [5],
                                         "action": ["false_track"], "state": [""]}))
    again = config.model_copy(update={"output": config.output.model_copy(
        update={"dir": tmp_path, "overwrite": True})})
    with pytest.raises(InputError, match="holds curation records"):
        run(again)
    assert len(curation_versions(copy)) == 1


def test_killed_run_resumes_at_first_unfinished_stage(tiny_config, monkeypatch):
    """Stages done before a kill are not redone; the resumed store equals a fresh run's."""
    job = Run(tiny_config)
    job.open_store()
    for stage in STAGES[:4]:  # segment, track_cells, detect, link: then "killed"
        getattr(job, stage)(None)
        store.mark_stage_done(job.path, stage)

    redone = []
    for stage in STAGES[:4]:
        monkeypatch.setattr(Run, stage, lambda self, client, s=stage: redone.append(s))
    resumed = load_results(run(tiny_config))
    assert redone == []
    assert resumed.attrs["complete"] and list(resumed.attrs["stages_completed"]) == list(STAGES)
    monkeypatch.undo()

    fresh = tiny_config.model_copy(update={"output": tiny_config.output.model_copy(
        update={"name": "fresh"})})
    again = load_results(run(fresh))
    assert resumed.particles.equals(again.particles)
    assert resumed.cells.equals(again.cells)


def test_config_errors_name_file_field_and_allowed_values(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("input:\n  path: movie.tif\ndetect:\n  min_snrr: 3\ncompute:\n  backend: cloud\n")
    with pytest.raises(InputError) as err:
        load_config(bad)
    message = str(err.value)
    assert str(bad) in message
    assert "detect.min_snrr: unknown field; allowed: " in message and "min_snr" in message
    assert "compute.backend" in message and "'local'" in message


def test_cli_exit_codes(tmp_path, capsys):
    missing = tmp_path / "missing.yaml"
    assert cli_main(["run", str(missing)]) == 2
    assert "cannot read config" in capsys.readouterr().err
    assert cli_main([]) == 2


def test_config_reference_is_up_to_date():
    """configs/REFERENCE.md is what config_reference() writes: every field, none stale."""
    from pipeline.run.config import RunConfig, config_reference

    committed = (ROOT / "configs" / "REFERENCE.md").read_text()
    assert committed == config_reference(), (
        "configs/REFERENCE.md is stale: regenerate it with\n"
        "  .venv/bin/python -c 'from pipeline.run.config import config_reference; "
        "print(config_reference(), end=\"\")' > configs/REFERENCE.md")
    for section in RunConfig.model_fields:
        assert f"## `{section}`" in committed
    assert "| `close_gaps_frames` | int | `4` |" in committed


def test_kinetics_figure_has_a_column_per_cell(sample_run, tmp_path):
    """The figure `uptrack run` saves: one column of panels per cell (max_cells at most)."""
    import matplotlib.image

    from pipeline.eval.report import plot_kinetics

    _, results = sample_run
    small = plot_kinetics(results, tmp_path / "two.png", max_cells=2)
    full = plot_kinetics(results, tmp_path / "all.png")
    width = {p: matplotlib.image.imread(p).shape[1] for p in (small, full)}
    n = len(results.cells)
    assert width[full] == round(100 * (2.6 * n + 1)) and width[small] == round(100 * (2.6 * 2 + 1))
