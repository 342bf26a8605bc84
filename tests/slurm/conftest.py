"""The real Slurm cluster the tests/slurm modules share: two nodes n1 and n2 (cluster.sh)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CLUSTER = Path(__file__).with_name("cluster.sh")


@pytest.fixture(scope="session")
def cluster():
    """Start the cluster once for the session (skip where Slurm or root is missing); stop it after."""
    missing = [b for b in ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "ip", "nsenter")
               if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if missing:
        pytest.skip(f"Slurm is not installed here ({', '.join(missing)} missing; .ci/run installs Debian's "
                    f"slurm-wlm munge slurmdbd mariadb-server)")
    if os.geteuid() != 0:
        pytest.skip("starting the Slurm daemons and the nodes' network namespaces needs root")
    proc = subprocess.run(["bash", str(CLUSTER), "start"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    yield
    subprocess.run(["scancel", "-u", "root"], capture_output=True, timeout=30)
    subprocess.run(["bash", str(CLUSTER), "stop"], capture_output=True, timeout=60)
