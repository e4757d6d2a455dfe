"""A real one-node SLURM cluster on this machine, for the tests marked `slurm`.

`start(root)` writes a minimal slurm.conf under `root` (one node with this machine's CPUs and
memory, select/cons_tres, proctrack/pgid, task/none, no cgroups, no slurmdbd: completed jobs are
kept in slurmctld for 30 minutes and written to a jobcomp/filetxt log that `sacct -c` reads), starts
munged (own key and socket), slurmctld and slurmd in the foreground as child processes, and waits
for `sinfo` to show the node idle. `Cluster.stop()` ends exactly the daemons it started, by pid.
Where the daemons cannot run (no SLURM installed, not root, a sandbox that refuses them) `start`
raises `Unavailable` with the reason, which the fixture turns into one skip line.

Debian's packages: `apt-get install slurm-wlm munge` (22.05); .ci/run installs them.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

PARTITION = "kbtest"
NODE = socket.gethostname().split(".")[0]  # the node is this machine: its name resolves (DDP meets there)
FEATURE = "kbfeature"  # a node feature, so that --constraint has something to match
GRES = "kbslot"  # a count-only generic resource, so that --gres has something to match
DAEMONS = ("munged", "slurmctld", "slurmd")


class Unavailable(RuntimeError):
    """The cluster cannot start here; the message says why."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_hardware() -> dict:
    """CPUs and memory as slurmd itself detects them (`slurmd -C`), memory rounded down a little."""
    text = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30).stdout
    found = dict(re.findall(r"(\w+)=(\S+)", text.splitlines()[0] if text else ""))
    cpus = int(found.get("CPUs", os.cpu_count() or 1))
    mem = int(found.get("RealMemory", 1024))
    return {"cpus": cpus, "mem_mb": max(256, int(mem * 0.9))}


@dataclass
class Cluster:
    root: Path
    conf: Path
    cpus: int
    mem_mb: int
    procs: dict = field(default_factory=dict)  # daemon name -> Popen
    partition: str = PARTITION
    node: str = NODE

    @property
    def env(self) -> dict:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def cmd(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        proc = subprocess.run(list(args), capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and proc.returncode:
            raise RuntimeError(f"{' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout

    def node_state(self) -> str:
        return self.cmd("sinfo", "-h", "-n", self.node, "-o", "%T", check=False).strip()

    def log(self, name: str) -> str:
        path = self.root / "log" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def jobs(self) -> list[str]:
        """Ids of the jobs (array tasks expanded) slurmctld knows that are not finished."""
        out = self.cmd("squeue", "-h", "-r", "-o", "%i", check=False)
        return [line.strip() for line in out.splitlines() if line.strip()]

    def cancel_all(self) -> None:
        self.cmd("scancel", "--partition", self.partition, check=False)

    def stop(self) -> None:
        """End the daemons this cluster started (by pid: slurmd, slurmctld, then munged)."""
        for name in reversed(DAEMONS):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _write_conf(root: Path, hw: dict) -> Path:
    host = socket.gethostname().split(".")[0]
    state, spool, log = root / "state", root / "spool", root / "log"
    for d in (state, spool, log):
        d.mkdir(parents=True, exist_ok=True)
    conf = root / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=kebench-test",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={root / 'munge' / 'munge.sock'},cred_expire=10",  # requeued jobs start after this
        f"StateSaveLocation={state}",
        f"SlurmdSpoolDir={spool}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={log / 'slurmctld.log'}",
        f"SlurmdLogFile={log / 'slurmd.log'}",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        "MailProg=/bin/true",
        "ProctrackType=proctrack/pgid",  # no cgroups: they do not work in every sandbox
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "DefMemPerCPU=512",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",  # no slurmdbd: `sacct -c` reads the jobcomp log
        "JobCompType=jobcomp/filetxt",
        f"JobCompLoc={log / 'jobcomp.txt'}",
        "MpiDefault=none",
        "ReturnToService=2",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=sched_interval=2",
        "MinJobAge=1800",
        "KillWait=10",
        "InactiveLimit=0",
        f"GresTypes={GRES}",
        f"NodeName={NODE} NodeAddr=127.0.0.1 CPUs={hw['cpus']} RealMemory={hw['mem_mb']} "
        f"Features={FEATURE} Gres={GRES}:4 State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=60 State=UP",
        "",
    ]))
    (root / "gres.conf").write_text(f"NodeName={NODE} Name={GRES} Count=4\n")
    return conf


def _spawn(root: Path, name: str, args: list[str], env: dict) -> subprocess.Popen:
    out = open(root / "log" / f"{name}.out", "w")
    return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def start(root: Path, timeout_s: float = 90) -> Cluster:
    """Start munged, slurmctld and slurmd under `root`; return the cluster once its node is idle."""
    missing = [d for d in ("munged", "slurmctld", "slurmd", "sbatch", "sinfo") if shutil.which(d) is None]
    if missing:
        raise Unavailable(f"SLURM is not installed ({', '.join(missing)} not found; apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        raise Unavailable("the test cluster runs its daemons as root (SlurmUser=root); run the tests as root")
    root.mkdir(parents=True, exist_ok=True)
    hw = _node_hardware()
    conf = _write_conf(root, hw)
    cluster = Cluster(root, conf, hw["cpus"], hw["mem_mb"])
    munge = root / "munge"
    munge.mkdir(mode=0o700, exist_ok=True)
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    env = cluster.env
    try:
        cluster.procs["munged"] = _spawn(root, "munged", [
            "munged", "--foreground", "--force", f"--key-file={key}", f"--socket={munge / 'munge.sock'}",
            f"--pid-file={munge / 'munged.pid'}", f"--seed-file={munge / 'munged.seed'}",
            f"--log-file={root / 'log' / 'munged.log'}"], env)
        _wait_for(lambda: (munge / "munge.sock").exists(), 20, cluster, "munged to create its socket")
        cluster.procs["slurmctld"] = _spawn(root, "slurmctld", ["slurmctld", "-D", "-i", "-f", str(conf)], env)
        _wait_for(lambda: subprocess.run(["sinfo", "-h"], env=env, capture_output=True, timeout=30).returncode == 0,
                  timeout_s, cluster, "slurmctld to answer sinfo")
        cluster.procs["slurmd"] = _spawn(root, "slurmd", ["slurmd", "-D", "-N", NODE, "-f", str(conf)], env)
        _wait_for(lambda: cluster.node_state() == "idle", timeout_s, cluster, f"node {NODE} to be idle")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait_for(ready, timeout_s: float, cluster: Cluster, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        dead = [n for n, p in cluster.procs.items() if p.poll() is not None]
        if dead:
            out = (cluster.root / "log" / f"{dead[0]}.out").read_text(errors="replace")[-1500:]
            raise Unavailable(f"{dead[0]} exited (code {cluster.procs[dead[0]].returncode}) while waiting for "
                              f"{what}: {out.strip()}")
        try:
            if ready():
                return
        except (subprocess.TimeoutExpired, OSError):
            pass
        time.sleep(0.5)
    logs = " | ".join(cluster.log(n)[-600:].strip() for n in ("slurmctld", "slurmd"))
    raise Unavailable(f"timed out after {timeout_s:.0f} s waiting for {what}; logs: {logs}")
