"""A simulated LoRA federation on the tiny model: four nodes (three Shakespeare roles and
one worker's own JSONL/text files), three rounds, run in this process through the
ClientApp's own functions, for each merge. What must hold: with SGD at lr 1 the exact
merge's theta is the examples-weighted average of the clients' effective weights
theta + s B_i A_i; the naive one averages the factors; the held-out perplexity falls; only
factors travel up (from the round records' bytes and the replies' tensor names); the
export reproduces the final held-out loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.app import Message

from aggregation.lora import Factors, naive_error
from client.task import NUM_EXAMPLES
from client.tasks.registry import load_task
from coordinator.payloads import payload_bytes, record_tensors
from coordinator.rounds import BYTES_DOWN, BYTES_UP
from coordinator.store import make_engine, make_session_factory, repo
from fedmerge.reports import export_run
from tests.lora.conftest import SETTINGS, Federation, federate, task_config

SCALE = SETTINGS["alpha"] / SETTINGS["rank"]
RUN = {"local-epochs": 3, "local-lr": 0.02}


@pytest.fixture(scope="module")
def exact(shakespeare_fixture, tiny_model, tmp_path_factory) -> Federation:
    return federate(tmp_path_factory.mktemp("exact"), tiny_model, **RUN)


@pytest.fixture(scope="module")
def naive(shakespeare_fixture, tiny_model, tmp_path_factory) -> Federation:
    return federate(tmp_path_factory.mktemp("naive"), tiny_model, **RUN,
                    **{"task-config": task_config(tiny_model, **{"lora-merge": "naive"})})


def tensors(msg: Message) -> dict[str, torch.Tensor]:
    return {k: t.clone() for k, t in record_tensors(msg.content["arrays"]).items()}


def rounds(fed: Federation) -> list[tuple[dict, list[tuple[float, dict]], dict]]:
    """(theta sent, [(examples, reply tensors)], theta after) per round."""
    thetas = [tensors(m) for m in fed.requests[::4]] + [fed.result.params]
    out = []
    for t in range(3):
        replies = [(float(r.content["metrics"][NUM_EXAMPLES]), tensors(r))
                   for r in fed.replies[4 * t : 4 * t + 4]]
        out.append((thetas[t], replies, thetas[t + 1]))
    return out


def records(fed: Federation):
    engine = make_engine(fed.result.db_url)
    try:
        with make_session_factory(engine)() as s:
            rows = repo.rounds_of(s, fed.result.run_id)
            evals = repo.committed_evaluations(s, fed.result.run_id)
            return ([(r.number, dict(r.metrics or {})) for r in rows],
                    [(e.round_number, e.kind, e.loss, dict(e.metrics or {})) for e in evals])
    finally:
        engine.dispose()


def factor_names(weight: str) -> tuple[str, str]:
    prefix = weight.removesuffix(".base_layer.weight")
    return f"{prefix}.lora_A.default.weight", f"{prefix}.lora_B.default.weight"


def test_sgd_lr_1_exact_merge_is_the_average_of_the_clients_effective_weights(exact) -> None:
    for theta, replies, after in rounds(exact):
        total = sum(m for m, _ in replies)
        assert set(after) == set(theta) and all(n.endswith(".base_layer.weight") for n in theta)
        worst_naive = 0.0
        for name, w in theta.items():
            a_name, b_name = factor_names(name)
            effective = [(m, w.double() + SCALE * f[b_name].double() @ f[a_name].double())
                         for m, f in replies]
            expected = sum(m * e for m, e in effective) / total
            torch.testing.assert_close(after[name].double(), expected, rtol=1e-5, atol=1e-6)
            # the naive product of averages is measurably elsewhere: the check can fail
            mean_a = sum(m * f[a_name].double() for m, f in replies) / total
            mean_b = sum(m * f[b_name].double() for m, f in replies) / total
            naive = w.double() + SCALE * mean_b @ mean_a
            worst_naive = max(worst_naive, float((naive - expected).abs().max()))
        assert worst_naive > 1e-4


def test_naive_merge_averages_the_adapter_tensors_and_its_error_is_measured(naive) -> None:
    errors = []
    for theta, replies, after in rounds(naive):
        total = sum(m for m, _ in replies)
        assert all(".lora_A." in n or ".lora_B." in n for n in theta)
        for name in theta:  # global mode, SGD lr 1: FedAvg over the adapter tensors
            expected = sum(m * (theta[name].double() + f[name].double()) for m, f in replies)
            torch.testing.assert_close(after[name].double(), expected / total, rtol=1e-5,
                                       atol=1e-6)
        layers = {}
        for a_name in (n for n in theta if ".lora_A." in n):
            b_name = a_name.replace(".lora_A.", ".lora_B.")
            layers[a_name] = [Factors(theta[a_name] + f[a_name], theta[b_name] + f[b_name],
                                      SCALE) for _, f in replies]
        errors.append(naive_error(layers, [m for m, _ in replies]).relative)
    assert all(e > 0 for e in errors[1:]), errors  # round 1 starts from B = 0 everywhere


@pytest.mark.parametrize("which", ["exact", "naive"])
def test_held_out_perplexity_falls_below_the_base_models(which, request) -> None:
    fed = request.getfixturevalue(which)
    _, evals = records(fed)
    central = {r: m["perplexity"] for r, kind, _, m in evals if kind == "central"}
    assert sorted(central) == [0, 1, 2, 3]
    # exact: at least 1% below; naive: below (its cross terms cost it some of the way)
    assert central[3] < central[0] * (0.99 if which == "exact" else 1.0), central


def test_only_factors_travel_up_and_the_round_records_say_how_many_bytes(exact, naive) -> None:
    for fed in (exact, naive):
        rows, _ = records(fed)
        assert [n for n, _ in rows] == [1, 2, 3]
        for number, metrics in rows:
            requests = fed.requests[4 * (number - 1) : 4 * number]
            replies = fed.replies[4 * (number - 1) : 4 * number]
            assert metrics[BYTES_DOWN] == sum(payload_bytes(m) for m in requests)
            assert metrics[BYTES_UP] == sum(payload_bytes(m) for m in replies)
            for r in replies:
                names = set(record_tensors(r.content["arrays"]))
                assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    # exact: the dense targeted weights down, rank-r factors up; naive: factors both ways
    rank, weights = SETTINGS["rank"], list(exact.result.params.values())
    dense = 4 * 4 * sum(w.numel() for w in weights)  # 4 clients, float32
    factors = 4 * 4 * sum(rank * (w.shape[0] + w.shape[1]) for w in weights)
    headers = 4 * 2 * len(weights) * 256  # at most this much .npy header per tensor
    exact_first, naive_first = records(exact)[0][0][1], records(naive)[0][0][1]
    assert dense <= exact_first[BYTES_DOWN] <= dense + headers
    assert factors <= exact_first[BYTES_UP] <= factors + headers
    assert factors <= naive_first[BYTES_DOWN] <= factors + headers
    assert naive_first[BYTES_UP] == naive_first[BYTES_DOWN]


@pytest.mark.parametrize("which", ["exact", "naive"])
def test_the_export_reproduces_the_final_held_out_loss(which, request, tmp_path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    fed = request.getfixturevalue(which)
    _, evals = records(fed)
    final = next(loss for r, kind, loss, _ in evals if kind == "central" and r == 3)
    out = Path(fed.result.db_url.removeprefix("sqlite:///")).parent
    written = export_run(fed.result.db_url, out, fed.result.run_id, tmp_path)
    stem = f"fedmerge-{fed.result.run_id[:8]}"
    merged_dir, adapter_dir = tmp_path / stem / "merged", tmp_path / stem / "adapter"
    assert merged_dir in written and (adapter_dir in written) == (which == "naive")
    task = load_task("causal-lm", task_config(Path(str(_model_path(fed)))))
    cpu = torch.device("cpu")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, local_files_only=True)
    assert task.evaluate(merged, task.central_data(), cpu)["loss"] == pytest.approx(final,
                                                                                   abs=1e-4)
    if which == "naive":
        base = AutoModelForCausalLM.from_pretrained(_model_path(fed), local_files_only=True)
        adapted = PeftModel.from_pretrained(base, adapter_dir)
        assert task.evaluate(adapted, task.central_data(), cpu)["loss"] == pytest.approx(
            final, abs=1e-4)


def _model_path(fed: Federation) -> str:
    import json

    return json.loads(fed.requests[0].content["config"]["task-config"])["model-path"]
