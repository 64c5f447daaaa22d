"""Progress that shows off a terminal too: a line every 10 % (or minute) in logs and pipes."""

from __future__ import annotations

import time

from shopee.progress import Progress


def test_off_a_terminal_a_line_every_tenth() -> None:
    lines: list[str] = []
    progress = Progress(range(50), "epoch 1", unit="batches", log=lines.append, terminal=False, min_seconds=0)
    for i in progress:
        progress.set_postfix(f"loss {i}")
    # 10 %, 20 %, ... 90 %: the end itself is reported by whoever ran the loop
    assert len(lines) == 9
    assert lines[0].startswith("epoch 1: 10% (5/50 batches,") and lines[0].endswith("loss 4")
    assert lines[-1].startswith("epoch 1: 90% (45/50 batches,")
    assert "ETA" in lines[0]


def test_on_a_terminal_the_lines_go_to_the_file_log_only() -> None:
    printed: list[str] = []
    filed: list[str] = []
    items = list(
        Progress(
            range(20),
            "validation",
            log=printed.append,
            log_with_bar=filed.append,
            terminal=True,
            min_seconds=0,
        )
    )
    assert items == list(range(20))
    assert printed == [] and len(filed) == 9


def test_without_a_total_a_line_per_interval() -> None:
    lines: list[str] = []
    counter = Progress(
        None,
        "optimize-ensemble",
        unit="rules scored",
        log=lines.append,
        seconds=0.01,
        min_seconds=0,
        terminal=False,
    )
    for _ in range(3):
        time.sleep(0.02)
        counter.update()
    counter.close()
    assert len(lines) == 3 and lines[-1].startswith("optimize-ensemble: 3 rules scored (")


def test_few_steps_report_each_boundary_once() -> None:
    lines: list[str] = []
    list(
        Progress(range(3), "epoch 2", log=lines.append, terminal=False, min_seconds=0)
    )  # a debug epoch: 3 batches
    assert [line.split(" (")[0] for line in lines] == ["epoch 2: 33%", "epoch 2: 67%"]


def test_a_quick_loop_stays_quiet() -> None:
    lines: list[str] = []
    list(Progress(range(100), "validation", log=lines.append, terminal=False, min_seconds=60))
    assert lines == []
