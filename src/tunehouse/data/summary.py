"""Whole-file warnings: few examples, duplicates, conflicting answers, truncation, overlap.

Each warning summarises many lines in one issue (``line`` is the first one concerned, the
message lists up to ``SHOWN`` lines and counts the rest); the full lists go into the report's
``stats`` so tools can use them.
"""

from __future__ import annotations

from typing import Any

from tunehouse.data import stats
from tunehouse.data.formats import Issue, Record

SHOWN = 10  # lines listed in one warning message
KEPT = 1000  # pairs/groups kept in stats


def _more(total: int) -> str:
    return f", and {total - SHOWN} more" if total > SHOWN else ""


def _warn(line: int | None, code: str, message: str) -> Issue:
    return Issue(line, None, None, code, message, "warning")


def file_warnings(fmt: str, examples: list[Record], n_examples: int, param: str,
                  recommended: int, into: dict[str, Any]) -> list[Issue]:
    """Few-examples, duplicate and conflicting-answer warnings; fills ``into`` with the lists."""
    out = []
    if param == "training_file" and 10 <= n_examples < recommended:
        out.append(_warn(None, "few_examples", f"only {n_examples} examples: {recommended}-100"
                         " well-chosen examples usually give clearly better results"))
    dups = stats.find_duplicates(examples)
    into["duplicates"] = [list(p) for p in dups[:KEPT]]
    if dups:
        shown = ", ".join(f"line {a} = line {b}" for a, b in dups[:SHOWN])
        out.append(_warn(dups[0][0], "duplicate_example", f"{len(dups)} example(s) repeat an"
                         f" earlier one exactly ({shown}{_more(len(dups))}); duplicates are"
                         " trained on more than once"))
    conflicts = stats.find_conflicts(fmt, examples)
    into["conflicts"] = conflicts[:KEPT]
    if conflicts:
        shown = "; ".join("lines " + ", ".join(map(str, g[:5])) for g in conflicts[:SHOWN])
        out.append(_warn(conflicts[0][0], "conflicting_answers", f"{len(conflicts)} prompt(s)"
                         f" get different answers ({shown}{_more(len(conflicts))}); the model"
                         " learns an average of them: check for labelling mistakes"))
    return out


def token_warnings(counts: list[stats.TokenCount], max_length: int | None) -> list[Issue]:
    """Truncation and nothing-to-train warnings from per-example token counts."""
    out = []
    long = [c for c in counts if c.truncated]
    if long:
        shown = ", ".join(f"{c.line} ({c.n_tokens} tokens)" for c in long[:SHOWN])
        out.append(_warn(long[0].line, "example_too_long", f"{len(long)} example(s) are longer"
                         f" than {max_length} tokens and will be truncated from the end: lines"
                         f" {shown}{_more(len(long))}"))
    empty = [c.line for c in counts if c.n_trained == 0]
    if empty and len(empty) == len(counts):
        out.append(Issue(None, None, None, "no_trained_tokens", "no example has any trained"
                         " (assistant) token left" + (f" within {max_length} tokens"
                                                      if long else "")))
    elif empty:
        shown = ", ".join(map(str, empty[:SHOWN]))
        out.append(_warn(empty[0], "no_trained_tokens", f"{len(empty)} example(s) have no"
                         f" trained (assistant) token{' after truncation' if long else ''}:"
                         f" lines {shown}{_more(len(empty))}"))
    return out


def overlap_warnings(exact: list[tuple[int, int]], prompts: list[tuple[int, int]]
                     ) -> list[Issue]:
    """Warnings for validation examples that also appear (whole, or their prompt) in training."""
    out = []
    if exact:
        shown = ", ".join(f"validation line {v} = training line {t}" for v, t in exact[:SHOWN])
        out.append(_warn(exact[0][0], "train_validation_overlap", f"{len(exact)} validation"
                         f" example(s) also appear in the training file ({shown}"
                         f"{_more(len(exact))}); validation loss will look better than it is"))
    if prompts:
        shown = ", ".join(f"validation line {v} ~ training line {t}" for v, t in prompts[:SHOWN])
        out.append(_warn(prompts[0][0], "train_validation_prompt_overlap", f"{len(prompts)}"
                         f" validation prompt(s) also appear in the training file ({shown}"
                         f"{_more(len(prompts))})"))
    return out
