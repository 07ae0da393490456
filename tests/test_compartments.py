"""Compartment markers on a simulated movie with a marker channel reached at a known rate."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline.sim.markers import MarkerConfig, add_marker_channel, write_marker_truth
from pipeline.sim.simulate import SimulationConfig, simulate, write_simulation
from pipeline.stages.compartments import colocalization_over_time, colocalize, compartment_rates


@pytest.fixture(scope="module")
def marked():
    config = SimulationConfig(seed=3, shape=(128, 128), n_frames=60, n_cells=3, cell_radius_um=(4.0, 5.0),
                              n_particles_initial=10, n_bound_initial=40, n_vesicular_initial=0,
                              k_internalization_per_min=2.0, k_release_per_min=0.05, particle_arrival_per_min=10)
    marker = MarkerConfig(name="lysosome", k_arrival_per_min=1.0, seed=4)
    sim, arrivals = add_marker_channel(simulate(config), marker)
    return sim, arrivals, marker


def _truth_detections(sim) -> pd.DataFrame:
    p = sim.truth.particles[sim.truth.particles["visible"]]
    return pd.DataFrame({"track_id": p["particle_id"], "frame": p["frame"], "y": p["y"], "x": p["x"],
                         "cell_id": p["cell_id"], "state": p["state"]}).reset_index(drop=True)


def test_marker_channel_is_written_with_its_name_and_truth(marked, tmp_path):
    import tifffile

    sim, arrivals, marker = marked
    movie = write_simulation(sim, tmp_path, "m")["movie"]
    csv = write_marker_truth(arrivals, movie, marker.name)
    with tifffile.TiffFile(movie) as tif:
        assert tif.series[0].shape[1] == 3
        assert "lysosome" in tif.ome_metadata
    assert len(pd.read_csv(csv)) == len(arrivals)


def test_arrival_rate_in_the_compartment_is_recovered_within_its_ci(marked):
    sim, arrivals, marker = marked
    particles = colocalize(_truth_detections(sim), {"lysosome": sim.movie[:, -1]})
    # per-detection colocalisation against the truth (positive from the arrival frame on)
    ves = particles[particles["state"] == "vesicular"].merge(arrivals[["particle_id", "arrival_frame"]],
                                                             left_on="track_id", right_on="particle_id")
    truth = (ves["arrival_frame"] >= 0) & (ves["frame"] >= ves["arrival_frame"])
    assert (ves["in_lysosome"] == truth).mean() >= 0.9
    rates = compartment_rates(particles, ["lysosome"], frame_interval_s=sim.config.frame_interval_s)
    row = rates.iloc[0]
    assert row["n_events"] >= 10
    assert row["k_per_min_ci_low"] <= marker.k_arrival_per_min <= row["k_per_min_ci_high"], row.to_dict()
    over_time = colocalization_over_time(particles, ["lysosome"])
    assert over_time["fraction"].iloc[-5:].mean() > over_time["fraction"].iloc[:5].mean()
