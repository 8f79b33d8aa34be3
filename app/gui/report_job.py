"""Sample reports of the window's runs, written by ``mimlsort report`` in child processes.

The report draws its figures with matplotlib, seconds of work that would freeze the window on its
own thread and hold the GIL for the pipeline's in a worker. A child process keeps the window
responsive and outlives it: a window closed while a report is written leaves the child to finish
(in a session of its own, so a Ctrl-C in the window's terminal does not cut it off either), and
the report's pages are written whole or not at all (:func:`app.report.write_report`). The child
only reads the event file, so a report that fails leaves it as it was. Qt-free: the window polls.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

_PREFIX = "mimlsort report: "


@dataclass(frozen=True, slots=True)
class ReportOutcome:
    events: Path
    markdown: Path  # where the report is (or was to be) written
    error: str  # why it was not written; "" when it was


@dataclass(frozen=True, slots=True)
class _Job:
    events: Path
    markdown: Path
    process: subprocess.Popen
    stderr: IO[bytes]


def _package_root() -> str:
    import app

    return str(Path(app.__file__).resolve().parents[1])


class ReportJobs:
    """Starts reports (:meth:`start`), hands back those that ended (:meth:`poll`)."""

    def __init__(self):
        self._jobs: list[_Job] = []

    @property
    def pending(self) -> int:
        return len(self._jobs)

    @property
    def processes(self) -> list[subprocess.Popen]:
        return [j.process for j in self._jobs]

    def start(self, events: str | Path) -> Path:
        """Write the report of ``events`` beside it; returns where its report.md goes."""
        from app.report import report_dir

        events = Path(events).absolute()
        markdown = report_dir(events) / "report.md"
        env = dict(os.environ)
        # the window may run from a source checkout that is not installed
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH", "")) if p)
        # a file, not a pipe: a child that outlives the window would die writing to a closed pipe
        err = tempfile.TemporaryFile()
        try:
            proc = subprocess.Popen([sys.executable, "-m", "app.cli", "report", str(events)], env=env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                    start_new_session=True)
        except BaseException:
            err.close()
            raise
        self._jobs.append(_Job(events, markdown, proc, err))
        log.info("writing the sample report of %s → %s (process %d)", events, markdown, proc.pid)
        return markdown

    def poll(self) -> list[ReportOutcome]:
        done, still = [], []
        for job in self._jobs:
            rc = job.process.poll()
            if rc is None:
                still.append(job)
                continue
            done.append(ReportOutcome(job.events, job.markdown, "" if rc == 0 else self._why(job, rc)))
            job.stderr.close()
        self._jobs = still
        return done

    @staticmethod
    def _why(job: _Job, rc: int) -> str:
        job.stderr.seek(0)
        lines = [ln.strip() for ln in job.stderr.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        if rc < 0:
            return f"the report process was ended by signal {-rc}"
        why = lines[-1] if lines else f"the report process exited with code {rc}"
        return why[len(_PREFIX):] if why.startswith(_PREFIX) else why

    def leave(self) -> list[Path]:
        """The window closes: reports still being written finish on their own. Returns their events."""
        left = [j.events for j in self._jobs]
        for job in self._jobs:
            log.info("the sample report of %s is still being written (process %d); it finishes on its own → %s",
                     job.events, job.process.pid, job.markdown)
            job.stderr.close()
        self._jobs = []
        return left
