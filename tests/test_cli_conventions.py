"""Command-line conventions (issue 15): -v/-q before or after the verb, one line for an unexpected
error, progress as plain lines off a terminal, ``run --no-progress``."""

import logging

import pytest

from pipeline.cli import app
from pipeline.run import compute


@pytest.mark.parametrize("argv", [["-v", "kinetics", "s.zarr"], ["kinetics", "s.zarr", "-v"],
                                  ["kinetics", "--verbose", "s.zarr"]])
def test_verbose_before_or_after_the_verb(argv):
    args = app.build_parser().parse_args(argv)
    assert args.verbose is True and args.quiet is False


def test_quiet_and_defaults():
    assert app.build_parser().parse_args(["kinetics", "s.zarr", "-q"]).quiet is True
    args = app.build_parser().parse_args(["kinetics", "s.zarr"])
    assert (args.verbose, args.quiet) == (False, False)
    with pytest.raises(SystemExit) as info:
        app.main(["-v", "kinetics", "s.zarr", "-q"])
    assert info.value.code == 2


def test_quiet_hides_info_lines(tmp_path, capsys):
    assert app.main(["kinetics", str(tmp_path / "none.zarr"), "-q"]) == 2
    assert logging.getLogger("pipeline").level == logging.WARNING
    assert app.main(["kinetics", str(tmp_path / "none.zarr"), "-v"]) == 2
    assert logging.getLogger("pipeline").level == logging.DEBUG


def test_unexpected_error_is_one_line_and_the_traceback_needs_verbose(tmp_path, capsys, monkeypatch):
    import pipeline.cli.kinetics as verb

    def broken(args):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(verb, "main", broken)
    assert app.main(["kinetics", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.strip() == ("uptrack kinetics: unexpected error: RuntimeError: disk on fire; "
                           "run again with -v for the traceback")
    assert app.main(["kinetics", str(tmp_path), "-v"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "disk on fire" in err


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(caplog, monkeypatch):
    monkeypatch.setattr(compute, "_stderr_is_terminal", lambda: False)
    with caplog.at_level(logging.INFO, logger="pipeline.run.compute"):
        bar = compute.progress(40, "detect", unit="frame")
        for _ in range(40):
            bar.update()
        bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "detect: 0/40" and lines[-1] == "detect: 40/40" and len(lines) == 11
    assert not any("\r" in line for line in lines)


def test_progress_is_a_bar_on_a_terminal(monkeypatch):
    monkeypatch.setattr(compute, "_stderr_is_terminal", lambda: True)
    bar = compute.progress(3, "detect")
    assert type(bar).__module__.startswith("tqdm")
    bar.close()


def test_run_has_no_progress_option():
    args = app.build_parser().parse_args(["run", "c.yaml", "--no-progress", "-v"])
    assert args.no_progress is True and args.verbose is True
