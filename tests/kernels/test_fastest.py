"""spanbert_ds/kernels/fastest.py and the `auto` choices built on it: the faster candidate wins, once per
shape class, without disturbing the training RNG; on the CPU `auto` never times anything."""

import time

import pytest
import torch

from spanbert_ds import kernels
from spanbert_ds.errors import UserError
from spanbert_ds.kernels import dispatch, fastest, reference
from spanbert_ds.model import attention


@pytest.fixture(autouse=True)
def fresh_choices(monkeypatch):
    monkeypatch.setattr(fastest, "_CHOICES", {})


def _sleeper(ms, calls, name):
    def run():
        calls.append(name)
        time.sleep(ms / 1e3)
    return run


def test_the_faster_candidate_wins_and_is_timed_once_per_key():
    calls = []
    made = []

    def make():
        made.append(1)
        return {"slow": _sleeper(6, calls, "slow"), "quick": _sleeper(1, calls, "quick")}

    assert fastest.fastest("k", make, "cpu", reps=3) == "quick"
    assert calls.count("slow") == calls.count("quick") == 1 + 3  # one untimed run, then the timed ones
    assert fastest.fastest("k", make, "cpu") == "quick"
    assert len(made) == 1  # the second call did not build or run anything
    name, medians = fastest.choices()["k"]
    assert name == "quick" and medians["slow"] > medians["quick"]


def test_a_failing_candidate_is_dropped_and_all_failing_raises_the_last_error():
    def broken():
        raise RuntimeError("does not compile")

    runs = []

    def breaks_on_second_run():  # fails in a timed run, after a good untimed one
        runs.append(1)
        if len(runs) > 1:
            raise RuntimeError("out of memory")

    candidates = {"broken": broken, "flaky": breaks_on_second_run, "fine": lambda: None}
    assert fastest.fastest("k1", lambda: candidates, "cpu") == "fine"
    assert set(fastest.choices()["k1"][1]) == {"fine"}

    def unsupported():
        raise UserError("head dim 256 is not supported")

    with pytest.raises(RuntimeError, match="does not compile"):
        fastest.fastest("k2", lambda: {"ours": unsupported, "pytorch": broken}, "cpu")


def test_trials_leave_the_random_streams_where_they_were():
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    fastest.fastest("k", lambda: {"draws": lambda: torch.rand(1000), "also": lambda: torch.randint(9, (10,))}, "cpu")
    torch.testing.assert_close(torch.rand(4), expected, atol=0, rtol=0)


class _CountBackward(torch.autograd.Function):
    backwards = 0

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        _CountBackward.backwards += 1
        return grad * 2


def test_a_trial_runs_the_backward_whatever_the_grad_mode():
    # activation checkpointing runs a layer without grad, then again with: both must choose alike
    x = torch.randn(3)
    _CountBackward.backwards = 0
    with torch.no_grad():
        run = fastest.trial(_CountBackward.apply, (x, ))
        run()
    assert _CountBackward.backwards == 1 and x.grad is None and not x.requires_grad  # the caller's x is untouched


def test_auto_attention_chooses_once_for_a_forward_without_grad_and_its_recompute(monkeypatch):
    monkeypatch.setattr(dispatch, "auto_may_fuse", lambda t: True)
    picked = []

    def pick(key, make_candidates, device):
        picked.append(key)
        return "sdpa"

    monkeypatch.setattr(fastest, "fastest", pick)
    q, k, v = (torch.randn(2, 2, 8, 16, requires_grad=True) for _ in range(3))
    with torch.no_grad():
        attention.auto_attention(q, k, v, None, 0.1)
    attention.auto_attention(q, k, v, None, 0.1)
    assert picked[0] == picked[1]


def test_size_classes_are_powers_of_two():
    assert [fastest.size_class(n) for n in (1, 2, 3, 64, 65, 512, 513)] == [1, 2, 4, 64, 128, 512, 1024]


def test_auto_on_the_cpu_times_nothing(monkeypatch):
    def no_timing(*_, **__):
        raise AssertionError("auto timed candidates on the CPU")

    monkeypatch.setattr(fastest, "fastest", no_timing)
    q, k, v = (torch.randn(2, 2, 8, 16) for _ in range(3))
    torch.testing.assert_close(attention.auto_attention(q, k, v, None), attention.sdpa_attention(q, k, v, None))
    x = torch.randn(4, 16)
    params = torch.zeros(16), torch.ones(16), torch.zeros(16)
    torch.testing.assert_close(kernels.bias_gelu_layernorm(x, *params), reference.bias_gelu_layernorm(x, *params))


@pytest.mark.parametrize("winner", ["fused", "sdpa"])
def test_auto_attention_runs_what_the_timing_chose(monkeypatch, winner):
    pytest.importorskip("triton")
    if not kernels.interpreting():
        pytest.skip("needs Triton's interpreter to run the fused kernel on the CPU")
    monkeypatch.setattr(dispatch, "auto_may_fuse", lambda t: True)  # as on a GPU whose self-check passed
    clock = iter(range(1000))
    # a clock that makes the winner's every run 1 unit long and the other's 5
    monkeypatch.setattr(fastest, "_clock", lambda device: (lambda: next(clock), lambda begin: next(clock) - begin))
    def slowed(name):
        real = attention.ATTENTION_BACKENDS[name]["bert"]

        def fn(*args):
            if name != winner:
                for _ in range(4):
                    next(clock)
            return real.padded(*args)
        return real._replace(padded=fn)

    for name in attention.AUTO_CANDIDATES:
        monkeypatch.setitem(attention.ATTENTION_BACKENDS[name], "bert", slowed(name))
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 20, 16, generator=g).requires_grad_() for _ in range(3))
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[1, 13:] = False
    out = attention.auto_attention(q, k, v, mask)
    (key, (chosen, medians)), = fastest.choices().items()
    assert chosen == winner and set(medians) == {"fused", "sdpa"}
    assert key[0] == "attention"
    torch.testing.assert_close(out, reference.attention(q, k, v, mask), atol=1e-5, rtol=1e-5)
    grad_fn = type(out.grad_fn).__name__
    assert (grad_fn == "FlashAttentionBackward") == (winner == "fused"), grad_fn


@pytest.mark.parametrize("winner", ["triton", "reference"])
def test_auto_gelu_layernorm_runs_what_the_timing_chose(monkeypatch, winner):
    pytest.importorskip("triton")
    if not kernels.interpreting():
        pytest.skip("needs Triton's interpreter to run the fused kernel on the CPU")
    monkeypatch.delenv("SPANBERT_DS_KERNELS", raising=False)
    monkeypatch.setattr(dispatch, "auto_may_fuse", lambda t: True)
    asked = []

    def pick(key, make_candidates, device):
        candidates = make_candidates()
        for run in candidates.values():
            run()  # every trial runs with the real kernels
        asked.append((key, set(candidates)))
        return winner

    monkeypatch.setattr(fastest, "fastest", pick)
    x = torch.randn(2, 5, 24, requires_grad=True)
    params = [torch.randn(24, requires_grad=True) for _ in range(3)]
    y = kernels.bias_gelu_layernorm(x, *params, 1e-5)
    (key, names), = asked
    assert names == {"triton", "reference"} and key[:4] == ("bias_gelu_layernorm", "cpu", torch.float32, 24)
    assert ("BiasGeluLayerNorm" in type(y.grad_fn).__name__) == (winner == "triton")
    torch.testing.assert_close(y, reference.bias_gelu_layernorm(x, *params, 1e-5), atol=1e-5, rtol=1e-5)


def test_nothing_is_timed_while_torch_compile_traces(monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)

    def never():
        raise AssertionError("a candidate ran")

    assert fastest.fastest("k", lambda: {"ours": never, "pytorch": never}, "cpu") == "pytorch"
    assert "k" not in fastest.choices()  # decided again once timing is possible
