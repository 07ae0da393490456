"""Curation: the versioned correction record, applying it, and `uptrack kinetics` recomputing kinetics."""

import numpy as np
import pandas as pd
import pytest

from pipeline.cli.app import main as cli
from pipeline.errors import InputError
from pipeline.io import curation
from pipeline.io.results import load_results
from pipeline.stages.corrections import apply_corrections


def _corrections(*rows) -> pd.DataFrame:
    """A corrections table from (track_id, first_frame, last_frame, action, state) tuples."""
    return pd.DataFrame(rows, columns=list(curation.CORRECTION_COLUMNS))


def _internalized_tracks(results, cell_id: int) -> pd.DataFrame:
    """Tracks of a cell with an internalization event, and their frame ranges."""
    events = results.events
    ids = events.loc[(events["kind"] == "internalization") & (events["cell_id"] == cell_id), "track_id"]
    return results.tracks[results.tracks["track_id"].isin(ids)]


def _busiest_cell(results) -> int:
    """The cell with the most internalization events."""
    return int(results.cells.sort_values("n_internalization").iloc[-1]["cell_id"])


def test_saved_versions_round_trip_and_keep_the_pipeline_output(truth_store):
    pipeline_particles = load_results(truth_store).particles
    track = int(pipeline_particles["track_id"].iloc[0])
    first = _corrections((track, 0, 5, "set_state", "vesicular"))
    assert curation.save_corrections(truth_store, first, author="ana", note="first look") == 1
    both = _corrections((track, 0, 5, "set_state", "vesicular"), (track + 1, 0, 99, "false_track", ""))
    assert curation.save_corrections(truth_store, both, author="ben") == 2

    versions = curation.curation_versions(truth_store)
    assert [v["version"] for v in versions] == [1, 2]
    assert versions[0]["author"] == "ana" and versions[0]["note"] == "first look"
    assert [v["n_corrections"] for v in versions] == [1, 2] and versions[1]["created"]
    pd.testing.assert_frame_equal(curation.read_corrections(truth_store, 1), first.astype(curation.CORRECTION_COLUMNS))
    pd.testing.assert_frame_equal(curation.read_corrections(truth_store), both.astype(curation.CORRECTION_COLUMNS))
    pd.testing.assert_frame_equal(load_results(truth_store).particles, pipeline_particles)
    with pytest.raises(InputError, match="no curation version 3"):
        curation.read_corrections(truth_store, 3)


def test_invalid_corrections_name_the_rows(truth_store):
    bad = _corrections((10**6, 0, 3, "set_state", "vesicular"), (1, 5, 2, "set_state", "inside"),
                       (1, 0, 1, "delete", ""))
    with pytest.raises(InputError) as error:
        curation.save_corrections(truth_store, bad)
    message = str(error.value)
    assert "rows [0]: unknown track_id" in message
    assert "rows [1]: set_state needs a state" in message and "rows [1]: first_frame after last_frame" in message
    assert "rows [2]: action not one of" in message
    assert curation.curation_versions(truth_store) == []


def test_corrections_change_states_in_the_frame_range_and_remove_false_tracks(truth_store):
    results = load_results(truth_store)
    track = _internalized_tracks(results, _busiest_cell(results)).iloc[0]
    tid, first, last = int(track["track_id"]), int(track["first_frame"]), int(track["last_frame"])
    other = int(results.tracks["track_id"].iloc[-1])
    corrections = _corrections((tid, first, last, "set_state", "membrane_bound"), (other, 0, 10**6, "false_track", ""))
    particles, events = apply_corrections(results.particles, corrections,
                                                   frame_interval_s=results.frame_interval_s)
    assert (particles.loc[particles["track_id"] == tid, "state"] == "membrane_bound").all()
    assert not (events["track_id"] == tid).any()
    assert other not in set(particles["track_id"])
    untouched = ~results.particles["track_id"].isin([tid, other])
    assert (particles[~particles["track_id"].isin([tid, other])]["state"].to_numpy()
            == results.particles.loc[untouched, "state"].to_numpy()).all()

    middle = (first + last) // 2
    part, _ = apply_corrections(results.particles, _corrections((tid, first, middle, "set_state", "released")),
                                         frame_interval_s=results.frame_interval_s)
    mine = part[part["track_id"] == tid].set_index("frame")["state"]
    assert (mine.loc[:middle] == "released").all()
    original = results.particles[results.particles["track_id"] == tid].set_index("frame")["state"]
    pd.testing.assert_series_equal(mine.loc[middle + 1:], original.loc[middle + 1:])


def test_uptrack_kinetics_recomputes_with_the_latest_corrections(truth_store, capsys):
    assert cli(["kinetics", str(truth_store)]) == 0
    assert "no corrections saved" in capsys.readouterr().out
    assert load_results(truth_store, curated=True).curation_version is None

    results = load_results(truth_store)
    cell = _busiest_cell(results)
    internalized = _internalized_tracks(results, cell)
    undo = _corrections(*[(int(t.track_id), int(t.first_frame), int(t.last_frame), "set_state", "membrane_bound")
                          for t in internalized.itertuples()])
    curation.save_corrections(truth_store, undo.iloc[:1], note="one")
    curation.save_corrections(truth_store, undo, note="all")

    assert cli(["kinetics", str(truth_store)]) == 0
    out = capsys.readouterr().out
    assert "applied curation v2" in out and "k_internalization_per_min" in out
    curated = load_results(truth_store, curated=True)
    assert curated.curation_version == 2
    _assert_curated_geff_has_states(truth_store, curated.particles, set(internalized["track_id"]))
    before, after = results.cells.set_index("cell_id"), curated.cells.set_index("cell_id")
    assert before.loc[cell, "n_internalization"] == len(internalized) > 0
    assert after.loc[cell, "n_internalization"] == 0 and after.loc[cell, "k_internalization_per_min"] == 0
    assert after.loc[cell, "membrane_bound_time_min"] > before.loc[cell, "membrane_bound_time_min"]
    final = curated.kinetics["cum_internalization"].sel(cell_id=cell).values[-1]
    assert final == 0 < results.kinetics["cum_internalization"].sel(cell_id=cell).values[-1]
    assert set(curated.tracks["track_id"]) == set(results.tracks["track_id"])
    pd.testing.assert_frame_equal(load_results(truth_store).cells, results.cells)  # pipeline output untouched

    assert cli(["kinetics", str(truth_store), "--curation", "1"]) == 0
    assert load_results(truth_store, curated=True).cells.set_index("cell_id").loc[cell, "n_internalization"] \
        == len(internalized) - 1
    assert cli(["kinetics", str(truth_store), "--curation", "7"]) == 2


def _assert_curated_geff_has_states(store, particles, undone):
    """Issue 15 row "GEFF after curation": curated/tracks.geff carries the corrected states."""
    import geff

    from pipeline.vocabulary import STATES

    geff.validate_structure(store / "curated" / "tracks.geff")
    graph, _ = geff.read(store / "curated" / "tracks.geff")
    states = {node: STATES[data["state"]] for node, data in graph.nodes(data=True) if data["track_id"] in undone}
    assert states and set(states.values()) == {"membrane_bound"}
    assert graph.number_of_nodes() == len(particles)
    pipeline_states = load_results(store).particles.query("track_id in @undone")["state"]
    assert "vesicular" in set(pipeline_states)  # so the GEFF shows the correction, not the pipeline's states


def test_load_results_without_curation_reads_the_pipeline_output(truth_store):
    plain, curated = load_results(truth_store), load_results(truth_store, curated=True)
    assert curated.curation_version is None
    pd.testing.assert_frame_equal(curated.particles, plain.particles)
    np.testing.assert_array_equal(curated.kinetics["n_vesicular"], plain.kinetics["n_vesicular"])


def test_kinetics_verb_refuses_an_incomplete_store(truth_store, tmp_path, capsys):
    """`uptrack kinetics` on an unfinished store is an error (exit 2), not 'no corrections'."""
    import shutil

    from pipeline.io import store

    partial = tmp_path / "partial.zarr"
    shutil.copytree(truth_store, partial)
    store.update_attrs(partial, complete=False)
    assert cli(["kinetics", str(partial)]) == 2
    assert "incomplete" in capsys.readouterr().err
