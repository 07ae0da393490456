"""Scores against ground truth (pipeline.eval.evaluate) and ``uptrack evaluate``, on hand-built inputs."""

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from pipeline.cli.app import main as cli
from pipeline.eval.evaluate import (
    cell_id_consistency,
    confusion_matrix,
    detection_scores,
    match_detections,
    rate_scores,
    segmentation_scores,
    state_scores,
    tracking_scores,
)
from pipeline.io import store
from pipeline.sim.truth import Truth, truth_dir_for, write_truth
from pipeline.stages.detect import localization_crlb_px
from pipeline.vocabulary import STATES

META = {"seed": 3, "psf_sigma_px": 1.0, "particle_photons_median": 300.0,
        "config": {"background_photons": 20.0, "read_noise_e": 1.5, "k_internalization_per_min": 0.3,
                   "k_release_per_min": 0.1, "k_unbinding_per_min": 0.05}}


def particles(rows):
    """True particles from (frame, particle_id, y, x, state) rows, all visible, 300 photons."""
    table = pd.DataFrame(rows, columns=["frame", "particle_id", "y", "x", "state"])
    return table.assign(photons=300.0, visible=True)


@pytest.fixture
def truth_particles():
    """Two particles far apart over three frames."""
    return particles([(t, p, 10.0 + 20 * p, 10.0 + t, "extracellular") for t in range(3) for p in range(2)])


def two_cells(n_frames=4):
    labels = np.zeros((n_frames, 20, 30), np.uint16)
    labels[:, 2:10, 2:12] = 1
    labels[:, 10:18, 15:28] = 2
    return labels


# --- detection ------------------------------------------------------------------------------


def test_shifted_detections_give_their_shift_as_rmse(truth_particles):
    pred = truth_particles[["frame", "y", "x"]].assign(x=lambda d: d["x"] + 0.5)
    matches = match_detections(pred, truth_particles)
    scores = detection_scores(matches, truth_particles, META)
    assert len(matches) == 6 and set(matches["pred_index"]) == set(matches["truth_index"])
    assert scores["detection_precision"] == scores["detection_recall"] == scores["detection_f1"] == 1.0
    assert scores["localization_rmse_px"] == pytest.approx(0.5)
    bound = np.sqrt(2) * localization_crlb_px(1.0, 300.0, 20.0, read_noise_e=1.5)
    assert scores["localization_crlb_px"] == pytest.approx(bound)
    assert scores["localization_crlb_median_px"] == pytest.approx(bound)


def test_missing_extra_and_invisible(truth_particles):
    pred = truth_particles[["frame", "y", "x"]].drop(index=4)
    pred.loc[99] = (0, 50.0, 50.0)  # far from every particle
    truth = truth_particles.copy()
    truth.loc[len(truth)] = (1, 7, 40.0, 40.0, "extracellular", 300.0, False)  # blinked off: not counted
    matches = match_detections(pred, truth)
    scores = detection_scores(matches)
    assert matches.attrs == {"n_pred": 6, "n_truth": 6, "n_unmatched_pred": 1, "n_unmatched_truth": 1}
    assert scores["detection_recall"] == pytest.approx(5 / 6)
    assert scores["detection_precision"] == pytest.approx(5 / 6)
    assert np.isnan(scores["localization_crlb_px"])


def test_matching_maximises_pairs_not_greedy():
    truth = particles([(0, 0, 5.0, 0.0, "extracellular"), (0, 1, 5.0, 2.5, "extracellular")])
    # nearest-first would pair the first detection with particle 1 and leave the second alone
    pred = pd.DataFrame({"frame": [0, 0], "y": [5.0, 5.0], "x": [1.5, 4.0]})
    matches = match_detections(pred, truth, max_distance_px=2.0)
    assert sorted(zip(matches["pred_index"], matches["truth_index"])) == [(0, 0), (1, 1)]
    assert match_detections(pred, truth, max_distance_px=1.2)["pred_index"].tolist() == [0]


# --- states ---------------------------------------------------------------------------------


def test_confusion_matrix_and_state_scores():
    true_states = ["extracellular"] * 4 + ["membrane_bound"] * 3 + ["vesicular"] * 3
    pred_states = ["extracellular"] * 3 + ["membrane_bound"] * 2 + ["vesicular"] + ["vesicular"] * 3 + [None]
    truth = particles([(0, i, 3.0 * i, 3.0 * i, s) for i, s in enumerate(true_states)])
    pred = truth[["frame", "y", "x"]].assign(state=pred_states)
    matches = match_detections(pred, truth)
    confusion = confusion_matrix(matches, pred, truth)
    expected = np.zeros((4, 4), int)
    expected[0, 0], expected[0, 1], expected[1, 1], expected[1, 2], expected[2, 2] = 3, 1, 1, 2, 2
    np.testing.assert_array_equal(confusion.to_numpy(), expected)
    assert list(confusion.index) == list(confusion.columns) == list(STATES)
    scores = state_scores(matches, pred, truth)
    assert scores["state_accuracy"] == pytest.approx(6 / 10)
    assert scores["state_recall_extracellular"] == pytest.approx(3 / 4)
    assert scores["state_recall_vesicular"] == pytest.approx(2 / 3)  # the unclassified one counts as wrong
    assert scores["state_precision_membrane_bound"] == pytest.approx(1 / 2)
    assert scores["state_precision_vesicular"] == pytest.approx(2 / 4)
    assert np.isnan(scores["state_recall_released"])
    assert scores["state_confusion.membrane_bound.vesicular"] == 2


# --- tracking -------------------------------------------------------------------------------


def test_correct_tracks_score_one(truth_particles):
    pred = truth_particles[["frame", "y", "x"]].assign(track_id=truth_particles["particle_id"] + 10)
    scores = tracking_scores(match_detections(pred, truth_particles), pred, truth_particles)
    assert scores["link_precision"] == scores["link_recall"] == scores["track_purity"] == 1.0
    assert scores["n_links_scored"] == scores["n_true_links"] == 4


def test_swapped_link_is_detected(truth_particles):
    # the two tracks swap particles between frames 1 and 2
    swapped = np.where(truth_particles["frame"] == 2, 1 - truth_particles["particle_id"],
                       truth_particles["particle_id"])
    pred = truth_particles[["frame", "y", "x"]].assign(track_id=swapped)
    scores = tracking_scores(match_detections(pred, truth_particles), pred, truth_particles)
    assert scores["link_precision"] == pytest.approx(2 / 4)
    assert scores["link_recall"] == pytest.approx(2 / 4)
    assert scores["track_purity"] == pytest.approx(2 / 3)


def test_link_recall_skips_undetected_ends(truth_particles):
    pred = truth_particles[["frame", "y", "x"]].assign(track_id=truth_particles["particle_id"]).drop(index=5)
    scores = tracking_scores(match_detections(pred, truth_particles), pred, truth_particles)
    assert scores["n_true_links_detected"] == 3 and scores["link_recall"] == 1.0


# --- segmentation ---------------------------------------------------------------------------


def test_identical_labels_score_one():
    labels = two_cells()
    scores = segmentation_scores(labels, labels)
    assert scores == {"segmentation_ap50": 1.0, "cell_id_consistency": 1.0, "segmentation_frames": 4}


def test_merged_or_eroded_cells_lower_ap():
    true = two_cells()
    merged = np.where(true > 0, 1, 0)
    eroded = np.zeros_like(true)
    eroded[:, 4:7, 4:9] = 1  # IoU 15/80 with cell 1
    eroded[:, 10:18, 15:28] = 2
    assert segmentation_scores(merged, true)["segmentation_ap50"] == pytest.approx(1 / 2)  # IoU 104/184 with cell 2
    assert segmentation_scores(eroded, true)["segmentation_ap50"] == pytest.approx(1 / 3)


def test_id_swap_halfway_lowers_consistency():
    true = two_cells(6)
    pred = true.copy()
    pred[4:] = np.where(true[4:] > 0, 3 - true[4:], 0)  # ids 1 and 2 swap in the last two frames
    assert cell_id_consistency(list(pred), list(true)) == pytest.approx(4 / 6)
    assert segmentation_scores(pred, true, max_frames=6)["segmentation_ap50"] == 1.0
    assert segmentation_scores(true + 5 * (true > 0), true)["cell_id_consistency"] == 1.0  # other ids, stable


# --- rates and the whole evaluation ---------------------------------------------------------


def fake_truth():
    events = pd.DataFrame({"particle_id": [0, 0, 1], "cell_id": [1, 1, 1], "frame": [1, 2, 2],
                           "time_s": [3.0, 6.0, 6.0], "kind": ["internalization", "release", "internalization"]})
    cells = pd.DataFrame({"cell_id": [1, 2], "membrane_bound_time_s": [120.0, 120.0],
                          "vesicular_time_s": [60.0, 0.0]})
    return Truth(cell_labels=two_cells(3), particles=particles([]), events=events, cells=cells, meta=META)


def test_rate_scores_against_realised_and_configured_rates():
    movie = pd.DataFrame({"k_internalization_per_min": [0.6], "k_internalization_per_min_ci_low": [0.1],
                          "k_internalization_per_min_ci_high": [0.9], "k_release_per_min": [2.0]})
    results = SimpleNamespace(movie=movie, events=pd.DataFrame({"kind": ["internalization"] * 3}))
    scores = rate_scores(results, fake_truth())
    assert scores["k_internalization_per_min_true"] == pytest.approx(2 / 4)
    assert scores["k_internalization_per_min_error_vs_true"] == pytest.approx(0.2)
    assert scores["k_internalization_per_min_error_vs_configured"] == pytest.approx(1.0)
    assert scores["k_internalization_per_min_ci_covers_true"] is True
    assert scores["k_release_per_min_true"] == pytest.approx(1.0)
    assert scores["k_release_per_min_ci_covers_true"] is False
    assert np.isnan(scores["k_unbinding_per_min_estimated"])
    assert (scores["n_internalization_true"], scores["n_internalization_estimated"]) == (2, 3)
    assert scores["internalization_count_ratio"] == pytest.approx(1.5)
    assert scores["release_count_ratio"] == 0.0 and np.isnan(scores["binding_count_ratio"])


def write_store(tmp_path, truth):
    """A complete store of a run on ``tmp_path/sim.ome.tif`` that reproduces the truth."""
    movie = tmp_path / "sim.ome.tif"
    write_truth(truth, truth_dir_for(movie))
    path = store.create_store(tmp_path / "sim.zarr", attrs={
        "config": {}, "input_path": str(movie), "input_checksum": "sha256:00", "pixel_size_um": 0.2,
        "frame_interval_s": 3.0, "channel_names": ["cells", "particles"]})
    pred = truth.particles.drop(columns=["particle_id", "photons", "visible"])
    store.write_table(path, "particles", pred.assign(track_id=truth.particles["particle_id"]))
    store.write_table(path, "events", truth.events.rename(columns={"particle_id": "track_id"}))
    store.write_table(path, "movie", pd.DataFrame({"k_internalization_per_min": [0.5]}))
    store.write_labels(path, truth.cell_labels.astype(np.uint32))
    store.mark_complete(path)
    return path


def test_uptrack_evaluate_writes_json_and_report(tmp_path, capsys):
    truth = fake_truth()
    truth.particles = particles([(t, p, 5.0 + 10 * p, 5.0 + t, STATES[p]) for t in range(3) for p in range(2)])
    path = write_store(tmp_path, truth)
    assert cli(["evaluate", str(path)]) == 0
    scores = json.loads((tmp_path / "sim.evaluation.json").read_text())
    assert scores["detection_recall"] == scores["state_accuracy"] == scores["link_precision"] == 1.0
    assert scores["segmentation_ap50"] == 1.0
    assert scores["k_internalization_per_min_error_vs_true"] == pytest.approx(0.0)
    assert scores["k_unbinding_per_min_true"] == 0.0 and scores["k_unbinding_per_min_error_vs_true"] is None
    report = capsys.readouterr().out
    assert "## Detection" in report and "| membrane_bound | 0 | 3 | 0 | 0 | 1.000 | 1.000 |" in report


def test_uptrack_evaluate_without_truth_says_how_to_fix(tmp_path, capsys):
    path = write_store(tmp_path, fake_truth())
    assert cli(["evaluate", str(path), "--truth", str(tmp_path / "elsewhere.truth")]) == 2
    assert "--truth PATH" in capsys.readouterr().err
