"""Where a method in dap differs from its official code: one record per difference, one source.

Each method package lists its differences as :class:`Difference` records in its ``official.py``
(``DIFFERENCES``). The same records are rendered into the package's docstring (so
``help(dap.methods.ddad)`` shows them, :func:`docstring_section`) and into its notebook
(:func:`markdown`), so the two can never disagree. A difference says what the official code
does, what dap does, why, and — where restoring the official behaviour is cheap — the option
that does it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Difference:
    """One place where dap differs from the official code (or matches it, checked).

    topic : what is compared (``"denoising grid"``); official : what the official code does
    (with its file or config key where useful); dap : what dap does; reason : why (no weights
    offline, scale, teaching choice, a bug in the official code, ...); option : the config
    setting that restores the official behaviour, or ``""`` when there is none.
    """

    topic: str
    official: str
    dap: str
    reason: str
    option: str = ""


def markdown(differences: Sequence[Difference]) -> str:
    """A Markdown table of ``differences`` (for notebooks and the README)."""
    rows = ["| topic | official code | dap | why | option restoring the official |",
            "|---|---|---|---|---|"]
    for d in differences:
        cells = [d.topic, d.official, d.dap, d.reason, f"`{d.option}`" if d.option else "—"]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


def docstring_section(differences: Sequence[Difference], title: str = "Official code vs dap"
                      ) -> str:
    """The records as a docstring section (one paragraph each), appended to a package's
    ``__doc__`` at import."""
    lines = ["", title, "-" * len(title)]
    for d in differences:
        lines.append(f"* **{d.topic}.** Official: {d.official} dap: {d.dap} Why: {d.reason}"
                     + (f" Option: ``{d.option}``." if d.option else ""))
    return "\n".join(lines) + "\n"


__all__ = ["Difference", "markdown", "docstring_section"]
