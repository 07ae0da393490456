"""HTML reports: contents, vector figures, warnings, and a look in headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.eval.html_report import border_cells, warnings_for, write_movie_report
from pipeline.io.results import load_results

#: Set UPTRACK_SCREENSHOTS=DIR to keep the screenshots (to look at them).
SCREENSHOT_DIR_ENV = "UPTRACK_SCREENSHOTS"


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def screenshot(html_path: Path, png_path: Path, *, height_px: int = 4000) -> Path:
    """Render ``html_path`` in headless Chromium into ``png_path``."""
    subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size=1280,{height_px}", f"--screenshot={png_path}", html_path.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
    return png_path


def test_movie_report_holds_every_section_and_vector_figures(sample_store):
    results = load_results(sample_store)
    path = write_movie_report(results)
    text = path.read_text()
    for section in ("Warnings", "Quality control", "Pooled rates", "Release and retention curves", "Per-cell rates",
                    "Motion", "Aggregates", "Run parameters"):
        assert f"<h2>{section}" in text, section
    assert text.count("data:image/png;base64,") >= 4  # QC frame, tracks, curves, forest plot
    folder = path.with_name(path.stem.replace(".", "_") + "_figures")
    for name in ("qc_frame", "qc_tracks", "curves", "forest_cells", "motion", "aggregates"):
        assert (folder / f"{name}.svg").stat().st_size > 0 and (folder / f"{name}.pdf").stat().st_size > 0
    # every cell of the cells table has its row
    assert text.count("<tr>") >= len(results.cells)


def test_warnings_name_few_events_wide_intervals_and_border_cells():
    labels = np.zeros((2, 10, 10), np.uint16)
    labels[:, 0:3, 0:3] = 1  # touches the border
    labels[:, 4:7, 4:7] = 2
    assert border_cells(labels) == [1]
    cells = pd.DataFrame({"cell_id": [1, 2], "n_internalization": [1, 30], "n_release": [0, 0],
                          "n_unbinding": [0, 0]})
    for rate, lo, hi in (("k_internalization_per_min", [0.001, 0.2], [0.5, 0.3]),
                         ("k_release_per_min", [0, 0], [0.1, 0.1]), ("k_unbinding_per_min", [0, 0], [0.1, 0.1])):
        cells[rate], cells[f"{rate}_ci_low"], cells[f"{rate}_ci_high"] = np.mean([lo, hi], 0), lo, hi
    movie = cells.sum().to_frame().T
    movie["n_internalization"] = 31
    text = " ".join(warnings_for(cells, movie, pd.DataFrame(columns=["cell_id"]), [1]))
    assert "k_release_per_min: only 0 release events" in text
    assert "k_internalization_per_min: only" not in text  # 31 events is enough
    assert "1 of 2 cells have intervals wider" in text  # cell 1: 0.001 .. 0.5
    assert "1 cells touch the image border (cells 1)" in text


@pytest.mark.skipif(_chromium() is None, reason="needs chromium (Debian: apt-get install -y chromium)")
def test_movie_report_renders_in_headless_chromium(sample_store, tmp_path):
    import os

    from PIL import Image

    path = write_movie_report(load_results(sample_store))
    keep = os.environ.get(SCREENSHOT_DIR_ENV)
    png = Path(keep) / "movie_report.png" if keep else tmp_path / "movie_report.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    screenshot(path, png)
    image = np.asarray(Image.open(png).convert("RGB"), float)
    assert image.shape[1] == 1280
    # the page is drawn (text, tables and figures), not blank and not a browser error page
    rows_with_ink = (image.min(axis=(1, 2)) < 128).mean()
    assert rows_with_ink > 0.3
    colours = np.unique((image[::7, ::7] // 32).reshape(-1, 3), axis=0)
    assert len(colours) > 20  # state colours, figures: not a grey error page


def test_uptrack_run_ends_with_the_report_and_stores_the_new_tables(tmp_path, capsys):
    """End to end on a tiny simulated movie with a marker channel: the real runner, then the CLI's report."""
    import yaml

    from pipeline.cli.app import main
    from pipeline.io.results import read_table
    from pipeline.io.store import has_table
    from pipeline.sim.markers import MarkerConfig, add_marker_channel
    from pipeline.sim.simulate import SimulationConfig, simulate, write_simulation

    root = Path(__file__).resolve().parents[1]
    sim, _ = add_marker_channel(simulate(SimulationConfig(seed=5, shape=(128, 128), n_frames=16, n_cells=2,
                                                          cell_radius_um=(4.0, 6.0))),
                                MarkerConfig(name="lysosome", k_arrival_per_min=2.0))
    movie = write_simulation(sim, tmp_path, "tiny")["movie"]
    raw = yaml.safe_load((root / "configs" / "sample.yaml").read_text())
    raw["input"]["path"] = str(movie)
    raw["input"]["channels"]["markers"] = {"lysosome": "lysosome"}
    raw["segment"]["model"] = str(root / "sample_data" / "models" / "uptrack_cells_cp3")
    raw["output"] = {"dir": str(tmp_path / "results")}
    raw["compute"] = {"backend": "sync"}
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["run", str(config)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("report:")
    report = Path(last.split()[1])
    assert report.is_file() and "<h2>Compartments" in report.read_text()
    store = tmp_path / "results" / "tiny.zarr"
    for name in ("spells", "survival", "motion", "runs", "aggregates", "aggregate_rates", "compartments",
                 "colocalization", "colocalization_over_time"):
        assert has_table(store, name), name
    assert set(read_table(store, "survival")["kind"]) == {"release", "membrane_dwell", "internalization"}
