"""The core demonstration runs the real protocol and every step holds."""

from __future__ import annotations

from bureau_agent.core_demo import run_core_demo


def test_every_demo_step_passes() -> None:
    steps = run_core_demo()
    assert [s.title for s in steps if not s.ok] == []
    assert len(steps) == 6
    tagging = steps[2]
    assert tagging.lines[-1] == "all equal: yes"
    cheat = steps[4].lines
    assert cheat[0].startswith("a proof in every answer: rejected: custodian 3")
    assert cheat[1].startswith("the per-batch check: rejected: custodian 3")
