"""Condition comparison: hierarchical bootstrap on drawn cell tables, and `uptrack compare` end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import build_store

from pipeline.errors import InputError
from pipeline.eval.compare import bootstrap_rates, compare_conditions
from pipeline.io import store
from pipeline.sim.simulate import SimulationConfig, simulate, write_simulation


def _mean_one(rng, sigma, size):
    """Log-normal factors with mean 1 (so the population rate stays the nominal one)."""
    return np.exp(rng.normal(-sigma**2 / 2, sigma, size))


def _drawn_batch(rng, k_by_condition: dict[str, float], *, replicates=3, movies=2, cells=10,
                 sd_replicate=0.25, sd_movie=0.15, sd_cell=0.4) -> pd.DataFrame:
    """Cells tables of a batch drawn from known distributions: rates vary by replicate, movie, cell."""
    rows = []
    for cond, k in k_by_condition.items():
        for r in range(replicates):
            k_r = k * _mean_one(rng, sd_replicate, 1)[0]
            for m in range(movies):
                k_m = k_r * _mean_one(rng, sd_movie, 1)[0]
                k_c = k_m * _mean_one(rng, sd_cell, cells)
                time = rng.gamma(4.0, 15.0, cells)  # vesicular particle-minutes per cell
                rows.append(pd.DataFrame({
                    "condition": cond, "replicate": f"r{r}", "movie": f"{cond}_r{r}_m{m}",
                    "cell_id": np.arange(1, cells + 1), "n_release": rng.poisson(k_c * time),
                    "vesicular_time_min": time, "n_internalization": 0, "membrane_bound_time_min": 0.0,
                    "n_unbinding": 0}))
    return pd.concat(rows, ignore_index=True)


def test_half_the_release_rate_is_recovered_as_a_ratio_within_its_bootstrap_ci():
    rng = np.random.default_rng(7)
    cells = _drawn_batch(rng, {"control": 0.1, "inhibitor": 0.05})
    rates, ratios = compare_conditions(cells, rates=("k_release_per_min",), reference="control", n_boot=1000)
    row = ratios.iloc[0]
    assert row["condition"] == "inhibitor" and row["hierarchy"] == "replicate > movie > cell"
    assert row["ci_low"] <= 0.5 <= row["ci_high"]
    assert row["ci_high"] < 1.0  # the difference is found
    by = rates.set_index("condition")
    for cond, k in (("control", 0.1), ("inhibitor", 0.05)):
        assert by.loc[cond, "ci_low"] <= k <= by.loc[cond, "ci_high"]
    # replicate and movie variation make the honest interval wider than the Poisson one
    width = by["ci_high"] - by["ci_low"]
    assert np.all(width > by["poisson_ci_high"] - by["poisson_ci_low"])


def test_bootstrap_covers_the_population_rate_at_about_the_nominal_level():
    """Coverage over repeated batches (small: 40 batches, 300 resamples each)."""
    rng = np.random.default_rng(11)
    hits = 0
    for _ in range(40):
        cells = _drawn_batch(rng, {"a": 0.2}, replicates=4, movies=2, cells=6)
        draws, _ = bootstrap_rates(cells, "k_release_per_min", n_boot=300, seed=int(rng.integers(1 << 30)))
        lo, hi = np.quantile(draws, [0.025, 0.975])
        hits += lo <= 0.2 <= hi
    assert hits >= 30  # ~0.85-0.95 expected (percentile bootstrap with 4 replicates under-covers a little)


def test_without_replicates_the_movies_are_the_top_level():
    rng = np.random.default_rng(3)
    cells = _drawn_batch(rng, {"a": 0.1}).assign(replicate="")
    _, hierarchy = bootstrap_rates(cells, "k_release_per_min", n_boot=10)
    assert hierarchy == "movie > cell"


def test_an_unknown_reference_condition_is_an_input_error_naming_the_conditions():
    cells = _drawn_batch(np.random.default_rng(0), {"control": 0.1, "azide": 0.05}, replicates=1, movies=1, cells=3)
    with pytest.raises(InputError, match="azide, control"):
        compare_conditions(cells, reference="ctrl", n_boot=10)


def test_uptrack_compare_writes_rates_ratios_curves_and_report(tmp_path):
    """End to end on ground-truth stores of four small simulated movies (two per condition)."""
    from pipeline.cli.app import main

    batch = tmp_path / "batch"
    for cond, k_rel in (("control", 0.6), ("slow", 0.3)):
        for rep in (1, 2):
            config = SimulationConfig(seed=10 * rep + int(k_rel * 10), shape=(128, 128), n_frames=40, n_cells=3,
                                      cell_radius_um=(4.0, 5.0), n_particles_initial=10, n_bound_initial=25,
                                      n_vesicular_initial=5, k_internalization_per_min=2.0,
                                      k_release_per_min=k_rel, cell_rate_cv=0.0, particle_arrival_per_min=20)
            sim = simulate(config)
            movie = write_simulation(sim, tmp_path / "movies", f"{cond}{rep}")["movie"]
            path = build_store(batch / f"{cond}{rep}.zarr", movie, sim.truth)
            store.update_attrs(path, metadata={"condition": cond, "replicate": rep})
    assert main(["compare", str(batch), "--reference", "control", "--n-boot", "300"]) == 0
    out = batch / "compare"
    ratios = pd.read_csv(out / "ratios.csv").set_index("rate")
    rel = ratios.loc["k_release_per_min"]
    assert rel["condition"] == "slow" and rel["ci_low"] <= 0.5 <= rel["ci_high"]
    assert (out / "report_figures" / "curves_by_condition.svg").is_file()
    assert (out / "report_figures" / "curves_by_condition.pdf").is_file()
    text = (out / "report.html").read_text()
    assert "Ratios to control" in text and "data:image/png;base64," in text
