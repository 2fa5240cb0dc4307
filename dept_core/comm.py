"""The communication ledger: every byte that crosses the source/server boundary.

A record is (round, source, direction, component, bytes) with bytes = numel × element size of
what is actually sent. Components: body, tok, pos, head. Directions: down (server → source),
up (source → server).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

DIRECTIONS = ("down", "up")


@dataclass
class CommLedger:
    records: list[tuple[int, str, str, str, int]] = field(default_factory=list)

    def add(self, rnd: int, source: str, direction: str, component: str, nbytes: int) -> None:
        assert direction in DIRECTIONS, direction
        self.records.append((rnd, source, direction, component, int(nbytes)))

    def round_detail(self, rnd: int) -> dict:
        out: dict = {"round": rnd, "down": 0, "up": 0, "sources": defaultdict(dict),
                     "components": defaultdict(lambda: {"down": 0, "up": 0})}
        for r, src, direction, comp, n in self.records:
            if r != rnd:
                continue
            out[direction] += n
            out["components"][comp][direction] += n
            out["sources"][src][f"{direction}_{comp}"] = n
        out["sources"], out["components"] = dict(out["sources"]), dict(out["components"])
        return out

    def totals(self, upto: int | None = None) -> dict:
        """Bytes over every round (or over rounds <= `upto`), per direction and component."""
        comps: dict = defaultdict(lambda: {"down": 0, "up": 0})
        for r, _, direction, comp, n in self.records:
            if upto is not None and r > upto:
                continue
            comps[comp][direction] += n
        return {
            "bytes_down_total": sum(c["down"] for c in comps.values()),
            "bytes_up_total": sum(c["up"] for c in comps.values()),
            "components": dict(comps),
        }

    def rounds(self) -> list[int]:
        return sorted({r for r, *_ in self.records})

    def state_dict(self) -> list[list]:
        return [list(r) for r in self.records]

    def load_state_dict(self, records: list[list]) -> None:
        self.records = [tuple(r) for r in records]  # type: ignore[misc]

