"""Notebooks run headless in a real Jupyter kernel (nbclient, ipykernel): notebooks/notes.ipynb runs through, its
pictures and page inline; and the kernel's interrupt (Ctrl-C) stops a run with its checkpoints kept, returns to
the prompt, leaves the kernel as it was, and resume="auto" finishes the run."""

import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = pytest.mark.slow  # a kernel of its own, and real training runs


def _execute(notebook: object, cwd: Path, **settings: object) -> object:
    client = nbclient.NotebookClient(
        notebook, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}, **settings
    )
    client.execute()
    return notebook


def _outputs(cell: object, kind: str) -> list[str]:
    return [output.get(kind, "") for output in cell.outputs if kind in output]


def _data(cell: object, mime: str) -> list[str]:
    return [output["data"][mime] for output in cell.outputs if mime in output.get("data", {})]


def test_the_notes_notebook_runs_through(tmp_path: Path) -> None:
    shutil.copyfile(ROOT / "notebooks" / "notes.ipynb", tmp_path / "notes.ipynb")
    notebook = nbformat.read(tmp_path / "notes.ipynb", as_version=4)
    (setup,) = [cell for cell in notebook.cells if "EPOCHS = 3" in cell.source]
    setup.source = setup.source.replace("EPOCHS = 3", "EPOCHS = 1")  # shrunk, as the README's commands are
    _execute(notebook, tmp_path, timeout=600)
    cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    shown = "".join(source for cell in cells for source in _outputs(cell, "text"))
    assert "epoch 0" in shown  # one line per epoch, no progress bar redrawn
    assert "\r" not in shown

    def cell(start: str) -> object:
        (found,) = [cell for cell in cells if cell.source.startswith(start)]
        return found

    assert any("Run(" in text for text in _data(cell("network = mlptrain.run("), "text/plain"))
    assert len(_data(cell("network.pictures()"), "image/png")) == 5
    assert "<table" in _data(cell("activations = mlptrain.sweep("), "text/html")[0]
    assert len(_data(cell("import matplotlib.pyplot as plt"), "image/png")) == 1
    assert 'srcdoc="' in _data(cell("network.page()"), "text/html")[0]
    assert "predicted:" in "".join(_outputs(cell("from mlptrain.predict import test_set"), "text"))
    # Nothing written beside the notebook but outputs/
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.ipynb", "outputs"]


INTERRUPTED = dict(trainer__max_epochs=40, data__train_size=20000, report__enabled=False, model__hidden=[64])


def test_the_kernels_interrupt_stops_a_run_that_resume_auto_finishes(tmp_path: Path) -> None:
    cell = nbformat.v4.new_code_cell
    settings = ", ".join(f"{key}={value!r}" for key, value in INTERRUPTED.items())
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        cell(
            "import logging, signal, warnings\nimport mlptrain\n"
            # warmed up: torch, Lightning and MNIST loaded, so that the interrupt lands in training
            "mlptrain.run(trainer__max_epochs=1, data__train_size=2000, report__enabled=False)\n"
            "before = (logging.getLogger().level, list(logging.getLogger().handlers), list(warnings.filters))"
        ),
        cell(
            f'try:\n    mlptrain.run({settings}, path="interrupted")\n'
            "finally:\n    ctrl_c = signal.getsignal(signal.SIGINT)  # in the cell: the kernel resets it for each",
            metadata={"tags": ["raises-exception"]},
        ),
        cell(
            "after = (logging.getLogger().level, list(logging.getLogger().handlers), list(warnings.filters))\n"
            "assert after == before, (before, after)\n"
            "assert ctrl_c is signal.default_int_handler, ctrl_c  # Ctrl-C works again after the interrupted run\n"
            "print(mlptrain.load('interrupted').summary['status'])"
        ),
        cell(f'run = mlptrain.run({settings}, path="interrupted", resume="auto")\nprint(run.summary["status"])'),
    ]
    # The second cell runs past its 6 s: nbclient interrupts the kernel as Jupyter's Ctrl-C (I I) does, and goes on
    # with the next cells in the same kernel, as a user does.
    _execute(
        notebook,
        tmp_path,
        interrupt_on_timeout=True,
        timeout_func=lambda cell: 6 if 'path="interrupted")' in cell.source else 600,
    )
    interrupted = notebook.cells[1]
    (error,) = [output for output in interrupted.outputs if output.output_type == "error"]
    assert error.ename == "RunInterrupted", error
    assert 'resume="auto", path="' in error.evalue and "Training was interrupted during epoch" in error.evalue
    frames = "".join(error.traceback)
    assert "hydra" not in frames and "lightning" not in frames, (
        frames
    )  # the paragraph, not Hydra's or Lightning's stack
    assert "interrupted" in "".join(_outputs(notebook.cells[2], "text"))  # and the kernel as it was (asserted there)
    assert "completed" in "".join(_outputs(notebook.cells[3], "text"))
    metrics = (tmp_path / "interrupted" / "metrics.csv").read_text().splitlines()
    epochs = [int(line.split(",")[0]) for line in metrics[1:-1]]
    assert epochs == list(range(INTERRUPTED["trainer__max_epochs"])), epochs  # each epoch once, none missing
