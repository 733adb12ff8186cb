"""Regenerate `figures/`: `python -m sdxl_edu figures [--lessons lessons] [--out figures]`.

The figures are the lessons' own pictures, so there is one source for each: every lesson
notebook is executed headless (on nano SDXL unless `SDXL_EDU_MODEL` says otherwise), and each
code cell tagged `figure:NAME` has its picture saved as `figures/NAME.png`. The notebooks are
not modified. Needs the `dev` extra (nbclient, ipykernel), which a course checkout has.
"""

import base64
import os
from pathlib import Path

from tqdm.auto import tqdm


def tagged_pictures(nb) -> dict[str, bytes]:
    """{name: PNG bytes} for every executed cell tagged `figure:name` (its last picture).

    >>> import nbformat
    >>> cell = nbformat.v4.new_code_cell("show()", metadata={"tags": ["figure:demo"]})
    >>> cell.outputs = [nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0K"})]
    >>> pictures = tagged_pictures(nbformat.v4.new_notebook(cells=[cell]))
    >>> list(pictures), pictures["demo"][1:4]
    (['demo'], b'PNG')
    """
    pictures = {}
    for cell in nb.cells:
        names = [t.split(":", 1)[1] for t in cell.get("metadata", {}).get("tags", []) if t.startswith("figure:")]
        pngs = [o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
        for name in names:
            if not pngs:
                raise RuntimeError(f"the cell tagged figure:{name} made no picture")
            pictures[name] = base64.b64decode(pngs[-1])
    return pictures


def lesson_notebooks(lessons: Path) -> list[Path]:
    """The numbered lesson notebooks of a folder, in reading order."""
    return sorted(Path(lessons).glob("[0-9][0-9]_*.ipynb"))


def execute(path: Path):
    """Run a notebook headless in a fresh kernel (in its own folder, with this process's
    environment, so SDXL_EDU_MODEL applies) and return it executed; the file is not changed."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


def regenerate(lessons: Path, out: Path) -> list[Path]:
    """Execute every lesson and write its tagged figures; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    notebooks = lesson_notebooks(lessons)
    if not notebooks:
        raise FileNotFoundError(f"no lesson notebooks in {lessons}: run this from the repository's root, or pass "
                                "--lessons")
    for path in tqdm(notebooks, desc="lessons"):
        nb = execute(path)
        for name, png in tagged_pictures(nb).items():
            (out / f"{name}.png").write_bytes(png)
            written.append(out / f"{name}.png")
    return written


def main(lessons: str = "lessons", out: str = "figures") -> None:
    written = regenerate(Path(lessons), Path(out))
    model = os.environ.get("SDXL_EDU_MODEL") or "nano SDXL"
    print(f"{len(written)} figures written to {out}/ from {model}: " + ", ".join(p.name for p in written))
