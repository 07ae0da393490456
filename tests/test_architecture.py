"""The house keeps its plan: imports point down the layers, stages do no file I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PIPELINE = Path(__file__).resolve().parents[1] / "pipeline"

#: Layer of each part of pipeline/; a module may import only from layers strictly below its own
#: (and from its own part). stages, io and sim are siblings: none imports another.
RANK = {"errors": 0, "vocabulary": 0, "optics": 0, "params": 0, "weights": 0.5,
        "stages": 1, "io": 1, "sim": 1, "eval": 2, "run": 3, "cli": 4}

#: Names that read or write files; a stage takes arrays and tables, never a path.
FILE_ACCESS = {"open", "tifffile", "zarr", "imageio", "read_csv", "read_parquet", "to_csv", "to_parquet", "imread",
               "imwrite", "read_text", "write_text", "read_bytes", "write_bytes", "np.load", "np.save"}


def _modules():
    for path in sorted(PIPELINE.rglob("*.py")):
        rel = path.relative_to(PIPELINE.parent).with_suffix("")
        yield ".".join(rel.parts).removesuffix(".__init__"), path


def _part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "pipeline" and len(parts) > 1 else None


def _imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "pipeline":
                yield from (f"pipeline.{alias.name}" for alias in node.names)
            else:
                yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def test_every_part_of_pipeline_has_a_layer():
    parts = {_part(module) for module, _ in _modules()} - {None}
    assert parts <= set(RANK), f"give these a layer in RANK (and a README): {parts - set(RANK)}"


@pytest.mark.parametrize("module,path", list(_modules()), ids=[m for m, _ in _modules()])
def test_imports_point_down_the_layers(module, path):
    mine = _part(module)
    if mine is None:
        return
    upward = [target for target in _imports(ast.parse(path.read_text()))
              if (other := _part(target)) not in (None, mine, "__version__", "load_results")
              and other in RANK and RANK[other] >= RANK[mine]]
    assert not upward, f"{module} imports from its own layer or above: {upward}"


@pytest.mark.parametrize("module,path", [(m, p) for m, p in _modules() if _part(m) == "stages"],
                         ids=[m for m, _ in _modules() if _part(m) == "stages"])
def test_stages_do_no_file_io(module, path):
    used = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Name | ast.alias):
            name = node.id if isinstance(node, ast.Name) else node.name
            used |= {name} & FILE_ACCESS
        elif isinstance(node, ast.Attribute):
            dotted = f"{getattr(node.value, 'id', '')}.{node.attr}"
            used |= {node.attr, dotted} & FILE_ACCESS
    assert not used, f"{module} touches files ({sorted(used)}): move that to pipeline/io and pass arrays in"


def test_every_part_has_a_readme():
    missing = [part for part in RANK if (PIPELINE / part).is_dir() and not (PIPELINE / part / "README.md").exists()]
    assert not missing, f"sub-packages without a README: {missing}"
