"""The slow tier also takes in the benchmark's examples: each generates dozens of pictures.

`python -m pytest -q -m "not slow"` is the fast tier a developer runs while working; CI and
the README's test command run everything.
"""

import pytest

SLOW_DOCTEST_MODULES = ("sdxl_edu.nano.bench.",)


def pytest_collection_modifyitems(items):
    for item in items:
        if isinstance(item, pytest.DoctestItem) and item.name.startswith(SLOW_DOCTEST_MODULES):
            item.add_marker(pytest.mark.slow)
