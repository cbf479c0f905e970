"""notebooks/tour.ipynb runs from top to bottom in a real kernel, at a tiny size, and what it
prints is what its runs wrote."""

from __future__ import annotations

import json
import re

import nbformat
from nbclient import NotebookClient

from .conftest import REPO

NOTEBOOK = REPO / "notebooks" / "tour.ipynb"
TINY = (
    "--n-layer 1 --n-head 2 --n-embd 32 --block-size 16 --batch-size 4 --eval-every 3 "
    "--set warmup_steps=2 --set eval_bytes=1024 --set final_eval_bytes=2048"
)


def with_parameters(nb, **values):
    """The notebook with a cell setting ``values`` right after its parameters cell, as
    papermill injects them."""
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    lines = [f"{name} = {value!r}" for name, value in values.items()]
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell("\n".join(lines)))
    return nb


def text_of(cell) -> str:
    """Everything a cell printed or displayed as text (rich's tables too), without colours."""
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif "text/plain" in out.get("data", {}):
            parts.append(out.data["text/plain"])
    return re.sub(r"\x1b\[[0-9;]*m", "", "".join(parts))


def cell_running(nb, needle: str):
    return next(c for c in nb.cells if c.cell_type == "code" and needle in c.source)


def test_the_tour_runs_and_prints_real_numbers(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    runs = tmp_path / "runs"
    nb = with_parameters(nb, SIZE=TINY, STEPS=6, COMPARE_STEPS=4, SEEDS=2, RUNS=str(runs))
    # a cell that raises fails here, with the cell and its traceback in the message
    NotebookClient(nb, timeout=300, kernel_name="python3").execute(cwd=str(tmp_path))

    install = text_of(nb.cells[2])
    assert "KennethLM is already installed" in install  # the guard: no pip install here
    assert f"from {REPO / 'kennethlm_core'}" in install  # the kernel runs this checkout

    summary = json.loads((runs / "tour" / "summary.json").read_text())
    shown = text_of(cell_running(nb, "summary.json"))
    assert re.match(r"val_bpb (\d+\.\d{4}) on cpu", shown), shown
    assert f"val_bpb {summary['val_bpb']:.4f} on {summary['device']}" in shown
    outputs = cell_running(nb, "metrics.jsonl").outputs
    assert any("image/png" in out.get("data", {}) for out in outputs)  # the curve is drawn

    train = text_of(cell_running(nb, 'klm(f"run '))
    assert f"val_bpb {summary['val_bpb']:.4f} (95% CI" in train  # klm run's own summary line
    assert "step      6" in train
    assert "warning" not in train  # nothing but klm's own lines

    sample = text_of(cell_running(nb, "klm(f'sample"))
    assert "Der var engang" in sample and len(sample.split("Der var engang", 1)[1].strip()) > 20

    evaluation = json.loads((runs / "tour" / "eval.json").read_text())
    shown = text_of(cell_running(nb, 'klm(f"eval'))
    validation = evaluation["bpb"]["metrics"]["bpb"]["value"]
    test = evaluation["bpb/test"]["metrics"]["bpb"]["value"]
    assert re.search(rf"│ bpb +│ bpb +│ {validation:.4f} │", shown), shown
    assert re.search(rf"│ bpb/test +│ bpb +│ {test:.4f} │", shown), shown
    assert abs(validation - summary["val_bpb"]) < 1e-3  # the split the run's summary scored

    compared = json.loads((runs / "compare" / "summary.json").read_text())
    assert compared["seeds"] == [1, 2]
    shown = text_of(cell_running(nb, "compare --baseline"))
    assert f"verdict: {compared['verdict']}" in shown
    outputs = cell_running(nb, "trajectories.png").outputs
    assert any("image/png" in out.get("data", {}) for out in outputs)
