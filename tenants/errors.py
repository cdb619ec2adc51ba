"""The one exception type for bad configuration: every problem found, not just the first.

Parsers collect problems as plain strings that name where the problem is
("tenant 'alpha': prefixes[1]: ...") and raise one `ConfigError` at the end,
so an operator fixes a file in one pass and nothing is applied in between.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any

# Problems printed by str(error); the rest are summarised so a file with
# thousands of mistakes still yields a readable message. `problems` keeps all.
MAX_PROBLEMS_SHOWN = 50


class ConfigError(ValueError):
    """Configuration that cannot be applied; `problems` lists every reason found."""

    def __init__(self, problems: str | Sequence[str], source: str | None = None) -> None:
        self.problems: list[str] = [problems] if isinstance(problems, str) else list(problems)
        if not self.problems:
            raise ValueError("ConfigError needs at least one problem")
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        where = f"{self.source}: " if self.source else ""
        if len(self.problems) == 1:
            return where + self.problems[0]
        shown = self.problems[:MAX_PROBLEMS_SHOWN]
        lines = [f"{where}{len(self.problems)} problems:"] + [f"  - {problem}" for problem in shown]
        if len(self.problems) > len(shown):
            lines.append(f"  ... and {len(self.problems) - len(shown)} more")
        return "\n".join(lines)

    def with_source(self, source: str) -> ConfigError:
        """The same problems, attributed to a file (or other origin)."""
        return ConfigError(self.problems, source=source)


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest known word, else the list of known words."""
    known = sorted(known)
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (known: {', '.join(known)})"


def type_name(value: object) -> str:
    """How TOML would call the type of a value, for messages like 'expected a string, got an integer'."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    return type(value).__name__


def whole_number(where: str, value: Any, low: int, high: int, problems: list[str], unit: str = "") -> int | None:
    """`value` when it is an integer within [low, high]; otherwise None, with the problem named
    `where` appended (`unit`, e.g. " bits/s", follows the numbers in the message)."""
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(f"{where}: expected an integer{unit}, got {type_name(value)} {value!r}")
        return None
    if not low <= value <= high:
        problems.append(f"{where}: must be between {low} and {high}{unit}, got {value}")
        return None
    return value
