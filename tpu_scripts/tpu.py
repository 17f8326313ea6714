"""Cloud TPU VMs for lmjax: create, set up every worker, launch on all workers, logs, stop, delete, and a
launch loop that recreates a preempted VM and resumes from the last checkpoint. Every command is a
`gcloud` call printed before it runs; --dry-run prints them and runs nothing. tpu_scripts/README.md is the
guide.

  python tpu_scripts/tpu.py create --zone=us-west4-a --accelerator=v5litepod-8 --spot
  python tpu_scripts/tpu.py setup  --zone=us-west4-a          # push HEAD first: the workers clone it
  python tpu_scripts/tpu.py launch --zone=us-west4-a --workdir=gs://my-bucket/runs/gpt2 -- \
      --config=experiments/configs/gpt.py:124m
  python tpu_scripts/tpu.py logs   --zone=us-west4-a
  python tpu_scripts/tpu.py ssh    --zone=us-west4-a -- gcloud storage cp -r gs://my-bucket/tfds ~/   # all
                                   workers
  python tpu_scripts/tpu.py stop   --zone=us-west4-a     # SIGTERM: checkpoint, then exit
  python tpu_scripts/tpu.py delete --zone=us-west4-a
  python tpu_scripts/tpu.py run    --zone=us-west4-a --accelerator=v5litepod-8 --spot \
      --workdir=gs://my-bucket/runs/gpt2 -- --config=experiments/configs/gpt.py:124m

Checkpoints outlive a preempted VM only in a bucket: give a gs:// --workdir (lmjax writes it directly with
the VM's service account). `run` resumes because lmjax.main resumes from the workdir: it retries when the
training exits with 75 (preempted, checkpoint saved) or the VM went away, and stops on any other failure.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO_DIR = "~/lmjax"
LOG = "~/lmjax.log"
SETUP_SCRIPT = Path(__file__).with_name("setup_worker.sh")
# lmjax.errors.EXIT_PREEMPTED (this script runs where lmjax is not installed): a checkpoint was saved on
# SIGTERM and the same command resumes
EXIT_PREEMPTED = 75
DEFAULT_RUNTIME = {
    "v4": "tpu-ubuntu2204-base",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}


def setup_command(repo: str, ref: str) -> str:
    """setup_worker.sh, sent whole (the worker has no checkout yet): clone/update, Python >= 3.12, install."""
    script = shlex.quote(SETUP_SCRIPT.read_text())
    return f"bash -c {script} setup_worker.sh {shlex.quote(repo)} {shlex.quote(ref)}"


def train_command(workdir: str, main_args: list[str], background: bool) -> str:
    # Multi-host slices start jax.distributed (JAX finds the workers); one host starts nothing.
    workdir = "$HOME/" + workdir[2:] if workdir.startswith("~/") else shlex.quote(workdir)
    cmd = (
        f"cd {REPO_DIR} && .venv/bin/python -m lmjax.main --workdir={workdir} "
        + " ".join(shlex.quote(a) for a in main_args)
        + " --config.distributed.enable=yes"
    )
    if background:
        return f"{cmd.replace(' && ', ' && nohup ', 1)} > {LOG} 2>&1 < /dev/null &"
    return f"{cmd} 2>&1 | tee {LOG}; exit ${{PIPESTATUS[0]}}"


class Gcloud:
    def __init__(self, args: argparse.Namespace):
        self.name, self.zone, self.dry_run, self.queued = args.name, args.zone, args.dry_run, args.queued
        self.project = args.project
        self.described = 0  # dry run: the VM is taken as missing at first, READY once created

    def __call__(self, *words: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess:
        cmd = ["gcloud", *words]
        print("+ " + shlex.join(cmd), flush=True)
        if self.dry_run:
            return subprocess.CompletedProcess(cmd, 0, stdout="")
        result = subprocess.run(cmd, text=True, capture_output=capture)
        if check and result.returncode:
            sys.exit(f"error: gcloud exited with {result.returncode}: {shlex.join(cmd)}")
        return result

    def where(self) -> list[str]:
        return [f"--zone={self.zone}"] + ([f"--project={self.project}"] if self.project else [])

    def ssh(self, command: str, worker: str = "all", check: bool = True) -> int:
        return self(
            "compute",
            "tpus",
            "tpu-vm",
            "ssh",
            self.name,
            *self.where(),
            f"--worker={worker}",
            f"--command={command}",
            check=check,
        ).returncode

    def create(self, accelerator: str, runtime: str, spot: bool) -> None:
        runtime = runtime or DEFAULT_RUNTIME.get(accelerator.split("-")[0], "")
        if not runtime:
            sys.exit(f"error: no default runtime for --accelerator={accelerator}; pass --runtime")
        if self.queued:
            self(
                "compute",
                "tpus",
                "queued-resources",
                "create",
                self.name,
                f"--node-id={self.name}",
                *self.where(),
                f"--accelerator-type={accelerator}",
                f"--runtime-version={runtime}",
                *(["--spot"] if spot else []),
            )
        else:
            self(
                "compute",
                "tpus",
                "tpu-vm",
                "create",
                self.name,
                *self.where(),
                f"--accelerator-type={accelerator}",
                f"--version={runtime}",
                *(["--spot"] if spot else []),
            )

    def state(self) -> str:
        """READY, CREATING, PREEMPTED, ... or NOT_FOUND."""
        result = self(
            "compute",
            "tpus",
            "tpu-vm",
            "describe",
            self.name,
            *self.where(),
            "--format=value(state)",
            check=False,
            capture=True,
        )
        if self.dry_run:
            self.described += 1
            return "NOT_FOUND" if self.described == 1 else "READY"
        return result.stdout.strip() if result.returncode == 0 else "NOT_FOUND"

    def delete(self) -> None:
        if self.queued:
            self(
                "compute",
                "tpus",
                "queued-resources",
                "delete",
                self.name,
                *self.where(),
                "--force",
                "--quiet",
            )
        else:
            self("compute", "tpus", "tpu-vm", "delete", self.name, *self.where(), "--quiet")


def wait_ready(g: Gcloud, poll: float, timeout: float) -> None:
    deadline = time.time() + timeout
    while (state := g.state()) != "READY":
        if time.time() > deadline:
            sys.exit(f"error: TPU VM {g.name} is {state}, not READY, after {timeout:.0f} s")
        time.sleep(poll)


def git_default(*words: str) -> str:
    result = subprocess.run(["git", *words], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else ""


def check_pushed(ref: str) -> None:
    """The workers clone the origin: the commit must be there (a local-only HEAD fails on every worker)."""
    if not git_default("branch", "--remotes", "--contains", ref):
        sys.exit(
            f"error: commit {ref[:12]} is not on any branch of origin; `git push` it first "
            "(the workers clone origin), or pass --ref"
        )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    main_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("create", "setup", "launch", "logs", "ssh", "stop", "delete", "run"))
    p.add_argument("--name", default="lmjax", help="the TPU VM (or queued resource) name")
    p.add_argument(
        "--zone", required=True, help="e.g. us-west4-a (v5e), us-central2-b (v4), us-east5-a (v5p)"
    )
    p.add_argument("--project", default="", help="Google Cloud project (default: gcloud config's project)")
    p.add_argument(
        "--accelerator", default="v5litepod-8", help="e.g. v5litepod-8, v4-16, v5p-128 (create, run)"
    )
    p.add_argument("--runtime", default="", help="TPU software version (default by generation)")
    p.add_argument("--spot", action="store_true", help="spot capacity (preemptible)")
    p.add_argument("--queued", action="store_true", help="through queued resources (waits for capacity)")
    p.add_argument(
        "--repo", default="", help="git URL to clone on the workers (default: this checkout's origin)"
    )
    p.add_argument("--ref", default="", help="commit or branch to check out (default: this checkout's HEAD)")
    p.add_argument("--workdir", default="", help="gs://BUCKET/... run directory (launch, run)")
    p.add_argument(
        "--wait", action="store_true", help="launch: in the foreground; exit with the training's status"
    )
    p.add_argument(
        "--worker", default="", help="logs: which worker's log (default 0); ssh: where (default all)"
    )
    p.add_argument(
        "--max-restarts", type=int, default=20, help="run: recreate a preempted VM at most this often"
    )
    p.add_argument("--poll-seconds", type=float, default=30.0)
    p.add_argument("--dry-run", action="store_true", help="print the gcloud commands without running them")
    args = p.parse_args(argv)
    if args.action in ("launch", "run") and not (args.workdir and main_args):
        p.error(f"{args.action} needs --workdir and the lmjax.main arguments after --, e.g. -- --config=...")
    if args.action in ("launch", "run") and not args.workdir.startswith("gs://"):
        print(
            f"warning: --workdir={args.workdir} is on the VM's own disk: it is lost with the VM (preemption, "
            "delete); use gs://BUCKET/...",
            file=sys.stderr,
        )
    g = Gcloud(args)
    repo, ref = (
        args.repo or git_default("remote", "get-url", "origin"),
        args.ref or git_default("rev-parse", "HEAD"),
    )
    if args.action in ("setup", "run"):
        if not (repo and ref):
            p.error(
                f"{args.action} needs --repo and --ref (this checkout has no origin remote or commit to "
                "default to)"
            )
        if not args.ref:
            check_pushed(ref)

    if args.action == "create":
        g.create(args.accelerator, args.runtime, args.spot)
    elif args.action == "setup":
        return g.ssh(setup_command(repo, ref))
    elif args.action == "launch":
        return g.ssh(train_command(args.workdir, main_args, background=not args.wait), check=not args.wait)
    elif args.action == "logs":
        g.ssh(f"tail -n 200 -F {LOG}", worker=args.worker or "0")
    elif args.action == "ssh":  # a shell command on every worker (or --worker=N), e.g. copying a dataset
        if not main_args:
            p.error("ssh needs the command after --, e.g. -- gcloud storage cp -r gs://B/tfds ~/tfds")
        return g.ssh(
            " ".join(main_args), worker=args.worker or "all", check=False
        )  # as typed: ~ expands there
    elif args.action == "stop":
        g.ssh("pkill -TERM -f lmjax.main || true")
    elif args.action == "delete":
        g.delete()
    else:
        return run_loop(g, args, repo, ref, main_args)
    return 0


def run_loop(g: Gcloud, args: argparse.Namespace, repo: str, ref: str, main_args: list[str]) -> int:
    """Ensure a READY VM (recreating a preempted one), set it up, train in the foreground; repeat until the
    training command succeeds on a VM that is still READY (each attempt resumes from the last checkpoint)."""
    for attempt in range(args.max_restarts + 1):
        state = g.state()
        if state in ("PREEMPTED", "TERMINATED", "FAILED"):
            g.delete()
            state = "NOT_FOUND"
        if state == "NOT_FOUND":
            g.create(args.accelerator, args.runtime, args.spot)
        wait_ready(g, args.poll_seconds, timeout=3600)
        g.ssh(setup_command(repo, ref))
        code = g.ssh(train_command(args.workdir, main_args, background=False), check=False)
        state = g.state()
        if code == 0 and state == "READY":
            print(f"run: finished (attempt {attempt + 1})", flush=True)
            return 0
        if (
            code != EXIT_PREEMPTED and state == "READY"
        ):  # bad input or a bug: retrying would fail the same way
            print(
                f"run: the training failed with exit {code} on a running VM; not retrying (see {LOG})",
                file=sys.stderr,
            )
            return code
        print(
            f"run: attempt {attempt + 1} ended with exit {code}, VM {state}; resuming from the last "
            "checkpoint",
            flush=True,
        )
        if args.dry_run:
            return 0
        time.sleep(args.poll_seconds)
    print(f"run: gave up after {args.max_restarts} restarts", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
