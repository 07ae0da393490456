"""The per-movie Zarr v3 store: writing (pipeline.io.store) and reading back (pipeline.io.results)."""

import json

import dask
import dask.array as da
import geff
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Multiscales, Reader

import pipeline
from pipeline.errors import InputError
from pipeline.io import store
from pipeline.io.results import TABLE_COLUMNS, load_results, read_table
from pipeline.vocabulary import STATES, ZONES

ATTRS = {
    "config": {"input": {"path": "movie.ome.tif"}, "detect": {"diameter": 5}},
    "input_path": "/data/movie.ome.tif",
    "input_checksum": "sha256:00",
    "pixel_size_um": 0.2,
    "frame_interval_s": 3.0,
    "channel_names": ["cells", "particles"],
}


@pytest.fixture
def path(tmp_path):
    return store.create_store(tmp_path / "movie.zarr", attrs=ATTRS)


@pytest.fixture
def particles():
    """Two tracks of three and two detections, one unclassified detection."""
    return pd.DataFrame(
        {
            "frame": np.array([0, 1, 2, 0, 1], dtype=np.int64),
            "y": [10.5, 11.0, 11.25, 30.0, 31.5],
            "x": [5.0, 5.5, 6.0, 40.0, 41.0],
            "mass": [120.0, 130.5, np.nan, 80.0, 82.0],
            "track_id": np.array([1, 1, 1, 2, 2], dtype=np.int64),
            "cell_id": np.array([3, 3, 3, 0, 0], dtype=np.int64),
            "distance_um": [0.1, -0.4, -1.2, 5.0, 4.8],
            "zone": pd.Series(["membrane", "inside", "inside", "outside", "outside"], dtype="str"),
            "state": pd.Series(
                ["membrane_bound", "vesicular", None, "extracellular", "extracellular"], dtype="str"
            ),
        }
    )


def kinetics():
    return xr.Dataset(
        {
            "n_vesicular": (("cell_id", "frame"), np.array([[0, 1, 1], [0, 0, 0]], dtype=np.int64)),
            "internalized_mass": (
                ("cell_id", "frame"),
                np.array([[0.0, 130.5, np.nan], [0, 0, 0]]),
            ),
        },
        coords={"cell_id": [3, 4], "frame": [0, 1, 2], "time_s": ("frame", [0.0, 3.0, 6.0])},
        attrs={"units": "counts"},
    )


# --- tables ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "df",
    [
        pd.DataFrame(
            {
                "i8": np.array([1, -2, 3], np.int8),
                "u32": np.array([0, 7, 2**32 - 1], np.uint32),
                "f32": np.array([1.5, np.nan, -np.inf], np.float32),
                "flag": [True, False, True],
                "text": pd.Series(["a", "é ü", None], dtype="str"),
                "obj": pd.Series(["x", "y", "x"], dtype=object),
                "cat": pd.Categorical(
                    ["low", "high", None], categories=["low", "high"], ordered=True
                ),
            }
        ),
        pd.DataFrame({c: pd.Series(dtype=d) for c, d in TABLE_COLUMNS["particles"].items()}),
    ],
    ids=["dtypes", "empty"],
)
def test_table_round_trip_is_exact(path, df):
    store.write_table(path, "t", df)
    pd.testing.assert_frame_equal(read_table(path, "t"), df)


def test_table_is_parquet_with_units_read_without_uptrack(path, particles):
    """Issue 15 "tables readable without uptrack": plain pyarrow and pandas, no uptrack code."""
    import pyarrow.parquet as pq

    store.write_table(path, "particles", particles)
    file = path / "tables" / "particles.parquet"
    schema = pq.read_schema(file)
    assert schema.field("distance_um").metadata == {b"unit": "µm".encode()}
    assert schema.field("x").metadata == {b"unit": b"px"} and schema.field("state").metadata is None
    meta = json.loads(schema.metadata[b"uptrack"])
    assert meta["units"] == {"frame": "frame", "y": "px", "x": "px", "distance_um": "µm"}
    assert meta["n_rows"] == 5 and meta["columns"] == list(particles.columns)
    plain = pd.read_parquet(file)
    assert plain["state"].tolist()[:2] == ["membrane_bound", "vesicular"] and pd.isna(plain["state"][2])
    assert plain["zone"].tolist() == ["membrane", "inside", "inside", "outside", "outside"]
    assert pq.read_table(file).column("track_id").to_pylist() == [1, 1, 1, 2, 2]
    assert store.column_unit("k_release_per_min_ci_low") is None
    assert store.column_unit("k_release_per_min") == "1/min"


def test_categorical_state_column_is_a_parquet_dictionary(path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    df = pd.DataFrame({"state": pd.Categorical(["vesicular", "released", "vesicular"])})
    store.write_table(path, "t", df)
    column = pq.read_table(path / "tables" / "t.parquet").column("state")
    assert pa.types.is_dictionary(column.type)
    assert column.to_pylist() == ["vesicular", "released", "vesicular"]


def test_duckdb_queries_the_tables(path, particles):
    duckdb = pytest.importorskip("duckdb")
    store.write_table(path, "particles", particles)
    rows = duckdb.sql(
        f"SELECT state, count(*) FROM read_parquet('{path / 'tables' / '*.parquet'}') "
        "WHERE state IS NOT NULL GROUP BY state ORDER BY state"
    ).fetchall()
    assert rows == [("extracellular", 2), ("membrane_bound", 1), ("vesicular", 1)]


def _write_legacy_table(path, name, df, group="tables"):
    """A table in the format before Parquet: one Zarr array per column, strings as codes."""
    table = zarr.open_group(path, mode="r+").require_group(group).create_group(name)
    for column in df.columns:
        series = df[column]
        if series.dtype == object or isinstance(series.dtype, pd.StringDtype):
            cat = series.astype("category")
            table.create_array(column, data=cat.cat.codes.to_numpy()).attrs.put(
                {"dtype": str(series.dtype), "categories": cat.cat.categories.tolist(), "ordered": False})
        else:
            table.create_array(column, data=series.to_numpy()).attrs.put({"dtype": str(series.dtype)})
    table.attrs.put({"columns": list(df.columns), "dtypes": {c: str(df[c].dtype) for c in df.columns},
                     "n_rows": len(df)})


def test_legacy_tables_are_read_and_migrated_to_parquet(path, particles):
    _write_legacy_table(path, "particles", particles)
    _write_legacy_table(path, "corrections_v1", particles[["track_id", "state"]], group="curation")
    assert store.has_table(path, "particles") and store.table_names(path) == ["particles"]
    pd.testing.assert_frame_equal(read_table(path, "particles"), particles)
    assert store.migrate_tables(path) == ["curation/corrections_v1", "tables/particles"]
    assert not (path / "tables" / "particles").exists()
    assert (path / "tables" / "particles.parquet").is_file()
    pd.testing.assert_frame_equal(pd.read_parquet(path / "tables" / "particles.parquet"), particles)
    pd.testing.assert_frame_equal(read_table(path, "corrections_v1", group="curation"), particles[["track_id", "state"]])
    assert store.migrate_tables(path) == []


def test_migrate_verb_upgrades_an_older_store(path, particles, capsys, caplog):
    from pipeline.cli.app import main as cli

    _write_legacy_table(path, "particles", particles)
    store.write_labels(path, np.full((3, 8, 8), 3, np.uint32))
    store.mark_complete(path)
    pd.testing.assert_frame_equal(load_results(path).particles, particles)
    assert f"run `uptrack migrate {path}`" in caplog.text
    assert cli(["migrate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "1 table(s) rewritten as Parquet" in out and "1 cell colour(s)" in out and "no OME-Zarr image" in out
    pd.testing.assert_frame_equal(pd.read_parquet(path / "tables" / "particles.parquet"), particles)
    graph, metadata = geff.read(path / "tracks.geff")
    assert graph.nodes[1]["state"] == STATES.index("vesicular") and metadata.related_objects
    assert cli(["migrate", str(path.parent / "nothing.zarr")]) == 2


def test_corrupt_table_file_is_an_input_error(path):
    (path / "tables" / "particles.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match="particles.parquet: not a readable Parquet table"):
        read_table(path, "particles")


def test_object_column_missing_value_reads_back_as_nan(path):
    store.write_table(path, "t", pd.DataFrame({"s": pd.Series(["a", None], dtype=object)}))
    assert read_table(path, "t")["s"].tolist()[0] == "a"
    assert pd.isna(read_table(path, "t")["s"][1])


def test_unsupported_column_dtype_is_refused(path):
    with pytest.raises(TypeError, match="column 'n'"):
        store.write_table(path, "t", pd.DataFrame({"n": pd.array([1, None], dtype="Int64")}))
    with pytest.raises(ValueError, match="column names"):
        store.write_table(path, "t", pd.DataFrame({"a/b": [1]}))


def test_tables_in_other_groups_and_missing_table(path):
    edits = pd.DataFrame({"track_id": [1], "state": ["released"]})
    store.write_table(path, "edits", edits, group="curation")
    pd.testing.assert_frame_equal(read_table(path, "edits", group="curation"), edits)
    store.write_table(path, "particles", edits)
    with pytest.raises(InputError, match=r"no table tables/cells; tables there: \['particles'\]"):
        read_table(path, "cells")


# --- labels, kinetics, GEFF --------------------------------------------------------------


def test_labels_written_per_frame_from_dask_and_read_lazily(path):
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 6, (16, 20)).astype(np.int32) for _ in range(4)]
    computed = []

    def frame(t):
        computed.append(t)
        return frames[t][None]

    labels = da.concatenate(
        [da.from_delayed(dask.delayed(frame)(t), (1, 16, 20), np.int32) for t in range(4)]
    )
    store.write_labels(path, labels)
    assert sorted(computed) == [0, 1, 2, 3]  # each frame computed once, by its own task
    cell_labels = load_results(path, allow_partial=True).cell_labels
    assert isinstance(cell_labels, da.Array)
    assert cell_labels.dtype == np.uint32 and cell_labels.chunksize == (1, 16, 20)
    np.testing.assert_array_equal(cell_labels.compute(), np.stack(frames))


def test_labels_ngff_metadata(path):
    store.create_labels(path, (3, 8, 8))
    store.write_label_frames(path, 1, np.full((2, 8, 8), 7))
    nodes = list(Reader(parse_url(path / "labels" / "cells"))())
    node = next(n for n in nodes if any(isinstance(spec, Label) for spec in n.specs))
    assert {type(spec) for spec in node.specs} >= {Label, Multiscales}
    assert [(ax["name"], ax.get("unit")) for ax in node.metadata["axes"]] == [
        ("t", "second"),
        ("y", "micrometer"),
        ("x", "micrometer"),
    ]
    assert node.metadata["coordinateTransformations"][0] == [
        {"type": "scale", "scale": [3.0, 0.2, 0.2]}
    ]
    assert node.data[0][:, 0, 0].compute().tolist() == [0, 7, 7]
    ome = json.loads((path / "labels" / "zarr.json").read_text())["attributes"]["ome"]
    assert ome == {"version": "0.5", "labels": ["cells"]}
    array = zarr.open_array(path / "labels" / "cells" / "0", mode="r")
    assert array.metadata.zarr_format == 3 and array.metadata.dimension_names == ("t", "y", "x")


def _movie(t=3, c=2, y=8, x=12):
    """A (t, c, z, y, x) movie whose values say where they are: 100 t + 10 c + (y + x) % 10."""
    tt, cc, yy, xx = np.meshgrid(np.arange(t), np.arange(c), np.arange(y), np.arange(x), indexing="ij")
    return (100 * tt + 10 * cc + (yy + xx) % 10).astype(np.uint16)[:, :, None]


def test_store_root_is_an_ome_zarr_image_with_its_labels(path):
    """Issue 15 rows "store root as an OME-Zarr image" and "ome-zarr-py Reader on the store"."""
    from ome_zarr_models.v05.image import Image

    labels = np.zeros((3, 8, 12), np.uint32)
    labels[:, 2:5, 3:7], labels[:, 5:8, 8:] = 4, 9
    store.write_labels(path, labels)
    assert store.label_colors(path) == 2
    movie = _movie()
    assert store.write_image(path, da.from_array(movie, chunks=(1, 1, 1, 8, 12)),
                             channel_names=["cells", "particles"]) == (3, 2, 8, 12)

    image = Image.from_zarr(zarr.open_group(path, mode="r"))  # validates the image and its labels
    multiscale = image.ome_attributes.multiscales[0]
    assert [(ax.name, ax.type, ax.unit) for ax in multiscale.axes] == [
        ("t", "time", "second"), ("c", "channel", None), ("y", "space", "micrometer"), ("x", "space", "micrometer")]
    assert list(multiscale.datasets[0].coordinateTransformations[0].scale) == [3.0, 1.0, 0.2, 0.2]
    assert image.labels.label_paths == ["cells"]
    label = image.labels.get_image_labels_group("cells").ome_attributes.image_label
    assert [c.label_value for c in label.colors] == [0, 4, 9] and label.source.image == "../../"
    assert [p.model_dump(by_alias=True) for p in label.properties] == [
        {"label-value": 0, "cell_id": 0}, {"label-value": 4, "cell_id": 4}, {"label-value": 9, "cell_id": 9}]

    nodes = list(Reader(parse_url(path))())
    root = nodes[0]
    assert Multiscales in {type(spec) for spec in root.specs}
    np.testing.assert_array_equal(root.data[0].compute(), movie[:, :, 0])
    assert root.metadata["channel_names"] == ["cells", "particles"]
    assert [ax["name"] for ax in root.metadata["axes"]] == ["t", "c", "y", "x"]
    cells = next(n for n in nodes if any(isinstance(spec, Label) for spec in n.specs))
    np.testing.assert_array_equal(cells.data[0].compute(), labels)


def test_napari_ome_zarr_opens_the_store_as_movie_and_labels(path):
    """Issue 15 row "napari-ome-zarr": the store opens as the movie's channels with the cell labels."""
    reader_module = pytest.importorskip("napari_ome_zarr._reader")
    labels = np.zeros((3, 8, 12), np.uint32)
    labels[:, 2:5, 3:7] = 4
    store.write_labels(path, labels)
    store.write_image(path, _movie(), channel_names=["cells", "particles"])
    layers = reader_module.napari_get_reader(str(path))(str(path))
    kinds = {kind: (data, meta) for data, meta, kind in layers}
    data, meta = kinds["image"]
    assert meta["name"] == ["movie: cells", "movie: particles"] and meta["channel_axis"] == 1
    assert data[0].shape == (3, 2, 8, 12) and list(meta["scale"]) == [3.0, 0.2, 0.2]
    np.testing.assert_array_equal(np.asarray(kinds["labels"][0][0]), labels)


def test_downsampled_image_keeps_physical_scale(path):
    movie = _movie(y=8, x=12)
    assert store.write_image(path, movie, channel_names=["a", "b"], downsample=4) == (3, 2, 2, 3)
    ome = zarr.open_group(path, mode="r").attrs["ome"]
    dataset = ome["multiscales"][0]["datasets"][0]
    assert dataset["coordinateTransformations"][0]["scale"] == [3.0, 1.0, 0.8, 0.8]
    expected = movie[:, :, 0].reshape(3, 2, 2, 4, 3, 4).mean(axis=(3, 5)).round().astype(np.uint16)
    np.testing.assert_array_equal(zarr.open_array(path / "0", mode="r")[:], expected)
    with pytest.raises(ValueError, match="channel names"):
        store.write_image(path, movie, channel_names=["a"])


def test_3d_labels_need_z_step(tmp_path):
    path = store.create_store(tmp_path / "s.zarr", attrs={**ATTRS, "z_step_um": 0.5})
    array = store.create_labels(path, (2, 3, 8, 8))
    assert array.shape == (2, 3, 8, 8)
    ome = zarr.open_group(path / "labels" / "cells", mode="r").attrs["ome"]
    assert ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] == [
        3.0,
        0.5,
        0.2,
        0.2,
    ]
    path2 = store.create_store(tmp_path / "s2.zarr", attrs=ATTRS)
    with pytest.raises(ValueError, match="z_step_um"):
        store.create_labels(path2, (2, 3, 8, 8))


def test_kinetics_round_trip(path):
    """Read into memory (cells x frames is small), so that a damaged chunk is named on reading."""
    store.write_kinetics(path, kinetics())
    ds = load_results(path, allow_partial=True).kinetics
    assert isinstance(ds["n_vesicular"].data, np.ndarray)
    xr.testing.assert_identical(ds, kinetics())


def test_geff_readable_by_geff(path, particles):
    store.write_geff(path, particles, pixel_size_um=0.2, frame_interval_s=3.0)
    graph, metadata = geff.read(path / "tracks.geff")
    assert graph.number_of_nodes() == 5
    assert sorted(graph.edges) == [(0, 1), (1, 2), (3, 4)]
    codes = metadata.extra["uptrack"]["categories"]
    assert codes == {"zone": list(ZONES), "state": list(STATES)}
    expected = {"t": 1, "y": 11.0, "x": 5.5, "track_id": 1, "cell_id": 3, "state": STATES.index("vesicular"),
                "zone": ZONES.index("inside")}
    assert {key: graph.nodes[1][key] for key in expected} == expected
    assert "state" not in graph.nodes[2]  # missing value
    axes = {ax.name: ax for ax in metadata.axes}
    assert (axes["t"].scale, axes["t"].scaled_unit) == (3.0, "second")
    assert (axes["x"].unit, axes["x"].scale, axes["x"].scaled_unit) == ("pixel", 0.2, "micrometer")
    assert metadata.track_node_props == {"tracklet": "track_id"}
    assert zarr.open_group(path, mode="r")["tracks.geff"].metadata.zarr_format == 3


def test_geff_properties_have_units_descriptions_and_no_text_arrays(path, particles):
    """Issue 15 rows "napari-geff on tracks.geff" (no '<U' dtype) and "units, descriptions, edge properties"."""
    store.write_geff(path, particles.assign(frame=[0, 1, 3, 0, 1]), pixel_size_um=0.2, frame_interval_s=3.0)
    geff.validate_structure(path / "tracks.geff")
    metadata = geff.GeffMetadata.read(path / "tracks.geff")
    for props in (metadata.node_props_metadata, metadata.edge_props_metadata):
        for prop in props.values():
            assert prop.unit and prop.description, prop.identifier
            assert prop.dtype != "str", prop.identifier
    assert metadata.node_props_metadata["distance_um"].unit == "micrometer"
    assert "2 = vesicular" in metadata.node_props_metadata["state"].description
    group = zarr.open_group(path / "tracks.geff", mode="r")
    assert all(group["nodes/props"][p]["values"].dtype.kind in "biuf" for p in group["nodes/props"])
    graph, _ = geff.read(path / "tracks.geff")
    assert graph.edges[1, 2]["gap_frames"] == 1 and bool(graph.edges[1, 2]["gap_closed"])
    assert graph.edges[0, 1]["gap_frames"] == 0 and not graph.edges[0, 1]["gap_closed"]
    assert graph.edges[0, 1]["step_um"] == pytest.approx(0.2 * np.hypot(0.5, 0.5))


def test_napari_geff_opens_tracks_with_the_cell_labels(path, particles):
    """Issue 15 row "napari-geff on tracks.geff": napari-geff's own reader loads tracks and labels."""
    napari_geff = pytest.importorskip("napari_geff")
    store.write_labels(path, np.full((3, 8, 8), 3, np.uint32))
    store.write_geff(path, particles, pixel_size_um=0.2, frame_interval_s=3.0)
    metadata = geff.GeffMetadata.read(path / "tracks.geff")
    assert [(o.type, o.path, o.node_prop) for o in metadata.related_objects] == [
        ("labels", "../labels/cells/0", "cell_id")]
    reader = napari_geff.get_geff_reader(str(path / "tracks.geff"))
    assert reader is not None
    layers = {kind: (data, meta) for data, meta, kind in reader(str(path / "tracks.geff"))}
    assert set(layers) == {"labels", "tracks"}
    tracks, meta = layers["tracks"]
    assert len(tracks) == 5 and meta["scale"] == [3.0, 0.2, 0.2]
    assert sorted(meta["features"]["state"].dropna().astype(int)) == [0, 0, 1, 2]
    assert layers["labels"][0].shape == (3, 8, 8)


def test_geff_of_no_particles(path):
    empty = pd.DataFrame({c: pd.Series(dtype=d) for c, d in TABLE_COLUMNS["particles"].items()})
    store.write_geff(path, empty, pixel_size_um=0.2, frame_interval_s=3.0)
    graph, _ = geff.read(path / "tracks.geff")
    assert graph.number_of_nodes() == 0 and graph.number_of_edges() == 0


# --- results, stages, completeness ------------------------------------------------------------


def test_full_round_trip(path, particles):
    tracks = pd.DataFrame({"track_id": [1, 2], "final_state": ["vesicular", "extracellular"]})
    events = pd.DataFrame({c: pd.Series(dtype=d) for c, d in TABLE_COLUMNS["events"].items()})
    cells = pd.DataFrame({"cell_id": [3], "k_internalization_per_min": [0.12]})
    for name, table in [
        ("particles", particles),
        ("tracks", tracks),
        ("events", events),
        ("cells", cells),
        ("movie", pd.DataFrame({c: pd.Series(dtype=d) for c, d in TABLE_COLUMNS["movie"].items()})),
    ]:
        store.write_table(path, name, table)
    store.write_labels(path, np.ones((3, 8, 8), np.uint16))
    store.write_kinetics(path, kinetics())
    store.write_geff(path, particles, 0.2, 3.0)
    for stage in ["segment", "detect", "kinetics", "detect"]:
        store.mark_stage_done(path, stage)
    store.mark_complete(path)

    results = load_results(path)
    pd.testing.assert_frame_equal(results.particles, particles)
    pd.testing.assert_frame_equal(results.tracks, tracks)
    pd.testing.assert_frame_equal(results.events, events)
    pd.testing.assert_frame_equal(results.cells, cells)
    assert list(results.movie.columns) == list(TABLE_COLUMNS["movie"]) and results.movie.empty
    assert results.cell_labels.shape == (3, 8, 8)
    assert (results.pixel_size_um, results.frame_interval_s) == (0.2, 3.0)
    assert results.attrs["config"] == ATTRS["config"]
    assert results.attrs["stages_completed"] == ["segment", "detect", "kinetics"]
    assert results.attrs["uptrack_version"] == pipeline.__version__
    assert results.attrs["complete"] is True
    assert not (path / ".tmp").exists()
    assert pipeline.load_results is load_results


def test_incomplete_store_needs_allow_partial(path, particles):
    store.write_table(path, "particles", particles)
    store.mark_stage_done(path, "detect")
    with pytest.raises(InputError) as info:
        load_results(path)
    assert "is incomplete (stages done: detect)" in str(info.value)
    assert "rerun `uptrack run` with the same config to resume, or pass allow_partial=True" in str(
        info.value
    )
    partial = load_results(path, allow_partial=True)
    pd.testing.assert_frame_equal(partial.particles, particles)
    assert list(partial.tracks.columns) == list(TABLE_COLUMNS["tracks"])
    assert list(partial.cells.columns)[:4] == [
        "cell_id",
        "first_frame",
        "last_frame",
        "mean_area_um2",
    ]
    assert partial.events.dtypes["kind"] == "str" and len(partial.events) == 0
    assert partial.cell_labels is None and len(partial.kinetics.data_vars) == 0
    assert store.stages_done(path) == ["detect"]


def test_not_a_store(tmp_path):
    with pytest.raises(InputError, match=r"nowhere\.zarr: no uptrack store there"):
        load_results(tmp_path / "nowhere.zarr")
    other = zarr.open_group(tmp_path / "other.zarr", mode="w", zarr_format=3)
    other.attrs["x"] = 1
    with pytest.raises(InputError, match=r"other\.zarr is a Zarr group but not an uptrack store"):
        load_results(tmp_path / "other.zarr")


def test_update_attrs(path):
    created = store.read_attrs(path)["created"]
    store.update_attrs(path, n_frames=40)
    attrs = store.read_attrs(path)
    assert attrs["n_frames"] == 40 and attrs["created"] == created and attrs["updated"] >= created


# --- overwrite protection and atomicity ---------------------------------------------------------


def test_create_store_overwrite_rules(tmp_path, particles):
    path = store.create_store(tmp_path / "movie.zarr", attrs=ATTRS)
    store.write_table(path, "particles", particles)
    store.create_store(path, attrs=ATTRS)  # an incomplete store is replaced
    assert store.stages_done(path) == [] and not (path / "tables" / "particles").exists()
    store.mark_complete(path)
    with pytest.raises(InputError, match="already holds a complete uptrack store"):
        store.create_store(path, attrs=ATTRS)
    store.create_store(path, attrs=ATTRS, overwrite=True)
    assert store.read_attrs(path)["complete"] is False
    with pytest.raises(ValueError, match="frame_interval_s"):
        store.create_store(tmp_path / "x.zarr", attrs={"pixel_size_um": 0.2})


def test_create_store_never_touches_other_files(tmp_path):
    movie = tmp_path / "movie.ome.zarr"
    movie.mkdir()
    (movie / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    tiff = tmp_path / "movie.tif"
    tiff.write_bytes(b"II*\x00")
    for target in [movie, tmp_path, tiff]:
        with pytest.raises(InputError, match="is not an uptrack store; refusing to overwrite"):
            store.create_store(target, attrs=ATTRS, overwrite=True)
    assert (movie / "zarr.json").exists() and tiff.read_bytes() == b"II*\x00"


def _fail(*args, **kwargs):
    raise RuntimeError("killed")


WRITERS = {
    "table": lambda path, particles: store.write_table(path, "particles", particles),
    "kinetics": lambda path, particles: store.write_kinetics(path, kinetics()),
    "geff": lambda path, particles: store.write_geff(path, particles, 0.2, 3.0),
}
TARGETS = {"table": "tables/particles.parquet", "kinetics": "kinetics", "geff": "tracks.geff"}


@pytest.mark.parametrize("writer", WRITERS)
def test_failed_write_leaves_no_half_output(path, particles, writer, monkeypatch):
    monkeypatch.setattr(
        store, "_replace_dir", _fail
    )  # fully written, then killed before the rename
    with pytest.raises(RuntimeError):
        WRITERS[writer](path, particles)
    assert not (path / TARGETS[writer]).exists()
    assert not (path / ".tmp").exists()  # no half-written leftovers


def test_failed_rewrite_keeps_previous_table(path, particles, monkeypatch):
    store.write_table(path, "particles", particles)

    def write_half_then_die(table, where):
        open(where, "wb").write(b"PAR1 half a file")
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(store.pq, "write_table", write_half_then_die)
    with pytest.raises(RuntimeError, match="mid-write"):
        store.write_table(path, "particles", particles.iloc[:2])
    pd.testing.assert_frame_equal(read_table(path, "particles"), particles)


def test_rewrite_replaces_previous_version(path, particles):
    store.write_table(path, "particles", particles)
    store.write_table(path, "particles", particles.iloc[:2])
    pd.testing.assert_frame_equal(read_table(path, "particles"), particles.iloc[:2])
    store.write_kinetics(path, kinetics())
    store.write_kinetics(path, kinetics().isel(frame=[0]))
    assert load_results(path, allow_partial=True).kinetics.sizes["frame"] == 1
