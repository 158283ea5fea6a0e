"""The terminal view of `churnops demo`: a live table of the simulated days and the loop's events.

On a terminal it redraws in place (the newest days, the events so far, the step running now);
elsewhere (a pipe, CI) it prints one line per day and one per event.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from churnops.pipelines.demo import MILESTONES, DemoDay

ROWS = 14


def _f1s(values: dict[str, float]) -> str:
    return " ".join(f"{name} {value:.2f}" for name, value in sorted(values.items())) or "-"


def _drift(day: DemoDay) -> str:
    if day.drift is None:
        return "-"
    share = f" {day.drifted_share:.0%}" if day.drifted_share is not None else ""
    return ("DRIFT" if day.drift else "ok") + share


def _traffic(day: DemoDay) -> str:
    t = day.traffic
    if not t.requests:
        return "-"
    split = "/".join(f"{t.by_variant.get(v, 0):,}" for v in ("champion", "challenger") if v in t.by_variant)
    return f"{t.predictions:,} ({split}), {t.refused} refused"


class DemoView:
    """Shows each day as it finishes and the step running now."""

    def __init__(self, console: Console, total: int) -> None:
        self.console = console
        self.total = total
        self.days: list[DemoDay] = []
        self.events: list[str] = []
        self.now = ""
        self.live: Live | None = None

    def __enter__(self) -> DemoView:
        if self.console.is_terminal:
            self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.update(self._render(final=True))
            self.live.__exit__(*exc)

    def step(self, day: str, name: str) -> None:
        """A step of `day` started."""
        self.now = f"{day}: {name}"
        if self.live is not None:
            self.live.update(self._render())

    def day_done(self, day: DemoDay) -> None:
        """A day finished."""
        self.days.append(day)
        self.events.extend(f"{day.day}  {event}" for event in day.events)
        if self.live is not None:
            self.live.update(self._render())
            return
        self.console.print(Text(self._line(day)))
        for event in day.events:
            self.console.print(Text(f"{day.day}  >> {event}"))

    def _line(self, day: DemoDay) -> str:
        ab = f" A/B v{day.challenger} {day.ab_status}" if day.challenger else ""
        return (
            f"{day.day}  champion v{day.champion or '-'}{ab}  traffic {_traffic(day)}  "
            f"drift({day.monitored or '-'}) {_drift(day)}  realized F1 {_f1s(day.realized)}  "
            f"estimated F1 {_f1s(day.estimated)}  alerts {day.alerts}  ({day.seconds:.0f}s)"
        )

    def _render(self, final: bool = False) -> Group:
        table = Table(title=f"churnops demo: day {len(self.days)} of {self.total}", title_justify="left", expand=False)
        for name, right in (
            ("day", False),
            ("champion", False),
            ("A/B", False),
            ("predictions (champion/challenger)", True),
            ("drift of the day before", False),
            ("realized F1", False),
            ("estimated F1 (CBPE)", False),
            ("alerts", True),
        ):
            table.add_column(name, justify="right" if right else "left")
        for day in self.days[-ROWS:]:
            ab = f"v{day.challenger} {day.ab_status}" if day.challenger else "-"
            drift = _drift(day)
            table.add_row(
                day.day,
                f"v{day.champion}" if day.champion else "-",
                ab,
                _traffic(day),
                Text(drift, style="bold red" if drift.startswith("DRIFT") else ""),
                _f1s(day.realized),
                _f1s(day.estimated),
                str(day.alerts) if day.alerts else "",
            )
        events = Text("\n".join(self.events[-12:]) or "(none yet)")
        parts: list[Any] = [table, Text("events", style="bold"), events]
        if not final and self.now:
            parts.append(Text(f"running {self.now}", style="dim"))
        return Group(*parts)


def milestone_lines(reached: dict[str, str]) -> list[tuple[bool, str]]:
    """Each milestone of the loop, whether it was reached and when."""
    return [
        (name in reached, f"{text}: {reached[name]}" if name in reached else f"{text}: not reached")
        for name, text in MILESTONES.items()
    ]
