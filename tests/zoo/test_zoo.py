"""The zoo (issue 12's acceptance): for 17 architectures built from configs with random init,
the roles inferred from how each parameter is used equal a table written by hand
(tests/zoo/tables), and muP + Adam keeps every layer's activation size width-free over 4x width
while SP with one global LR does not."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from zoo_models import Arch, zoo

from hptransfer.param.apply import parameterize
from hptransfer.param.roles import roles_from_factory
from hptransfer.param.rules import make_rule

TABLES = Path(__file__).parent / "tables"
ARCHS = zoo()
NAMES = sorted(p.stem for p in TABLES.glob("*.txt"))


def read_table(name: str) -> dict[str, tuple[str, int, int]]:
    rows = {}
    for line in (TABLES / f"{name}.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            pname, role, fan_in, fan_out = line.split()
            rows[pname] = (role, int(fan_in), int(fan_out))
    return rows


def arch(name: str) -> Arch:
    if name not in ARCHS:
        pytest.skip(f"{name} needs transformers")
    return ARCHS[name]


def test_the_zoo_has_16_architectures_or_more() -> None:
    assert len(NAMES) >= 16 and set(NAMES) == set(zoo())


@pytest.mark.parametrize("name", NAMES)
def test_roles_from_use_equal_the_hand_written_table(name: str) -> None:
    a = arch(name)
    roles = roles_from_factory(a.make, 64, 32, tied=a.tied, example=a.example())
    got = {e.name: (e.role, e.fan_in, e.fan_out) for e in roles}
    want = read_table(name)
    assert got == want, {
        n: (got.get(n), want.get(n)) for n in got.keys() | want.keys() if got.get(n) != want.get(n)
    }
