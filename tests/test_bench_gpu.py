"""bench/gpu.py runs end to end on the CPU (``--device cpu``, tiny sizes): every section, the JSON's keys.

The CUDA paths need a lent GPU; this proves the script, its sections and the ratios run, so a GPU session
spends its minutes measuring, not debugging.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SECTIONS = {"environment", "forward_lite0", "train_step_lite0", "forward_vgg16", "train_step_vgg16", "catalog",
            "decode", "decode_cpu_loader", "embed_nvjpeg", "embed_cpu_decode", "train", "kmeans", "search_torch",
            "search_faiss"}


@pytest.mark.e2e
def test_gpu_bench_runs_on_cpu(tmp_path: Path):
    out = tmp_path / "gpu-cpu.json"
    done = subprocess.run([sys.executable, "bench/gpu.py", "--device", "cpu", "--workers", "1", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, "TQDM_DISABLE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["device"] == "cpu" and set(r["sections"]) == SECTIONS
    failed = {k: v["error"] for k, v in r["sections"].items() if "error" in v or "skipped" in v}
    assert not failed, failed
    assert set(r["limits_h100"]) == {"vgg16_forward_img_s", "vgg16_netvlad_train_img_s", "lite0_forward_img_s",
                                     "lite0_netvlad_train_img_s", "nvjpeg_decode_resize_img_s",
                                     "exact_knn_1m_512_fp16_qps"}
    for key in ("forward_lite0", "train_step_lite0", "decode_nvjpeg", "embed_nvjpeg_steady", "trainer_step",
                "search_exact_knn"):
        assert r["ratios"][key] is not None and r["ratios"][key] > 0, key
    train = r["sections"]["train"]
    assert train["step_img_per_s"] > 0 and train["epoch_img_per_s"] > 0 and "kmeans_step_s" in train
    assert r["sections"]["embed_cpu_decode"]["photos"] == r["sections"]["catalog"]["photos"] > 0


def test_failing_section_is_recorded_and_the_run_goes_on():
    sys.path.insert(0, str(REPO))
    from bench.gpu import Run

    run = Run(budget_s=60, only=set())
    run.section("broken", lambda: 1 / 0)
    ok = run.section("fine", lambda: {"x": 1.0})
    assert "ZeroDivisionError" in run.sections["broken"]["error"] and ok["x"] == 1.0
    late = Run(budget_s=-1, only=set())
    assert late.section("late", lambda: {"x": 1.0}) is None and "skipped" in late.sections["late"]
