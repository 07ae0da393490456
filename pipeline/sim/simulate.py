"""Ground-truth movie simulator: cells taking up and releasing fluorescent particles.

``simulate(SimulationConfig(...))`` returns the movie and its ground truth in
memory; ``write_simulation(sim, out_dir, name)`` writes

- ``NAME.ome.tif``: (T, C, Y, X) uint16 OME-TIFF, channels ``cells``,
  ``particles`` and optionally ``nuclei``; OME-XML carries PhysicalSizeX/Y (µm)
  and TimeIncrement (s). Its UUID is derived from the config, so the same
  config gives the same bytes.
- ``NAME.truth/``: the ground truth, format documented in :mod:`pipeline.sim.truth`.

Model
-----
Cells (:mod:`pipeline.sim.cells`): irregular star-shaped outlines from low
Fourier harmonics, drifting and deforming, never overlapping, optionally
densely packed; cytoplasmic or membrane stain with texture and cell-to-cell
brightness variation; optional nuclear stain. Particles
(:mod:`pipeline.sim.particles`): Poisson arrivals, Brownian motion, binding on
contact, exponential dwell times with per-cell rates, vesicle runs, release.

Optics and camera (:mod:`pipeline.optics`): each particle is a
pixel-integrated Gaussian spot with sigma ``psf_sigma_px`` (default 1 px: an
effective widefield PSF of a ~100 nm particle, slightly out of focus, at 0.2 µm
pixels; ``None`` gives the in-focus diffraction limit 0.21 λ / NA), photons log-normal around a median; the particle channel adds a
uniform background and cell autofluorescence; Poisson shot noise, Gaussian
read noise, gain and offset give uint16 counts.

SNR (Chenouard et al. 2014, ISBI 2012 particle-tracking challenge)::

    snr = (peak of a median-brightness particle above local background)
          / (noise std at the particle's peak)

where the peak is the expected peak-pixel value of a spot centred on a pixel
and the local background is the medium background ``background_photons``
(over cells autofluorescence adds to it, lowering the SNR there). The median
particle photons are set so that the requested ``snr`` holds; ``cell_snr``
sets the cell channel the same way for a typical cell pixel.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import tifffile
from pydantic import Field

from pipeline import __version__
from pipeline.errors import InputError
from pipeline.optics import camera, centred_peak_fraction, peak_photons_for_snr, psf_sigma_px, render_spots
from pipeline.params import Params
from pipeline.sim.cells import (
    CellLayout,
    CellLooks,
    evolve_layout,
    lognormal_factor,
    place_cells,
    random_looks,
    render_cells,
    simulate_cell_images,
)
from pipeline.sim.particles import MEMBRANE_BOUND, VESICULAR, ParticleSystem
from pipeline.sim.truth import TRUTH_FORMAT, Truth, load_truth, truth_dir_for, write_truth
from pipeline.vocabulary import EVENTS

__all__ = ["SimulationConfig", "Simulation", "simulate", "write_simulation", "load_truth",
           "simulate_cell_images"]


class SimulationConfig(Params):
    """Everything that defines a simulated movie. Physical values carry their unit in the name."""

    seed: int = Field(0, description="random seed; same seed, same bytes")
    shape: tuple[int, int] = Field((320, 320), description="frame size (Y, X), pixels")
    n_frames: int = Field(80, ge=1)
    pixel_size_um: float = Field(0.2, gt=0)
    frame_interval_s: float = Field(3.0, gt=0)

    # cells
    n_cells: int = Field(6, ge=0)
    cell_radius_um: tuple[float, float] = Field((6.0, 9.0), description="range of base cell radii, µm")
    cell_spacing: float = Field(1.1, gt=0, description="min centre distance / (r_i + r_j); < 1 packs cells "
                                "densely so they touch")
    cell_gap_um: float = Field(0.2, ge=0, description="gap between touching cells, µm")
    cell_irregularity: float = Field(0.12, ge=0, le=0.4, description="outline harmonic amplitude (relative)")
    cell_shape_tau_s: float = Field(300.0, gt=0, description="correlation time of the outline deformation, s")
    D_cell_um2_s: float = Field(0.002, ge=0, description="diffusion coefficient of cell centres, µm²/s")
    stain: Literal["cytoplasm", "membrane"] = "cytoplasm"
    nuclei_channel: bool = Field(False, description="add a nuclear-stain channel")
    cell_snr: float = Field(10.0, gt=0, description="SNR of a typical cell-channel pixel")
    cell_brightness_cv: float = Field(0.3, ge=0, description="cell-to-cell brightness variation (CV)")
    cell_texture: float = Field(0.25, ge=0, description="relative amplitude of the intensity texture")
    nucleus_brightness: tuple[float, float] = Field((0.6, 1.3), description="range of the nucleus' brightness "
                                                    "in the cytoplasmic stain, relative to the cytoplasm "
                                                    "(< 1: a dim nucleus)")

    # particles
    n_particles_initial: int = Field(40, ge=0, description="extracellular particles at frame 0")
    n_bound_initial: int = Field(8, ge=0, description="membrane_bound particles at frame 0")
    n_vesicular_initial: int = Field(12, ge=0, description="vesicular particles at frame 0")
    particle_arrival_per_min: float = Field(15.0, ge=0, description="Poisson arrivals from the medium, 1/min")
    D_free_um2_s: float = Field(0.05, ge=0, description="0.01 sedimented ... 1.0 in medium, µm²/s")
    D_membrane_um2_s: float = Field(0.002, ge=0, description="diffusion along the membrane, µm²/s")
    D_vesicle_um2_s: float = Field(0.005, ge=0, description="vesicle diffusion inside the cell, µm²/s")
    vesicle_run_rate_per_min: float = Field(1.0, ge=0, description="rate of directed (microtubule) runs, 1/min")
    vesicle_run_speed_um_s: float = Field(0.3, ge=0, description="speed of a directed run, µm/s")
    p_binding_per_contact: float = Field(0.5, ge=0, le=1, description="binding probability per membrane contact")
    k_internalization_per_min: float = Field(0.3, ge=0, description="membrane_bound -> vesicular rate, 1/min")
    k_release_per_min: float = Field(0.1, ge=0, description="vesicular -> released rate, 1/min")
    k_unbinding_per_min: float = Field(0.05, ge=0, description="membrane_bound -> extracellular rate, 1/min")
    cell_rate_cv: float = Field(0.3, ge=0, description="per-cell log-normal spread (CV) of the internalization "
                                "and release rates")
    brightness_sigma: float = Field(0.4, ge=0, description="sigma of log particle photons")
    bleach_rate_per_frame: float = Field(0.0, ge=0, description="photobleaching: photons decay exp(-rate·frames)")
    blink_probability: float = Field(0.0, ge=0, le=1, description="probability a particle is dark in a frame")
    crossing_frames: int = Field(0, ge=0, description="internalization: frames a new vesicle takes to move from "
                                 "the membrane to its interior depth (0: at once)")

    # optics and camera
    numerical_aperture: float = Field(1.4, gt=0)
    emission_wavelength_nm: float = Field(520.0, gt=0)
    psf_sigma_px: float | None = Field(1.0, gt=0, description="effective PSF sigma, px; None: 0.21·λ/NA")
    snr: float = Field(5.0, gt=0, description="particle SNR (Chenouard et al. 2014), see module docs")
    background_photons: float = Field(20.0, ge=0, description="medium background, photons/pixel")
    autofluorescence_photons: float = Field(3.0, ge=0, description="cell autofluorescence in the particle "
                                            "channel, photons/pixel")
    read_noise_e: float = Field(1.5, ge=0)
    gain_adu_per_e: float = Field(2.0, gt=0)
    offset_adu: float = Field(100.0, ge=0)

    @property
    def psf_px(self) -> float:
        """PSF sigma in pixels (given, or from NA and wavelength)."""
        if self.psf_sigma_px is not None:
            return self.psf_sigma_px
        return psf_sigma_px(self.emission_wavelength_nm, self.numerical_aperture, self.pixel_size_um)

    @property
    def channels(self) -> tuple[str, ...]:
        return ("cells", "particles", "nuclei") if self.nuclei_channel else ("cells", "particles")


@dataclass
class Simulation:
    """A simulated movie and its ground truth, in memory."""

    config: SimulationConfig
    movie: np.ndarray  # (T, C, Y, X) uint16
    truth: Truth


def _cell_layouts(config: SimulationConfig, rng: np.random.Generator) -> list[CellLayout]:
    """Cell geometry of every frame."""
    radius_px = tuple(r / config.pixel_size_um for r in config.cell_radius_um)
    irregularity = config.cell_irregularity
    layout = place_cells(rng, config.n_cells, config.shape, radius_px, spacing=config.cell_spacing,
                         irregularity=irregularity, gap_px=config.cell_gap_um / config.pixel_size_um)
    if layout.n_cells < config.n_cells:
        raise InputError(f"simulation config: only {layout.n_cells} of n_cells={config.n_cells} cells fit in a "
                         f"{config.shape} field; lower n_cells, cell_radius_um or cell_spacing")
    layouts = [layout]
    for _ in range(config.n_frames - 1):
        layout = evolve_layout(layout, rng, config.shape, dt_s=config.frame_interval_s,
                               diffusion_px2_s=config.D_cell_um2_s / config.pixel_size_um**2,
                               shape_tau_s=config.cell_shape_tau_s, irregularity=irregularity,
                               spacing=config.cell_spacing)
        layouts.append(layout)
    return layouts


def _render_frame(config: SimulationConfig, layout: CellLayout, looks: CellLooks, spots: pd.DataFrame,
                  rng: np.random.Generator, *, cell_photons: float) -> tuple[np.ndarray, np.ndarray]:
    """Cell labels (Y, X) and camera image (C, Y, X) uint16 of one frame."""
    cells = render_cells(layout, looks, config.shape, stain=config.stain, blur_px=max(config.psf_px, 0.7),
                         texture_strength=config.cell_texture)
    background = config.background_photons
    expected = [
        background + cell_photons * cells.stain,
        background + config.autofluorescence_photons * cells.autofluorescence
        + render_spots(config.shape, spots["y"].to_numpy(), spots["x"].to_numpy(), spots["photons"].to_numpy(),
                       config.psf_px),
    ]
    if config.nuclei_channel:
        expected.append(background + cell_photons * cells.nuclei)
    image = np.stack([camera(photons, rng, read_noise_e=config.read_noise_e, gain_adu_per_e=config.gain_adu_per_e,
                             offset_adu=config.offset_adu) for photons in expected])
    return cells.labels, image


def _photon_scale(config: SimulationConfig) -> dict[str, float]:
    """PSF sigma and the photon numbers that give the requested SNRs (recorded in the truth's meta)."""
    sigma = config.psf_px
    peak = peak_photons_for_snr(config.snr, config.background_photons, config.read_noise_e)
    return {
        "psf_sigma_px": sigma,
        "particle_peak_photons": peak,
        "particle_photons_median": peak / centred_peak_fraction(sigma),
        "cell_photons": peak_photons_for_snr(config.cell_snr, config.background_photons, config.read_noise_e),
    }


def _simulate_particles(config: SimulationConfig, layouts: list[CellLayout], k_int_per_min: np.ndarray,
                        k_rel_per_min: np.ndarray, photons_median: float,
                        rng: np.random.Generator) -> tuple[ParticleSystem, pd.DataFrame, pd.DataFrame]:
    """Run the particle dynamics over all frames; return the system and its particles and events tables."""
    system = ParticleSystem(config, k_int_per_min / 60, k_rel_per_min / 60, photons_median, rng)
    system.add_arrivals(config.n_particles_initial, layouts[0], frame=0)
    system.add_attached(config.n_bound_initial, MEMBRANE_BOUND, layouts[0])
    system.add_attached(config.n_vesicular_initial, VESICULAR, layouts[0])
    system.record(0, layouts[0])
    for frame in range(config.n_frames - 1):
        system.step(frame, layouts[frame + 1])
        system.record(frame + 1, layouts[frame + 1])
    particles, events = system.finish(config.n_frames - 1)
    return system, particles, events


def _render_movie(config: SimulationConfig, layouts: list[CellLayout], looks: CellLooks, particles: pd.DataFrame,
                  cell_photons: float, seed: np.random.SeedSequence) -> tuple[np.ndarray, np.ndarray]:
    """Cell labels (T, Y, X) and movie (T, C, Y, X), uint16; frames render in parallel threads.

    Each frame has its own noise generator spawned from ``seed``, so the result
    does not depend on the order in which threads finish.
    """
    movie = np.zeros((config.n_frames, len(config.channels), *config.shape), np.uint16)
    labels = np.zeros((config.n_frames, *config.shape), np.uint16)
    spots = particles[particles["visible"]]
    spots_by_frame = dict(tuple(spots.groupby("frame")))
    frame_seeds = seed.spawn(config.n_frames)

    def render(frame: int) -> None:
        labels[frame], movie[frame] = _render_frame(config, layouts[frame], looks,
                                                    spots_by_frame.get(frame, spots.iloc[:0]),
                                                    np.random.default_rng(frame_seeds[frame]),
                                                    cell_photons=cell_photons)

    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(render, range(config.n_frames)))
    return labels, movie


def simulate(config: SimulationConfig) -> Simulation:
    """Simulate a movie and its ground truth (no I/O). Same config, same result."""
    seed_cells, seed_particles, seed_noise = np.random.SeedSequence(config.seed).spawn(3)
    rng_cells = np.random.default_rng(seed_cells)
    layouts = _cell_layouts(config, rng_cells)
    n_cells = layouts[0].n_cells
    looks = random_looks(rng_cells, n_cells, brightness_cv=config.cell_brightness_cv,
                         nucleus_brightness=config.nucleus_brightness)
    k_int = config.k_internalization_per_min * lognormal_factor(rng_cells, config.cell_rate_cv, n_cells)
    k_rel = config.k_release_per_min * lognormal_factor(rng_cells, config.cell_rate_cv, n_cells)
    scale = _photon_scale(config)
    system, particles, events = _simulate_particles(config, layouts, k_int, k_rel, scale["particle_photons_median"],
                                                    np.random.default_rng(seed_particles))
    labels, movie = _render_movie(config, layouts, looks, particles, scale["cell_photons"], seed_noise)
    meta = {
        "format": TRUTH_FORMAT, "version": __version__, "seed": config.seed,
        "config": config.model_dump(mode="json"), "pixel_size_um": config.pixel_size_um,
        "frame_interval_s": config.frame_interval_s, "channels": list(config.channels), "axes": "TCYX",
        **scale,
    }
    cells = _cells_table(system, k_int, k_rel, config.k_unbinding_per_min)
    return Simulation(config=config, movie=movie,
                      truth=Truth(cell_labels=labels, particles=particles, events=events, cells=cells, meta=meta))


def _cells_table(system: ParticleSystem, k_int: np.ndarray, k_rel: np.ndarray, k_unb: float) -> pd.DataFrame:
    table = pd.DataFrame({
        "cell_id": np.arange(1, len(k_int) + 1),
        "k_internalization_per_min": k_int,
        "k_release_per_min": k_rel,
        "k_unbinding_per_min": np.full(len(k_int), k_unb),
    })
    for kind in EVENTS:
        table[f"n_{kind}"] = system.counts[kind]
    table["membrane_bound_time_s"] = system.time_at_risk_s[MEMBRANE_BOUND]
    table["vesicular_time_s"] = system.time_at_risk_s[VESICULAR]
    return table


def _ome_uuid(config: SimulationConfig) -> str:
    """A UUID derived from the config, so that the OME-XML is deterministic."""
    digest = hashlib.sha256(json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()).digest()
    return f"urn:uuid:{uuid.UUID(bytes=digest[:16], version=4)}"


def write_simulation(sim: Simulation, out_dir: str | Path, name: str = "sim") -> dict[str, Path | list[Path]]:
    """Write ``NAME.ome.tif`` and ``NAME.truth/`` into ``out_dir``; return the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = sim.config
    movie_path = out_dir / f"{name}.ome.tif"
    metadata = {
        "axes": "TCYX",
        "UUID": _ome_uuid(config),
        "PhysicalSizeX": config.pixel_size_um, "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": config.pixel_size_um, "PhysicalSizeYUnit": "µm",
        "TimeIncrement": config.frame_interval_s, "TimeIncrementUnit": "s",
        "Channel": {"Name": list(sim.truth.meta.get("channels", config.channels))},  # + marker channels (sim.markers)
    }
    tifffile.imwrite(movie_path, sim.movie, ome=True, photometric="minisblack", compression="zlib",
                     metadata=metadata, software=f"uptrack {__version__}")
    truth_files = write_truth(sim.truth, truth_dir_for(movie_path))
    return {"movie": movie_path, "truth": truth_files}

