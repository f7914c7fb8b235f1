"""What bench/run.py and bench/scale.py both measure with: a command's time
and peak RSS, the disk floor of a merge, and sizes of files on disk."""
import os
import subprocess
import time

MIB = 1 << 20


def timed_rss(argv):
    """(seconds, peak RSS bytes, exit status, how it ended) of a command under
    /usr/bin/time -v; a failure is returned, not raised."""
    t0 = time.perf_counter()
    out = subprocess.run(["/usr/bin/time", "-v", *argv], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    rss, ended = 0, "ok"
    for line in out.stderr.splitlines():
        if "Maximum resident set size" in line:
            rss = int(line.split()[-1]) * 1024
        elif "Command terminated by signal" in line:
            ended = f"killed by signal {line.split()[-1]}"
    if out.returncode != 0 and ended == "ok":
        tail = [ln for ln in out.stderr.splitlines() if ln.strip() and not ln.startswith("\t")][-1:]
        ended = f"exit {out.returncode}" + (f": {tail[0].strip()[:200]}" if tail else "")
    return seconds, rss, out.returncode, ended


def floor_run(inputs, out, out_bytes):
    """A merge's floor, in seconds: every input file read once with `cat`,
    then the output's bytes written once into the new directory `out` with
    `dd conv=fsync`."""
    t0 = time.perf_counter()
    for path in inputs:
        subprocess.run(["cat", path], check=True, stdout=subprocess.DEVNULL)
    os.makedirs(out)
    mib = -(-out_bytes // MIB)
    subprocess.run(["dd", "if=/dev/zero", f"of={out}/o", "bs=1M", f"count={mib}", "conv=fsync"], check=True,
                   capture_output=True)
    return time.perf_counter() - t0


def files_of(dirs):
    """Every file directly in `dirs`, in order."""
    return [os.path.join(d, f) for d in dirs for f in sorted(os.listdir(d))]


def dir_bytes(d):
    return sum(map(os.path.getsize, files_of([d])))


def total_memory():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                return int(line.split()[1]) * 1024
    return 0
