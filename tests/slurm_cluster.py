"""A real one-node SLURM cluster on loopback for the tests: Debian's munged, slurmctld and slurmd.

No systemd: the daemons run in the foreground as our child processes and are stopped by PID. Everything they
write (munge key and socket, slurm.conf, state, spool, logs) lives in one temporary folder, so the cluster
touches nothing of the machine's own configuration. Where the daemons cannot run (no binaries, not root) the
tests skip saying why; under CI (`CI` set) that is a failure instead, since CI installs them
(.ci/install-system-packages.sh).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REQUIRED_PROGRAMS = ("mungekey", "munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel", "sinfo")
FINISHED_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


class SlurmCluster:
    """Client side of the running cluster: submit jobs, read their state, signal and requeue them."""

    def __init__(self, root: Path, node_name: str, cpus: int):
        self.root, self.node_name, self.cpus = root, node_name, cpus
        self.config_path = root / "slurm.conf"

    def environment(self, **extra: str) -> dict[str, str]:
        """The caller's environment pointed at this cluster; jobs inherit it (sbatch's default --export=ALL)."""
        return {**os.environ, "SLURM_CONF": str(self.config_path), **extra}

    def command(self, *args: str, check: bool = True, cwd: Path | None = None,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run(list(args), capture_output=True, text=True, cwd=cwd,
                                env=env or self.environment(), timeout=60)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def submit(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> int:
        """`sbatch --parsable ARGS` from `cwd`; the job id."""
        result = self.command("sbatch", "--parsable", *args, cwd=cwd, env=env)
        return int(result.stdout.strip().split(";")[0])

    def job_fields(self, job_id: int) -> dict[str, str]:
        """`scontrol show job` as key -> value (JobState, Restarts, ExitCode, StdOut, ...)."""
        text = self.command("scontrol", "--oneliner", "show", "job", str(job_id)).stdout
        return dict(item.split("=", 1) for item in text.split() if "=" in item)

    def wait_for_state(self, job_id: int, states: set[str], timeout_s: float) -> dict[str, str]:
        """Poll until the job is in one of `states`; fail with the job's record if it ends elsewhere or time runs out."""
        deadline = time.monotonic() + timeout_s
        while True:
            fields = self.job_fields(job_id)
            if fields["JobState"] in states:
                return fields
            if fields["JobState"] in FINISHED_STATES or time.monotonic() > deadline:
                # The cluster's folder goes with the test: keep what slurmctld said about the job in the message.
                log = self.root / "log" / "slurmctld.log"
                mentions = [line for line in (log.read_text(errors="replace").splitlines() if log.is_file() else [])
                            if f"JobId={job_id} " in line or f"JobId={job_id}." in line]
                raise AssertionError(
                    f"job {job_id} is {fields['JobState']} (reason {fields.get('Reason')}, exit {fields.get('ExitCode')})"
                    f", expected one of {sorted(states)} within {timeout_s:.0f}s; output in {fields.get('StdOut')}; "
                    f"slurmctld on the job:\n" + "\n".join(mentions[-20:])
                )
            time.sleep(1)

    def cancel_all(self, timeout_s: float = 60) -> None:
        job_ids = self.command("squeue", "--noheader", "--format=%i").stdout.split()
        if job_ids:
            self.command("scancel", *job_ids, check=False)
        deadline = time.monotonic() + timeout_s
        while self.command("squeue", "--noheader", "--format=%i").stdout.strip() and time.monotonic() < deadline:
            time.sleep(1)


def _missing_requirement() -> str | None:
    missing = [program for program in REQUIRED_PROGRAMS if shutil.which(program) is None]
    if missing:
        return (f"SLURM/munge programs not found: {', '.join(missing)} "
                f"(install with .ci/install-system-packages.sh: slurmctld slurmd slurm-client munge)")
    if os.geteuid() != 0:
        return "a local SLURM cluster needs root (slurmd runs jobs as their submitting user)"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _node_topology(node_name: str) -> str:
    """slurmd -C's NodeName line (CPUs, sockets, cores, memory) for this machine, on loopback."""
    first_line = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    hardware = [item for item in first_line.split() if not item.startswith("NodeName=")]
    return " ".join([f"NodeName={node_name}", "NodeAddr=127.0.0.1", *hardware])


def _write_config(root: Path, node_name: str, topology: str) -> None:
    (root / "slurm.conf").write_text(f"""\
ClusterName=curvenet-test
SlurmctldHost={node_name}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits cred_expire seconds before it may start again (slurmctld's job_mgr.c: the old attempt's
# credential and exit status must be cleared first); the default 120 s would idle the requeue test.
AuthInfo=socket={root}/munge/munge.socket,cred_expire=20
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# A request that no partition can ever satisfy fails at submit instead of pending forever.
EnforcePartLimits=ALL
ReturnToService=2
{topology} State=UNKNOWN
PartitionName=debug Nodes={node_name} Default=YES MaxTime=INFINITE State=UP
""")


def _wait_until(condition, timeout_s: float, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {log}\n{log.read_text()[-2000:]}" for log in logs if log.exists())
            raise RuntimeError(f"the test SLURM cluster did not come up: {what} within {timeout_s:.0f}s\n{tails}")
        time.sleep(0.5)


class _Daemons:
    """The started daemon processes, stopped newest first by PID."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen] = []

    def start(self, args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
        with open(log, "ab") as output:
            process = subprocess.Popen(args, stdout=output, stderr=subprocess.STDOUT, env=env,
                                       stdin=subprocess.DEVNULL)
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def start_cluster(root: Path, daemons: _Daemons) -> SlurmCluster:
    node_name = socket.gethostname().split(".")[0]
    for folder in ("munge", "state", "spool", "log"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    # munged refuses a socket folder others cannot traverse, and a key others can read.
    root.chmod(0o755)
    (root / "munge").chmod(0o755)
    key = root / "munge" / "munge.key"
    subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, capture_output=True)
    key.chmod(0o600)
    topology = _node_topology(node_name)
    _write_config(root, node_name, topology)
    cpus = int(next(item for item in topology.split() if item.startswith("CPUs=")).split("=")[1])
    cluster = SlurmCluster(root, node_name, cpus)
    env = cluster.environment()
    logs = [root / "log" / name for name in ("munged.log", "slurmctld.log", "slurmd.log", "daemons.log")]

    daemons.start(["munged", "--foreground", f"--key-file={key}", f"--socket={root}/munge/munge.socket",
                   f"--pid-file={root}/munge/munged.pid", f"--log-file={logs[0]}",
                   f"--seed-file={root}/munge/munged.seed"], logs[3], env)
    _wait_until(lambda: (root / "munge" / "munge.socket").exists(), 15, "munged's socket", logs)
    daemons.start(["slurmctld", "-D", "-f", str(cluster.config_path)], logs[3], env)
    daemons.start(["slurmd", "-D", "-f", str(cluster.config_path), "-N", node_name], logs[3], env)

    def node_idle() -> bool:
        state = cluster.command("sinfo", "--noheader", "--format=%T", "--nodes", node_name, check=False)
        return state.stdout.strip() == "idle"

    _wait_until(node_idle, 30, f"node {node_name} idle in sinfo", logs)
    return cluster


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running one-node cluster for the whole session; every job is cancelled and the daemons stopped after."""
    reason = _missing_requirement()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the SLURM tests: {reason}")
        pytest.skip(reason)
    # Not pytest's tmp_path: its parent is private to the user, and munged wants a socket path all can traverse.
    root = Path(tempfile.mkdtemp(prefix="curvenet-slurm-"))
    daemons = _Daemons()
    try:
        cluster = start_cluster(root, daemons)
        yield cluster
        cluster.cancel_all()
    finally:
        daemons.stop()
        shutil.rmtree(root, ignore_errors=True)
