"""Which namespaces the operator serves when they are named by globs (``team-*``).

kopf serves globs by following the namespaces and watching each match on its own, and stops
watching a namespace the moment it is being deleted (nolar/kopf#1088): a CodingJob in it then
keeps its finalizer for good and ``kubectl delete namespace`` never finishes. So with globs the
operator watches the whole cluster instead (the chart grants cluster-wide rules for globs anyway)
and every handler filters by :meth:`NamespaceScope.serves`. Plain names keep kopf's own
per-namespace watches, which follow no namespace and do not have that problem.

The patterns mean what they mean to kopf: each is a comma-separated list of globs, ``!`` negates
one, the rightmost matching glob decides, and a first glob that does not match rules the
namespace out (a first negation starts from "all namespaces").
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

_GLOB_CHARS = frozenset("*?[!,")


@dataclass(frozen=True)
class NamespaceScope:
    patterns: tuple[str, ...]

    @classmethod
    def of_globs(cls, patterns: Iterable[str]) -> NamespaceScope | None:
        """The scope of PATTERNS when any is a glob; None for plain names (or none at all)."""
        patterns = tuple(patterns)
        if not any(_GLOB_CHARS & set(p) for p in patterns):
            return None
        return cls(patterns)

    def serves(self, namespace: str | None) -> bool:
        return namespace is not None and any(_matches(namespace, p) for p in self.patterns)


def _matches(namespace: str, pattern: str) -> bool:
    globs = [g.strip() for g in pattern.split(",") if g.strip()]
    if not globs:
        return False
    first_negated = globs[0].startswith("!")
    if not first_negated and not fnmatch.fnmatchcase(namespace, globs[0]):
        return False
    matched = True
    for glob in globs:
        negated = glob.startswith("!")
        if fnmatch.fnmatchcase(namespace, glob.removeprefix("!")):
            matched = not negated
    return matched
