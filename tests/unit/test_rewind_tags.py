"""Which tags of a version the registry keeps when moves on it are undone by a rewind."""

from __future__ import annotations

from churnops.registry.mlflow_registry import AliasMove, _tags_kept

TAGS = {
    "logical_date": "2024-12-25",
    "churnops.complete": "true",
    "alias.champion.reason": "the first",
    "ab.outcome": "won",
    "integration.passed": "true",
    "integration.report": "[]",
}


def _move(alias: str, kind: str = "move", reason: str = "deploy staging", version: str = "1") -> AliasMove:
    return AliasMove("2026-01-01T00:00:00", "m", alias, version, None, "me", reason, {}, kind, "2024-12-27")


def test_alias_tags_always_go_and_verdicts_go_with_the_move_they_were_written_beside() -> None:
    kept = {"logical_date": "2024-12-25", "churnops.complete": "true"}
    verdicts = {"ab.outcome": "won", "integration.passed": "true", "integration.report": "[]"}
    assert _tags_kept("1", TAGS, []) == {**kept, **verdicts}
    # an undone A/B win takes the outcome away; the integration tests of an earlier staging stay
    won = _move("champion", reason="A/B test won (sequential): ...")
    assert _tags_kept("1", TAGS, [won]) == {**kept, "integration.passed": "true", "integration.report": "[]"}
    assert _tags_kept("1", TAGS, [_move("challenger", kind="release", reason="A/B test lost")]) == {
        **kept,
        "integration.passed": "true",
        "integration.report": "[]",
    }
    # an undone staging takes its integration tests away
    assert _tags_kept("1", TAGS, [_move("staging")]) == {**kept, "ab.outcome": "won"}
    # a champion moved by hand is no A/B decision; moves of another version change nothing here
    assert _tags_kept("1", TAGS, [_move("champion", reason="manual")]) == {**kept, **verdicts}
    others = [_move("staging", version="2"), _move("champion", reason="A/B test won", version="2")]
    assert _tags_kept("1", TAGS, others) == {**kept, **verdicts}
