"""`uptrack export`: CSV, TrackMate XML and Cell Tracking Challenge files, read back by other tools' readers."""

import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
import tifffile

from pipeline.cli.app import main as cli
from pipeline.io import curation
from pipeline.io.export import _ctc_segments, export_csv, export_ctc, export_trackmate
from pipeline.io.results import load_results
from pipeline.vocabulary import STATES


def test_csv_tables_read_back_with_pandas_and_list_units(truth_store, tmp_path):
    results = load_results(truth_store)
    written = export_csv(results, tmp_path / "csv")
    assert [p.name for p in written] == ["particles.csv", "tracks.csv", "events.csv", "cells.csv", "movie.csv",
                                         "columns.csv"]
    particles = pd.read_csv(tmp_path / "csv" / "particles.csv")
    expected = results.particles
    assert list(particles.columns) == list(expected.columns)
    np.testing.assert_allclose(particles["x"], expected["x"])
    assert particles["state"].tolist() == expected["state"].tolist()
    events = pd.read_csv(tmp_path / "csv" / "events.csv")
    assert events["kind"].tolist() == results.events["kind"].tolist()
    np.testing.assert_allclose(pd.read_csv(tmp_path / "csv" / "cells.csv")["k_internalization_per_min"],
                               results.cells["k_internalization_per_min"])
    units = pd.read_csv(tmp_path / "csv" / "columns.csv", keep_default_na=False).set_index(["table", "column"])["unit"]
    assert units["particles", "distance_um"] == "µm" and units["particles", "x"] == "px"
    assert units["cells", "k_internalization_per_min"] == "1/min" and units["events", "time_s"] == "s"


def _declared(root, tag):
    return {f.get("feature"): f.get("isint") for f in root.find(f"Model/FeatureDeclarations/{tag}")}


def test_trackmate_xml_has_trackmates_structure(truth_store, tmp_path):
    """Issue 15 row "TrackMate XML": the layout TrackMate's TmXmlReader reads (Model, features, spots, tracks)."""
    results = load_results(truth_store)
    file = export_trackmate(results, tmp_path / "tracks.xml")
    root = ET.parse(file).getroot()
    assert root.tag == "TrackMate" and root.get("version")
    model = root.find("Model")
    assert (model.get("spatialunits"), model.get("timeunits")) == ("µm", "s")
    spot_features, edge_features = _declared(root, "SpotFeatures"), _declared(root, "EdgeFeatures")
    spots = {int(s.get("ID")): s for s in model.iter("Spot")}
    particles = results.particles
    assert int(model.find("AllSpots").get("nspots")) == len(spots) == len(particles)
    for frame in model.find("AllSpots"):
        assert {int(s.get("FRAME")) for s in frame} == {int(frame.get("frame"))}
    for spot in list(spots.values())[:50]:
        assert set(spot.attrib) - {"ID", "name"} <= set(spot_features)  # every feature is declared
    i = 7
    spot = spots[i]
    assert float(spot.get("POSITION_X")) == pytest.approx(particles["x"][i] * results.pixel_size_um)
    assert float(spot.get("POSITION_T")) == pytest.approx(particles["frame"][i] * results.frame_interval_s)
    assert STATES[int(spot.get("STATE"))] == particles["state"][i]
    n_edges = 0
    for track in model.find("AllTracks"):
        for edge in track:
            assert set(edge.attrib) <= set(edge_features)
            source, target = spots[int(edge.get("SPOT_SOURCE_ID"))], spots[int(edge.get("SPOT_TARGET_ID"))]
            assert int(target.get("FRAME")) - int(source.get("FRAME")) == 1 + int(edge.get("GAP_FRAMES"))
            assert source.get("UPTRACK_TRACK_ID") == target.get("UPTRACK_TRACK_ID") == track.get("TRACK_ID")
            n_edges += 1
    sizes = particles.groupby("track_id").size()
    assert n_edges == int((sizes - 1).sum())
    filtered = {t.get("TRACK_ID") for t in model.find("FilteredTracks")}
    assert filtered == {t.get("TRACK_ID") for t in model.find("AllTracks")} == {str(t) for t in sizes.index[sizes > 1]}
    image = root.find("Settings/ImageData")
    assert float(image.get("pixelwidth")) == results.pixel_size_um and int(image.get("nframes")) == 20


def test_trackmate_xml_round_trips_through_geffs_trackmate_reader(truth_store, tmp_path):
    """geff's TrackMate converter (its own TrackMate XML reader) loads the export with the same tracks."""
    import geff
    from geff.convert import from_trackmate_xml_to_geff

    results = load_results(truth_store)
    file = export_trackmate(results, tmp_path / "tracks.xml")
    with pytest.warns(UserWarning):  # no DisplaySettings: TrackMate's display defaults
        from_trackmate_xml_to_geff(file, tmp_path / "tm.geff")
    graph, metadata = geff.read(tmp_path / "tm.geff")
    particles = results.particles
    assert graph.number_of_nodes() == len(particles)
    assert graph.number_of_edges() == int((particles.groupby("track_id").size() - 1).sum())
    node = graph.nodes[11]
    assert node["POSITION_Y"] == pytest.approx(particles["y"][11] * results.pixel_size_um)
    assert STATES[node["STATE"]] == particles["state"][11]
    for source, target in list(graph.edges)[:50]:
        assert particles["track_id"][source] == particles["track_id"][target]


def test_ctc_labels_and_man_track_read_back(truth_store, tmp_path):
    results = load_results(truth_store)
    written = export_ctc(results, tmp_path / "ctc")
    labels = results.cell_labels.compute()
    assert len(written) == labels.shape[0] + 2
    table = np.loadtxt(tmp_path / "ctc" / "man_track.txt", dtype=int, ndmin=2)
    stack = np.stack([tifffile.imread(tmp_path / "ctc" / f"man_track{t:03d}.tif") for t in range(labels.shape[0])])
    assert stack.dtype == np.uint16
    mapping = pd.read_csv(tmp_path / "ctc" / "cell_ids.csv").set_index("label")["cell_id"]
    for label, first, last, parent in table:
        frames = np.flatnonzero((stack == label).any(axis=(1, 2)))
        assert (frames.min(), frames.max(), len(frames)) == (first, last, last - first + 1)  # unbroken, as CTC needs
        np.testing.assert_array_equal(stack[first] == label, labels[first] == mapping[label])
        if parent:  # a later stretch of the same cell
            assert mapping[parent] == mapping[label] and table[table[:, 0] == parent][0, 2] < first
    assert set(mapping) == set(np.unique(stack)) - {0}


def test_ctc_cell_that_comes_back_is_a_child_label():
    segments = _ctc_segments([np.array([1, 5]), np.array([5]), np.array([1, 5]), np.array([1])])
    assert segments.to_dict("records") == [
        {"label": 1, "cell_id": 1, "first_frame": 0, "last_frame": 0, "parent": 0},
        {"label": 6, "cell_id": 1, "first_frame": 2, "last_frame": 3, "parent": 1},
        {"label": 5, "cell_id": 5, "first_frame": 0, "last_frame": 2, "parent": 0},
    ]


def test_export_verb_writes_each_format_and_curated_needs_curation(truth_store, tmp_path, capsys):
    for fmt in ("csv", "trackmate", "ctc"):
        assert cli(["export", str(truth_store), "--format", fmt, "--out", str(tmp_path / fmt)]) == 0
        assert f"exported {fmt} (pipeline output)" in capsys.readouterr().out
    assert (tmp_path / "trackmate.xml").is_file() and (tmp_path / "ctc" / "man_track.txt").is_file()
    assert cli(["export", str(truth_store), "--format", "csv", "--curated"]) == 2
    assert "no curated results" in capsys.readouterr().err

    results = load_results(truth_store)
    track = int(results.tracks["track_id"].iloc[0])
    corrections = pd.DataFrame([(track, 0, 10**6, "set_state", "released")], columns=list(curation.CORRECTION_COLUMNS))
    curation.save_corrections(truth_store, corrections)
    assert cli(["kinetics", str(truth_store)]) == 0
    assert cli(["export", str(truth_store), "--format", "csv", "--curated"]) == 0
    assert "curated v1" in capsys.readouterr().out
    particles = pd.read_csv(truth_store.parent / "sim_csv_curated" / "particles.csv")
    assert set(particles.loc[particles["track_id"] == track, "state"]) == {"released"}


def test_export_of_a_non_store_is_an_input_error(tmp_path, capsys):
    assert cli(["export", str(tmp_path / "missing.zarr"), "--format", "csv"]) == 2
    assert "no uptrack store there" in capsys.readouterr().err


def test_ctc_export_loads_in_geffs_ctc_reader(truth_store, tmp_path):
    """geff's Cell Tracking Challenge converter reads the export: one node per cell and frame."""
    import geff
    from geff.convert import from_ctc_to_geff

    results = load_results(truth_store)
    export_ctc(results, tmp_path / "ctc")
    from_ctc_to_geff(tmp_path / "ctc", tmp_path / "cells.geff")
    graph, _ = geff.read(tmp_path / "cells.geff")
    labels = results.cell_labels.compute()
    per_frame = sum(len(set(np.unique(frame).tolist()) - {0}) for frame in labels)
    assert graph.number_of_nodes() == per_frame
    table = np.loadtxt(tmp_path / "ctc" / "man_track.txt", dtype=int, ndmin=2)
    assert graph.number_of_edges() == int((table[:, 2] - table[:, 1]).sum() + (table[:, 3] > 0).sum())
