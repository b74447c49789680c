"""``--runtime auto`` and the benchmark's yardstick: the fastest candidate is chosen and cached, a failing one is
skipped, bf16 is neither a candidate nor a yardstick where it would be emulated (capability mocked, not speed)."""

import json
import threading
import time

import pytest
import torch
import torch.nn.functional as F

import resnet.runtime as runtime
from resnet.bench import BenchConfig, run_bench
from resnet.cli import main
from resnet.models import build_model, model_config
from resnet.runtime import (Runtime, Workload, cpu_has_bf16_instructions, hardware, named_runtime, runtime_name,
                            select_runtime)
from resnet.runtime import autotune, cache as choices
from resnet.runtime.autotune import autotune as tune, candidates, tune_runtime

CPU = torch.device("cpu")
ZEN3_FLAGS = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma bmi2 sha_ni vaes\n"
ZEN4_FLAGS = "processor\t: 0\nflags\t\t: fpu avx2 fma avx512f avx512bw avx512_bf16\n"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNET_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / choices.CACHE_FILE


@pytest.fixture
def avx2(monkeypatch):
    """A Zen 3 / AVX2 CPU: no bf16 instructions (oneDNN may still say it can run bf16, by emulation)."""
    monkeypatch.setattr(hardware, "cpu_has_bf16_instructions", lambda cpuinfo=None: False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")


@pytest.fixture(autouse=True)
def trusted_timings(monkeypatch):
    """The fake steps sleep: their timings are trusted whatever CPU share the process gets (the busy-machine rule
    has its own test)."""
    monkeypatch.setattr(autotune, "MIN_CPU_SHARE", 0.0)


def fake_steps(ms: dict[str, float], calls: list[str] | None = None):
    """``make_step`` whose steps sleep for the given milliseconds per candidate name; "raise" fails, "nan" returns
    a non-finite loss."""
    def make_step(rt):
        name = runtime_name(rt)
        if calls is not None:
            calls.append(name)
        if ms[name] == "raise":
            raise RuntimeError("this candidate cannot run here")

        def step():
            if ms[name] == "nan":
                return torch.tensor(float("nan"))
            time.sleep(ms[name] / 1e3)
            return torch.tensor(1.0)
        return step
    return make_step


def test_cpu_flags_decide_native_bf16():
    assert not cpu_has_bf16_instructions(ZEN3_FLAGS)
    assert cpu_has_bf16_instructions(ZEN4_FLAGS)
    assert cpu_has_bf16_instructions("Features\t: fp asimd bf16 i8mm\n")  # Arm
    assert cpu_has_bf16_instructions("")  # unreadable flags: oneDNN decides


def test_no_bf16_candidate_without_native_bf16(avx2):
    assert not runtime.native_bf16(CPU)
    assert runtime.yardstick_dtype(CPU) == torch.float32
    assert [runtime_name(rt) for rt in candidates(CPU)] == ["fp32-cl", "fp32"]
    assert runtime.resolve_runtime("cpu").precision == "fp32"


def test_autotune_picks_the_fastest_and_caches_it(cache, monkeypatch):
    cands = [named_runtime(n, CPU, False) for n in ("bf16", "bf16-nchw", "fp32-cl", "fp32")]
    monkeypatch.setattr(autotune, "candidates", lambda device: cands)
    cfg = model_config("resnet20")
    calls: list[str] = []
    steps = fake_steps({"bf16": 12, "bf16-nchw": 30, "fp32-cl": 4, "fp32": 8}, calls)
    choice = tune_runtime(Workload(cfg, "train", 128, steps), CPU)
    assert choice.name == "fp32-cl" and not choice.cached
    assert "fp32-cl" in choice.reason and "fastest" in choice.reason
    assert choice.timings_ms["fp32-cl"] < choice.timings_ms["fp32"] < choice.timings_ms["bf16"]
    stored = json.loads(cache.read_text())
    (key, entry), = stored.items()
    assert entry["runtime"] == "fp32-cl" and "resnet20" in key and "batch 128" in key and "train" in key
    assert torch.__version__ in key and torch.backends.cpu.get_cpu_capability() in key
    # the next run starts at once: nothing is timed
    calls.clear()
    again = tune_runtime(Workload(cfg, "train", 128, steps), CPU)
    assert again.cached and again.name == "fp32-cl" and calls == []
    # another batch size, mode or model is another key
    other = tune_runtime(Workload(cfg, "eval", 128, fake_steps({"bf16": 1, "bf16-nchw": 5, "fp32-cl": 5, "fp32": 5})),
                         CPU)
    assert other.name == "bf16" and not other.cached and len(json.loads(cache.read_text())) == 2


def test_a_failing_or_non_finite_candidate_is_never_chosen():
    cands = [named_runtime(n, CPU, False) for n in ("bf16", "bf16-nchw", "fp32-cl", "fp32")]
    choice = tune(cands, fake_steps({"bf16": "raise", "bf16-nchw": "nan", "fp32-cl": 9, "fp32": 3}))
    assert choice.name == "fp32"
    assert choice.timings_ms["bf16"] is None and choice.timings_ms["bf16-nchw"] is None
    assert "bf16 failed" in choice.reason
    with pytest.raises(RuntimeError, match="every candidate"):
        tune(cands[:1], fake_steps({"bf16": "raise"}))


def test_a_slow_candidate_is_dropped_early_and_not_chosen():
    cands = [named_runtime(n, CPU, False) for n in ("fp32-cl", "fp32")]
    calls: list[str] = []
    choice = tune(cands, fake_steps({"fp32-cl": 2, "fp32": 40}, calls), rounds=5)
    assert choice.name == "fp32-cl" and calls == ["fp32-cl", "fp32"]


def test_one_candidate_is_not_timed(cache, monkeypatch):
    only = named_runtime("fp32", CPU, False)
    monkeypatch.setattr(autotune, "candidates", lambda device: [only])
    choice = tune_runtime(Workload(model_config("resnet20"), "train", 8, fake_steps({"fp32": "raise"})), CPU)
    assert choice.runtime == only and "only candidate" in choice.reason and not cache.exists()


def test_flags_and_names_override_tuning(monkeypatch):
    monkeypatch.setattr(autotune, "tune_runtime", lambda *a, **k: pytest.fail("tuned despite an explicit choice"))
    work = Workload(model_config("resnet20"), "train", 8, fake_steps({}))
    assert select_runtime("cpu", "fp32-cl", workload=work).runtime == Runtime(CPU, "fp32", True, False)
    rt = select_runtime("cpu", "bf16", channels_last=False, workload=work).runtime
    assert (rt.precision, rt.channels_last) == ("bf16", False)
    assert select_runtime("cpu", precision="fp32", workload=work).runtime.precision == "fp32"
    assert select_runtime("cpu").reason == "the default"  # nothing to time: not tuned
    assert named_runtime("fp32-cl+compile", CPU).compile is True


def test_unknown_runtime_is_a_one_line_usage_error(capsys):
    assert main(["bench", "train", "--runtime", "fp16", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "fp16" in err and "fp32-cl" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["fp32-cl", "bf16", "bf16-nchw"])
def test_every_candidate_computes_the_same_step(name):
    """The choice changes no result beyond bf16's tolerance: one training step of each candidate against fp32 NCHW
    (loss, gradients, updated weights)."""
    def one_step(rt):
        torch.manual_seed(0)
        net = rt.prepare(build_model("resnet20"))
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)
        if rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with rt.autocast():
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in net.parameters()])
        opt.step()
        return loss.detach().float(), grad, torch.cat([p.detach().flatten() for p in net.parameters()])

    ref = one_step(named_runtime("fp32", CPU, False))
    got = one_step(named_runtime(name, CPU, False))
    tol = dict(rtol=1e-4, atol=1e-5) if name.startswith("fp32") else dict(rtol=0.05, atol=0.02)
    torch.testing.assert_close(got[0], ref[0], **tol)
    cos = F.cosine_similarity(got[1], ref[1], dim=0)
    assert cos > (0.9999 if name.startswith("fp32") else 0.98)
    torch.testing.assert_close(got[2], ref[2], **tol)


def test_yardstick_never_times_an_emulated_dtype(avx2, cache, monkeypatch):
    import resnet.bench.speed as speed

    made: list[torch.dtype] = []
    real = speed.MatmulProbe

    def probe(dtype, *args, **kwargs):
        made.append(dtype)
        return real(dtype, *args, **kwargs)

    monkeypatch.setattr(speed, "MatmulProbe", probe)
    r = run_bench(BenchConfig(mode="eval", model="resnet20", batch_size=4, device="cpu", steps=1, warmup=1,
                              rounds=1, memory=False, matmul_size=64))
    assert made == [torch.float32]
    assert r["cpu_capability"] == "AVX2" and r["native_bf16"] is False
    assert r["yardstick"]["dtype"] == "fp32" and r["matmul"]["bf16_gflops"] is None
    assert r["runtime"]["precision"] == "fp32"  # the tuner had no bf16 candidate
    assert set(r["runtime_choice"]["timings_ms"]) == {"fp32", "fp32-cl"}
    assert r["ours"]["fraction_of_yardstick"] == r["ours"]["fraction_of_fp32_matmul"]
    assert r["ours"]["fraction_of_bf16_matmul"] is None
    out = speed.format_bench(r)
    assert "AVX2, no native bf16" in out and "% fp32 mm" in out and "% bf16 mm" not in out


def test_timings_on_a_busy_machine_are_not_trusted_nor_cached(cache, monkeypatch):
    """Steps that wait instead of computing stand for a process that gets little CPU: the fixed default is used."""
    monkeypatch.setattr(autotune, "MIN_CPU_SHARE", 0.75)
    cands = [named_runtime(n, CPU, False) for n in ("bf16", "bf16-nchw", "fp32-cl", "fp32")]
    monkeypatch.setattr(autotune, "candidates", lambda device: cands)
    choice = tune_runtime(Workload(model_config("resnet20"), "train", 128,
                                   fake_steps({"bf16": 30, "bf16-nchw": 30, "fp32-cl": 4, "fp32": 8})), CPU)
    assert choice.cpu_share < autotune.MIN_CPU_SHARE and "busy" in choice.reason
    assert runtime_name(choice.runtime) == runtime_name(runtime.resolve_runtime("cpu"))  # not the "fastest" fp32-cl
    assert not cache.exists() or json.loads(cache.read_text()) == {}


def test_each_candidate_has_one_outcome():
    """Timed, dropped (too slow to win, its timing kept) or failed (never chosen), with the reason."""
    tried = [autotune.Candidate(named_runtime(n, CPU, False)) for n in ("bf16", "fp32-cl", "fp32")]
    autotune._warm_up(tried, fake_steps({"bf16": "raise", "fp32-cl": 2, "fp32": 40}), log=lambda s: None)
    warmed = [c for c in tried if c.warm_up_s is not None]
    autotune._drop_slower(warmed, [c.warm_up_s for c in warmed], 3.0, "its warm-up step")
    assert [c.outcome for c in tried] == [autotune.Outcome.FAILED, autotune.Outcome.TIMED, autotune.Outcome.DROPPED]
    assert tried[0].why.startswith("RuntimeError: this candidate cannot run") and tried[0].timing_ms is None
    assert tried[2].why.startswith("dropped after its warm-up step") and tried[2].timing_ms > tried[1].timing_ms


def test_processes_tuning_at_once_keep_each_others_choices(cache):
    """Each update of the cache holds its lock: concurrent writers lose no entry."""
    writers = [threading.Thread(target=choices.remember, args=(f"key {i}", {"runtime": "fp32"})) for i in range(8)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    assert sorted(json.loads(cache.read_text())) == sorted(f"key {i}" for i in range(8))
