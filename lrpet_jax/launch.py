r"""Several training processes on one machine, as a cluster runs them.

    python -m lrpet_jax.launch --processes=2 --devices_per_process=2 -- \
        --config=configs/smoke.py --workdir=/tmp/lrpet_2x2

Starts ``--processes`` copies of ``python -m lrpet_jax.main <flags>`` with
``--config.distributed=True``, a coordinator on a free loopback port, and
each process's count and id; each sees ``--devices_per_process`` CPU devices
(``--xla_force_host_platform_device_count``). This is for trying
multi-process training here; on a cluster, start ``lrpet_jax.main`` with
``--config.distributed=True`` through its launcher (docs/multi-process.md).

SIGINT and SIGTERM are forwarded to every process (each saves and stops).
When one process fails or is killed, the others are stopped at once (a
collective cannot finish without it) and the launcher exits with the failed
process's status after one line naming it; it exits 0 only if every process
did. Rerunning the same command resumes from the last checkpoint.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import time


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def commands(processes: int, main_flags: list[str], port: int):
  return [[sys.executable, "-m", "lrpet_jax.main", *main_flags,
           "--config.distributed=True",
           f"--config.coordinator_address=127.0.0.1:{port}",
           f"--config.num_processes={processes}", f"--config.process_id={i}"]
          for i in range(processes)]


def status_of(returncode: int) -> int:
  """A shell's exit status for a child's return code (−N: killed by N)."""
  return 128 - returncode if returncode < 0 else returncode


def describe(i: int, processes: int, returncode: int) -> str:
  how = (f"was killed by signal {-returncode}" if returncode < 0
         else f"exited with status {returncode}")
  return f"process {i} of {processes} {how}"


def supervise(children, poll_s: float = 0.2) -> int:
  """Waits for all; stops the rest when one fails; returns the exit status."""
  forwarded = []

  def forward(signum, frame):
    del frame
    forwarded.append(signum)
    for child in children:
      if child.poll() is None:
        child.send_signal(signum)

  for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, forward)
  while True:
    codes = [child.poll() for child in children]
    failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
    if failed and not forwarded:
      i, code = failed[0]
      for child in children:
        if child.poll() is None:
          child.kill()
      for child in children:
        child.wait()
      hint = ("" if status_of(code) in (1, 2, 3) else
              " (rerun the same command to resume from the last checkpoint)")
      print(f"error: {describe(i, len(children), code)}; stopped the"
            f" others{hint}", file=sys.stderr, flush=True)
      return status_of(code)
    if all(c is not None for c in codes):
      return max(status_of(c) for c in codes)
    time.sleep(poll_s)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      usage="python -m lrpet_jax.launch [--processes=N]"
      " [--devices_per_process=D] -- <python -m lrpet_jax.main's flags>")
  parser.add_argument("--processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=1)
  parser.add_argument("main_flags", nargs=argparse.REMAINDER)
  args = parser.parse_args(argv)
  flags = [f for f in args.main_flags if f != "--"]
  if args.processes < 1 or args.devices_per_process < 1:
    parser.error("--processes and --devices_per_process must be >= 1")
  if not flags:
    parser.error("give python -m lrpet_jax.main's flags after --")
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=(
      os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_"
      f"count={args.devices_per_process}").strip())
  children = [subprocess.Popen(cmd, env=env) for cmd in commands(
      args.processes, flags, free_port())]
  return supervise(children)


if __name__ == "__main__":
  sys.exit(main())
