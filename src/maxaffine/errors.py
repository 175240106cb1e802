"""The two exceptions maxaffine raises on bad input.

Every error names its culprit (module path, argument, shape) and says what to do,
so that exactness is never silently lost.
"""

from __future__ import annotations


class MaxAffineError(ValueError):
    """Bad input to a maxaffine function: wrong shape, dtype, NaN, degenerate geometry."""


class MaxAffineTypeError(MaxAffineError, TypeError):
    """An argument of the wrong type (a string where a number is expected, ...).

    Both a :class:`MaxAffineError` and a ``TypeError``, so code written for either
    Python convention catches it."""


class MaxAffineWarning(UserWarning):
    """A result is exact only up to a stated limit (e.g. regions below the
    partition's tolerance): the message says how many, which limit, what to do."""


class UnsupportedOperation(MaxAffineError):
    """The model contains operations that are not affine or piecewise-affine.

    Raised by :func:`maxaffine.trace` with *all* offending operations listed at
    once, each with its module path and a hint.
    """

    def __init__(self, problems: list[str] | str):
        if isinstance(problems, str) or not isinstance(problems, list | tuple):
            problems = [problems]
        self.problems = [str(p) for p in problems]
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"{len(self.problems)} operation(s) are not affine or piecewise-affine, "
            f"so the model is not a max-affine spline:\n{lines}\n"
            "Replace them with supported ops (see maxaffine.supported_ops()), "
            "or pass exact=False where a local linearization is acceptable."
        )
