"""What every checker returns: a `Verdict`, right or wrong and why, shown as one line."""

from dataclasses import dataclass

import torch


@dataclass
class Verdict:
    """Right (`ok=True`), wrong (`False`) or not answered yet (`None`), and why.

    >>> Verdict(True, "40: two branches a step.")
    ✓ Right: 40: two branches a step.
    """

    ok: bool | None  # None: not answered yet
    why: str

    def __repr__(self) -> str:
        if self.ok is None:
            return f"… Not answered yet: {self.why}"
        return f"{'✓ Right' if self.ok else '✗ Not quite'}: {self.why}"

    def __bool__(self) -> bool:
        return bool(self.ok)


NOT_YET = Verdict(None, "replace None with your answer and run the cell again.")


def close(a, b, tol: float = 1e-4) -> bool:
    """Equal to a relative and absolute tolerance, whatever the types (numbers, tensors).

    >>> close(1.0, 1.00001), close([1.0, 2.0], [1.0, 2.1])
    (True, False)
    """
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                          atol=tol, rtol=tol)
