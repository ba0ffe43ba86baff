"""A real one-node SLURM for the tests: Debian's slurmctld, slurmd and munge, started by hand in a folder of
their own (there is no systemd), on free ports, and stopped by the pids they wrote: only what was started here.

Each cluster is whole by itself: its own munged, with its own key and socket in a short folder of its own under
/tmp (slurm.conf's AuthInfo=socket=...), never the machine's /run/munge. So two clusters at once (two pytest-xdist
workers, whatever their grouping does) cannot stop each other's authentication, and a cluster cancels its own jobs,
and waits for them to end, before it stops its daemons.

.ci/run installs the packages (apt-get install slurmctld slurmd slurm-client munge); without them, or without
root, the `slurm` tests are skipped with the reason."""

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd", "munged", "sbatch", "scontrol", "scancel", "sinfo", "squeue")


def why_not() -> str | None:
    """Why no cluster can be started here, or None."""
    missing = [name for name in DAEMONS if shutil.which(name) is None and not Path(f"/usr/sbin/{name}").exists()]
    if missing:
        return f"no SLURM here ({', '.join(missing)} missing): apt-get install slurmctld slurmd slurm-client munge"
    if os.geteuid() != 0:
        return "slurmd runs jobs as their users, so it needs root"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError, IndexError):
        return None


class OneNodeSlurm:
    """munged + slurmctld + slurmd with the settings that work without cgroups, and a requeued job that starts
    again in about 12 s instead of about 127 s (cred_expire, sched_interval)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.conf = folder / "slurm.conf"
        self.started: list[Path] = []  # the pid files of the daemons started here, stopped in reverse order
        # munged wants its socket's folder, and every folder above it, open to all (pytest's tmp folders are
        # 0700), and a socket path shorter than 108 bytes: a short folder of its own under /tmp, removed by stop().
        self.munge = Path(tempfile.mkdtemp(prefix="mlptrain-munge-"))
        self.munge.chmod(0o711)
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self) -> None:
        for sub in ("state", "spool"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        node = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=mlptrain-tests",
                    f"SlurmctldHost={socket.gethostname().split('.')[0]}(127.0.0.1)",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    "SlurmUser=root",
                    "AuthType=auth/munge",
                    f"StateSaveLocation={self.folder / 'state'}",
                    f"SlurmdSpoolDir={self.folder / 'spool'}",
                    f"SlurmctldPidFile={self.folder / 'slurmctld.pid'}",
                    f"SlurmdPidFile={self.folder / 'slurmd.pid'}",
                    f"SlurmctldLogFile={self.folder / 'slurmctld.log'}",
                    f"SlurmdLogFile={self.folder / 'slurmd.log'}",
                    "ProctrackType=proctrack/linuxproc",  # no cgroups here
                    "TaskPlugin=task/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "JobRequeue=1",
                    f"AuthInfo=socket={self.munge_socket},cred_expire=10",  # this cluster's munged, for auth and creds
                    "SchedulerParameters=bf_interval=5,sched_interval=2",
                    "ReturnToService=2",
                    "MpiDefault=none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    f"{node} NodeAddr=127.0.0.1 State=UNKNOWN",
                    "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        self._start_munged()
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([daemon, "-f", str(self.conf)], check=True, env=self.env)
            self.started.append(self.folder / f"{daemon}.pid")
        deadline = time.monotonic() + 60
        while self.sinfo() != "idle":
            if time.monotonic() > deadline:
                raise RuntimeError(f"the node did not become idle: {self.log_tail()}")
            time.sleep(0.5)

    @property
    def munge_socket(self) -> Path:
        return self.munge / "socket"

    def _start_munged(self) -> None:
        """A munged of this cluster's own: a fresh key, and socket, pid, log and seed files in its folder."""
        folder = self.munge
        key = folder / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        pid_file = folder / "munged.pid"
        subprocess.run(
            [
                "munged", f"--socket={self.munge_socket}", f"--key-file={key}", f"--pid-file={pid_file}",
                f"--log-file={folder / 'munged.log'}", f"--seed-file={folder / 'munged.seed'}",
            ],
            check=True,
        )  # fmt: skip
        self.started.append(pid_file)

    def sinfo(self) -> str:
        done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=self.env)
        return done.stdout.strip()

    def log_tail(self) -> str:
        return "\n".join(
            (self.folder / name).read_text()[-2000:]
            for name in ("slurmctld.log", "slurmd.log")
            if (self.folder / name).exists()
        )

    def stop(self) -> None:
        """Cancels this cluster's jobs and waits (up to a minute) for their steps to end, then stops the daemons
        started here, last started first: a job left running would outlive its cluster."""
        controller = self.folder / "slurmctld.pid"
        if controller in self.started and _alive(controller) is not None and (jobs := self.queue()):
            subprocess.run(["scancel", *jobs], capture_output=True, env=self.env)
            deadline = time.monotonic() + 60
            while self.queue() and time.monotonic() < deadline:
                time.sleep(0.5)
        for pid_file in reversed(self.started):
            pid = _alive(pid_file)
            if pid is not None:
                os.kill(pid, 15)
                for _ in range(100):
                    if _alive(pid_file) != pid:
                        break
                    time.sleep(0.1)
        shutil.rmtree(self.munge, ignore_errors=True)

    def queue(self) -> list[str]:
        """The ids of the jobs slurmctld still holds pending, running or ending (none once it cannot answer)."""
        done = subprocess.run(
            ["squeue", "-h", "-o", "%i", "--states=PD,R,CG,S,RQ,RS,RF,SO,ST"],
            capture_output=True, text=True, env=self.env,
        )  # fmt: skip
        return done.stdout.split() if done.returncode == 0 else []

    def run(self, *command: str, cwd: Path | None = None) -> str:
        done = subprocess.run(command, capture_output=True, text=True, env=self.env, cwd=cwd)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)}: {done.stderr}")
        return done.stdout

    def sbatch(self, *arguments: str, cwd: Path) -> str:
        """Submits a job; its id."""
        return self.run("sbatch", "--parsable", *arguments, cwd=cwd).strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """scontrol's record of a job: JobState, Restarts, ExitCode, ..."""
        line = self.run("scontrol", "show", "job", "-o", job_id)
        return dict(re.findall(r"(\w+)=(\S*)", line))

    def wait_for(self, job_id: str, states: set[str], timeout: float = 300) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while (record := self.job(job_id))["JobState"] not in states:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is {record['JobState']} after {timeout} s: {self.log_tail()}")
            time.sleep(0.5)
        return record
