"""The end of the Slurm allocation, so training can checkpoint before the time limit on its own.

Slurm kills a job at its time limit (SIGTERM, then SIGKILL after KillWait); a signal ahead of
time (--signal=USR1@300) is optional and easily lost. Rank 0 asks Slurm for the job's end
time once; the loop stops with a checkpoint when less than the margin is left.
"""

from __future__ import annotations

import logging
import os
import subprocess
from datetime import datetime

log = logging.getLogger(__name__)


def parse_end_time(text: str) -> float | None:
    """Epoch seconds of a Slurm time stamp ('2026-11-26T12:30:00', local time); None for Unknown/None."""
    text = text.strip()
    if not text or text in ("Unknown", "None", "N/A") or text.startswith("INVALID"):
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def job_end_time(environ=None) -> float | None:
    """Epoch seconds when this Slurm job's time limit is reached, or None outside Slurm or without one."""
    env = os.environ if environ is None else environ
    if env.get("SLURM_JOB_END_TIME", "").isdigit():  # Slurm 23.02+ exports it
        return float(env["SLURM_JOB_END_TIME"])
    job = env.get("SLURM_JOB_ID")
    if not job:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%e"], capture_output=True, text=True,
                             timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as err:
        log.warning("cannot ask Slurm for the end of job %s (%s): relying on signals only", job, err)
        return None
    return parse_end_time(out.splitlines()[0] if out.strip() else "")
