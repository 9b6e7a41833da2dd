"""ISO zone boundaries are exact for every table, and a boundary value is the upper zone."""

from __future__ import annotations

import pytest

from agent.analysis.severity import ZoneTable, velocity_band_hz, zone_table
from agent.config import ExplicitLimits, Iso10816_1, Iso10816_3

CASES_3 = [
    (1, "rigid", 2.3, 4.5, 7.1),
    (1, "flexible", 3.5, 7.1, 11.0),
    (2, "rigid", 1.4, 2.8, 4.5),
    (2, "flexible", 2.3, 4.5, 7.1),
]


@pytest.mark.parametrize(("group", "foundation", "ab", "bc", "cd"), CASES_3)
def test_iso10816_3_boundaries(
    group: int, foundation: str, ab: float, bc: float, cd: float
) -> None:
    table = zone_table(
        Iso10816_3(standard="iso10816-3", group=group, foundation=foundation, rpm=1480)
    )
    assert (table.ab, table.bc, table.cd) == (ab, bc, cd)
    assert table.standard == f"ISO 10816-3 group {group} {foundation}"
    below = 1e-9
    assert table.zone(ab - below) == "A"
    assert table.zone(ab) == "B"
    assert table.zone(bc - below) == "B"
    assert table.zone(bc) == "C"
    assert table.zone(cd - below) == "C"
    assert table.zone(cd) == "D"
    assert table.zone(0.0) == "A"
    assert table.zone(100.0) == "D"


@pytest.mark.parametrize(
    ("cls", "limits"),
    [
        ("I", (0.71, 1.8, 4.5)),
        ("II", (1.12, 2.8, 7.1)),
        ("III", (1.8, 4.5, 11.2)),
        ("IV", (2.8, 7.1, 18.0)),
    ],
)
def test_iso10816_1_classes(cls: str, limits: tuple[float, float, float]) -> None:
    table = zone_table(
        Iso10816_1.model_validate({"standard": "iso10816-1", "class": cls, "rpm": 3000})
    )
    assert (table.ab, table.bc, table.cd) == limits
    assert [table.zone(v) for v in limits] == ["B", "C", "D"]


def test_explicit_limits() -> None:
    table = zone_table(
        ExplicitLimits.model_validate(
            {"standard": "limits", "limits": {"ab": 1, "bc": 2, "cd": 3}, "rpm": 900}
        )
    )
    assert table == ZoneTable(1, 2, 3, "explicit limits")
    assert table.zone(2.5) == "C"


def test_velocity_band_slow_machines() -> None:
    assert velocity_band_hz(600) == (2.0, 1000.0)
    assert velocity_band_hz(601) == (10.0, 1000.0)
