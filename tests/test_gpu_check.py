"""benchmarks/gpu_check.sh without a GPU and without running its stages (seconds): the plan
(--dry-run) adds up to at most 540 s and is in the order the issue asks for, the test_cuda.py
functions its stage selections name exist, and the runner's bookkeeping: statuses, time-outs
that cut a stage, NOT RUN, an interrupted run, --only, --pack and the summary. Stage bodies are
replaced by shell commands (GPU_CHECK_FAKE_<stage>) and budgets shortened
(GPU_CHECK_BUDGET_<stage>). The real no-GPU run of every stage is CI's (.ci/run)."""

import os
import re
import signal
import subprocess
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.sh")
STAGES = ["preflight", "build", "graphs", "compile", "craft", "ops", "memcheck", "racecheck", "bench_ops", "bench_craft", "bench_compat"]

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/timeout") and not os.path.exists("/bin/timeout"),
                                reason="needs coreutils timeout")


def _env(out, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_")}
    env.update(OUT=str(out), PYTHON="/bin/true")  # no interpreter: the fakes stand in for the stages
    env["GPU_CHECK_SLACK"] = "1"  # the card's time-outs (without a GPU the script triples them)
    for name in STAGES:
        env[f"GPU_CHECK_FAKE_{name}"] = "exit 0"
        env[f"GPU_CHECK_BUDGET_{name}"] = "10"
    env.update(extra)
    return env


def _run(args, env, timeout=60):
    return subprocess.run(["bash", SCRIPT, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _rows(out):
    rows = {}
    for line in open(os.path.join(out, "stages.tsv")):
        name, status, secs, budget, note = line.rstrip("\n").split("\t")
        rows[name] = (status, int(secs), int(budget), note)
    return rows


def test_syntax():
    subprocess.run(["bash", "-n", SCRIPT], check=True)


def test_dry_run_plan_fits_540_s():
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_")}
    r = _run(["--dry-run"], env)
    assert r.returncode == 0, r.stderr
    table = re.findall(r"^\s+(\d+)\s+(\w+)\s+(\d+)s\s+\S", r.stdout, re.M)
    assert [name for _, name, _ in table] == STAGES
    total = sum(int(b) for _, _, b in table)
    assert total <= 540
    assert f"total: {total} s" in r.stdout
    # every stage of the run has a budget of its own (the build and the benchmarks most)
    assert all(int(b) >= 20 for _, _, b in table)


def test_stage_selections_name_existing_tests():
    script = open(SCRIPT).read()
    tests = open(os.path.join(ROOT, "tests", "test_cuda.py")).read()
    names = set()
    for var in ("GRAPHS_TESTS", "COMPILE_TESTS", "CRAFT_TESTS", "K_MEMCHECK", "K_RACECHECK"):
        m = re.search(rf'^{var}="([^"]+)"', script, re.M)
        assert m, var
        names |= set(re.findall(r"\btest_\w+", m.group(1)))
    assert len(names) >= 10
    missing = [n for n in sorted(names) if not re.search(rf"^def {n}\(", tests, re.M)]
    assert not missing, f"benchmarks/gpu_check.sh selects test_cuda.py functions that do not exist: {missing}"


def test_summary_of_a_run(tmp_path):
    tsv = ["preflight\tPASS\t4\t20\tversions as expected", "build\tFAIL\t80\t120\tpip install -e . failed",
           "graphs\tTIMEOUT\t50\t50\tcut after 50 s", "memcheck\tNOT RUN\t3\t45\tcompute-sanitizer refused the device"]
    (tmp_path / "stages.tsv").write_text("\n".join(tsv) + "\n")
    r = _run(["--summary"], {**os.environ, "OUT": str(tmp_path)})
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert any(re.match(r"\s+build\s+FAIL\s+80/120\s+pip install", ln) for ln in lines), r.stdout
    assert any(re.match(r"\s+graphs\s+TIMEOUT", ln) for ln in lines)
    assert any(re.match(r"\s+memcheck\s+NOT RUN\s+3/45\s+compute-sanitizer refused", ln) for ln in lines)
    assert any(re.match(r"\s+bench_craft\s+NOT RUN\s+0/60\s+not reached", ln) for ln in lines)
    assert "1 passed, 2 failed, 8 not run" in r.stdout and "FAILED: build graphs" in r.stdout
    assert len(lines) <= 24  # one screen

    (tmp_path / "stages.tsv").write_text("\n".join(tsv[:1] + [tsv[3]]) + "\n")
    r = _run(["--summary"], {**os.environ, "OUT": str(tmp_path)})
    assert r.returncode == 0 and "gpu_check: OK" in r.stdout


@pytest.mark.parametrize("slack", [None, "1"])
def test_no_gpu_rehearsal_triples_the_time_outs(tmp_path, slack):
    """Without a GPU the stages get 3× the card's time-outs (CI's 2 busy cores are no card: a
    preflight that imports torch took 22 s of its 30 there); GPU_CHECK_SLACK=1 gives the plan's."""
    budgets = {f"GPU_CHECK_BUDGET_{n}": "2" for n in STAGES}
    env = _env(tmp_path, GPU_CHECK_FAKE_graphs="sleep 8", **budgets)
    if slack is None:
        del env["GPU_CHECK_SLACK"]
    r = _run([], env)
    rows = _rows(tmp_path)
    if slack is None:  # graphs may run until (2 + 2 + 2) × 3 = 18 s into the run
        assert r.returncode == 0, r.stdout + r.stderr
        assert rows["graphs"][0] == "PASS" and "time-outs × 3 without a GPU" in r.stdout
    else:  # until 6 s: cut
        assert rows["graphs"][0] == "TIMEOUT" and "time-outs ×" not in r.stdout


def test_runner_statuses_timeout_only_and_pack(tmp_path):
    env = _env(tmp_path,
               GPU_CHECK_FAKE_build='echo "pip failed" > "$OUT/$STAGE.note"; exit 1',
               GPU_CHECK_FAKE_graphs="sleep 30",
               GPU_CHECK_BUDGET_preflight="5", GPU_CHECK_BUDGET_build="5", GPU_CHECK_BUDGET_graphs="1",
               GPU_CHECK_FAKE_memcheck='echo "compute-sanitizer refused the device: Device not supported" > "$OUT/$STAGE.note"; exit 3',
               GPU_CHECK_FAKE_racecheck="")  # its real body: NOT RUN, as memcheck found the device refused
    t = time.monotonic()
    r = _run([], env)
    elapsed = time.monotonic() - t
    assert r.returncode == 1, r.stdout + r.stderr
    rows = _rows(tmp_path)
    assert list(rows) == STAGES
    assert rows["preflight"][0] == "PASS"
    assert rows["build"][0] == "FAIL" and rows["build"][3] == "pip failed"
    # graphs may run until the plan's deadline: its own 1 s plus what preflight and build left
    assert rows["graphs"][0] == "TIMEOUT" and 1 <= rows["graphs"][1] <= 12
    assert rows["memcheck"][0] == "NOT RUN" and "refused the device" in rows["memcheck"][3]
    assert rows["racecheck"][0] == "NOT RUN" and "refused the device" in rows["racecheck"][3]
    assert all(rows[n][0] == "PASS" for n in ("compile", "craft", "ops", "bench_ops", "bench_craft", "bench_compat"))
    assert elapsed < 25
    summary = (tmp_path / "summary.txt").read_text()
    assert "FAILED: build graphs" in summary and summary in r.stdout
    assert (tmp_path / "gpu_check.tar.gz").exists() and (tmp_path / "gpu_check.log").exists()

    out2 = tmp_path / "only"
    r = _run(["--only", "preflight,ops", "--pack"], _env(out2))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 passed, 0 failed, 9 not run" in r.stdout
    assert sorted(os.listdir(out2)) == ["gpu_check.log", "gpu_check.tar.gz", "summary.txt"]
    listing = subprocess.run(["tar", "tzf", str(out2 / "gpu_check.tar.gz")], capture_output=True, text=True).stdout
    assert "stages.tsv" in listing and "ops.log" in listing


def test_interrupted_run_prints_the_summary(tmp_path):
    env = _env(tmp_path, GPU_CHECK_FAKE_build="sleep 60")
    p = subprocess.Popen(["bash", SCRIPT], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(100):  # until the build stage has started
            if (tmp_path / "build.log").exists():
                break
            time.sleep(0.1)
        time.sleep(0.5)
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 1
    rows = _rows(tmp_path)
    assert rows["build"][0] == "CUT"
    assert re.search(r"graphs\s+NOT RUN\s+0/10\s+not reached", out), out
    assert "gpu_check: FAILED: build" in out
