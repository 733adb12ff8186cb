"""How long each lesson takes to run headless, against its budget (120 s each, 20 min in all: issue 19).

    python benchmarks/lessons_time.py [--lessons lessons]

Executes every notebook with nbclient (a fresh kernel each, so imports and loading count) on
whatever model the environment selects (nano SDXL unless SDXL_EDU_MODEL is set) and prints
seconds and the ratio to the budget. The notebooks on disk are not modified.
"""

import argparse
import time
from pathlib import Path

from sdxl_edu.course.figures import execute, lesson_notebooks

BUDGET_EACH_S, BUDGET_ALL_S = 120, 1200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lessons", default=str(Path(__file__).resolve().parent.parent / "lessons"))
    args = parser.parse_args()
    total = 0.0
    for path in lesson_notebooks(Path(args.lessons)):
        start = time.perf_counter()
        execute(path)
        seconds = time.perf_counter() - start
        total += seconds
        print(f"{path.stem:<45} {seconds:6.1f} s   {seconds / BUDGET_EACH_S:5.2f} of the {BUDGET_EACH_S} s budget")
    print(f"{'all lessons':<45} {total:6.1f} s   {total / BUDGET_ALL_S:5.2f} of the {BUDGET_ALL_S} s budget")


if __name__ == "__main__":
    main()
