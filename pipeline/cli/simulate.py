"""``uptrack simulate``: write a simulated movie with its ground truth.

The config is a YAML mapping of :class:`pipeline.sim.simulate.SimulationConfig`
fields; ``--set key=value`` overrides single fields (values are read as YAML,
e.g. ``--set shape=[512,512] --set nuclei_channel=true``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml
from pydantic import ValidationError

from pipeline.cli import add_set_option
from pipeline.errors import InputError
from pipeline.vocabulary import EVENTS, STATES

HELP = "simulate a live-cell particle-uptake movie (OME-TIFF) with its ground truth"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="folder to write into (created)")
    parser.add_argument("--name", default="sim", help="movie name: writes NAME.ome.tif and NAME.truth/ "
                        "(default: sim)")
    parser.add_argument("--config", type=Path, metavar="SIM.yaml", help="YAML file of SimulationConfig fields")
    add_set_option(parser, "a simulation config field", "--set n_frames=40")
    parser.add_argument("--seed", type=int, help="random seed (overrides the config)")
    parser.add_argument("--preview", action="store_true", help="also write NAME_preview.png, a montage "
                        "with the ground truth drawn on")


def _read_config(args: argparse.Namespace):
    from pipeline.sim.simulate import SimulationConfig

    fields: dict = {}
    if args.config is not None:
        if not args.config.is_file():
            raise InputError(f"--config {args.config}: no such file")
        try:
            fields = yaml.safe_load(args.config.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"--config {args.config}: not valid YAML ({exc})") from exc
        if not isinstance(fields, dict):
            raise InputError(f"--config {args.config}: expected a mapping of SimulationConfig fields")
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--set {item!r}: expected KEY=VALUE, e.g. --set snr=3")
        fields[key.strip()] = yaml.safe_load(value)
    if args.seed is not None:
        fields["seed"] = args.seed
    try:
        return SimulationConfig(**fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        source = args.config or "--set"
        raise InputError(f"simulation config ({source}): {problems}") from exc


def main(args: argparse.Namespace) -> int:
    from pipeline.sim.simulate import simulate, write_simulation

    config = _read_config(args)
    start = time.perf_counter()
    sim = simulate(config)
    seconds = time.perf_counter() - start
    written = write_simulation(sim, args.out_dir, args.name)
    print(f"simulated {config.n_frames} frames of {config.shape[0]}×{config.shape[1]} px in {seconds:.1f} s")
    print(f"wrote {written['movie']}")
    print(f"wrote {written['truth'][0].parent}/ ({', '.join(p.name for p in written['truth'])})")
    if args.preview:
        from pipeline.sim.preview import write_montage

        print(f"wrote {write_montage(sim.movie, sim.truth, args.out_dir / f'{args.name}_preview.png')}")
    truth = sim.truth
    states = truth.particles["state"].value_counts()
    events = truth.events["kind"].value_counts()
    print(f"truth: {len(truth.cells)} cells, {truth.particles['particle_id'].nunique()} particles, "
          f"{len(truth.particles)} particle-frames")
    print("  particle-frames by state: " + ", ".join(f"{s} {states.get(s, 0)}" for s in STATES))
    print("  events: " + ", ".join(f"{kind} {events.get(kind, 0)}" for kind in EVENTS))
    return 0
