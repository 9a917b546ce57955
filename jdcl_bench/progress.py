"""Progress reporting: rich bars on a terminal, plain timestamped lines otherwise (CI, logs)."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager


class Reporter:
    def __init__(self, rich_output: bool | None = None, quiet: bool = False):
        self.rich = sys.stdout.isatty() if rich_output is None else rich_output
        self.quiet = quiet
        self._t0 = time.time()
        if self.rich:
            from rich.console import Console

            self.console = Console()

    def info(self, msg: str) -> None:
        if self.quiet:
            return
        if self.rich:
            self.console.log(msg)
        else:
            print(f"[{time.time() - self._t0:8.1f}s] {msg}", flush=True)

    @contextmanager
    def task(self, description: str, total: int):
        """Yields ``advance(n=1, **fields)``; fields (e.g. loss=0.3) are shown next to the bar."""
        if self.quiet:
            yield lambda n=1, **kw: None
            return
        if self.rich:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    TextColumn("{task.fields[status]}")]
            with Progress(*cols, console=self.console, transient=False) as prog:
                tid = prog.add_task(description, total=total, status="")

                def advance(n=1, **fields):
                    status = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
                    prog.update(tid, advance=n, **({"status": status} if fields else {}))

                yield advance
            return
        # plain mode: a line at start, about every 10 % and at the end
        state = {"done": 0, "next": max(1, total // 10)}
        self.info(f"{description}: 0/{total}")

        def advance(n=1, **fields):
            state["done"] += n
            if state["done"] >= state["next"] or state["done"] >= total:
                extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
                self.info(f"{description}: {state['done']}/{total} {extra}".rstrip())
                state["next"] = state["done"] + max(1, total // 10)

        yield advance
