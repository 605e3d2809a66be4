"""The three profiles every experiment, study and chapter runs under, in one place.

========  ==========  ===============================================================
profile   where       what
========  ==========  ===============================================================
smoke     tests, CI   seconds per notebook; proves every cell runs
quick     a CPU       minutes per notebook; real data, reduced budgets and repeats
paper     a GPU       the paper's protocol as far as one GPU allows
========  ==========  ===============================================================

A profile is a :class:`Profile`. Every edge that receives one from a user (a command line, a
notebook's papermill parameters, a public function) calls :func:`parse_profile` once, which also
accepts the plain strings ``"smoke"``, ``"quick"`` and ``"paper"``; inside the package a profile is
a :class:`Profile` and its sizes are read from tables keyed by it (a task's budget, a study's size,
a chapter's settings). :class:`Profile` is a ``str`` enum whose members equal, hash and print as
their names, so records, keys, paths and JSON hold the same plain strings as before.

This module imports nothing from the package: any room may use it.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from enum import Enum
from typing import TypeVar

__all__ = ["PROFILES", "PROFILE_CHOICES", "Profile", "parse_profile", "pick", "profile_argument"]

T = TypeVar("T")


class Profile(str, Enum):
    """A named scale of work: ``smoke`` (tests), ``quick`` (a CPU), ``paper`` (a GPU)."""

    SMOKE = "smoke"
    QUICK = "quick"
    PAPER = "paper"

    def __str__(self) -> str:
        return self.value

    def __format__(self, format_spec: str) -> str:
        return format(self.value, format_spec)

    def __repr__(self) -> str:
        return repr(self.value)


#: Every profile, smallest first.
PROFILES: tuple[Profile, ...] = tuple(Profile)

#: The profiles as a human-readable list, for help texts: ``"smoke, quick, paper"``.
PROFILE_CHOICES: str = ", ".join(p.value for p in PROFILES)


def parse_profile(value: Profile | str) -> Profile:
    """Return the :class:`Profile` that ``value`` names.

    Args:
        value: A :class:`Profile` or its name (``"smoke"``, ``"quick"`` or ``"paper"``).

    Returns:
        The profile.

    Raises:
        ValueError: If ``value`` names no profile (the message names it and lists the choices).
    """
    if isinstance(value, Profile):
        return value
    if isinstance(value, str):
        try:
            return Profile(value)
        except ValueError:
            pass
    raise ValueError(f"unknown profile {value!r}; expected one of {PROFILE_CHOICES}")


def profile_argument(value: str) -> Profile:
    """Parse a command-line ``--profile`` (for argparse's ``type=``; a bad one is a usage error).

    Raises:
        argparse.ArgumentTypeError: If ``value`` names no profile (the message lists the choices).
    """
    try:
        return parse_profile(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def pick(table: Mapping[Profile, T], profile: Profile | str) -> T:
    """Return ``table``'s entry for ``profile`` (parsed with :func:`parse_profile`).

    Args:
        table: A table keyed by :class:`Profile` members (or their names).
        profile: The profile.

    Returns:
        The entry.

    Raises:
        ValueError: If ``profile`` names no profile, or the table has no entry for it.
    """
    p = parse_profile(profile)
    try:
        return table[p]
    except KeyError:
        raise ValueError(
            f"unknown profile {p.value!r}; expected one of {[str(k) for k in table]}"
        ) from None
