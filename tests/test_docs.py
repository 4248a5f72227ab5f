"""The Python examples in README.md and docs/ run as written."""

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(path: Path) -> str:
    return "\n".join(re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S))


@pytest.mark.parametrize("name", ["README.md", "docs/own-device.md", "docs/recording.md", "docs/pools.md", "docs/checkpoint.md"])
def test_examples_run(name, capsys):
    code = python_blocks(ROOT / name)
    assert code.strip(), f"{name} has no python example"
    exec(compile(code, name, "exec"), {"__name__": "__doc_example__"})
    printed = capsys.readouterr().out
    assert "Ledger(" in printed


def test_own_device_example_learns():
    namespace = {"__name__": "__doc_example__"}
    exec(compile(python_blocks(ROOT / "docs/own-device.md"), "own-device", "exec"), namespace)
    physical, loss = namespace["physical"], namespace["loss"]
    assert loss.item() < 0.6  # the sign of a product: chance level is an MSE near 1
    assert physical.calls.probe == 100 * 2 * 4 * 512 and physical.calls.forward == 100 * 512


def test_pools_example_counts_every_sample_once():
    namespace = {"__name__": "__doc_example__"}
    exec(compile(python_blocks(ROOT / "docs/pools.md"), "pools", "exec"), namespace)
    layer, pool = namespace["layer"], namespace["pool"]
    assert (layer.calls.forward, layer.calls.probe) == (64, 2 * 64)
    assert pool.status().samples == layer.calls.total and [w.samples for w in pool.status().workers] == [48] * 4
    assert namespace["shg"].calls.forward == namespace["simulators"].status().samples == 32


def test_checkpoint_example_resumes_exactly(capsys):
    namespace = {"__name__": "__doc_example__"}
    exec(compile(python_blocks(ROOT / "docs/checkpoint.md"), "checkpoint", "exec"), namespace)
    model, uninterrupted = namespace["model"], namespace["uninterrupted"]
    assert capsys.readouterr().out.startswith("True\n")
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), uninterrupted.parameters()))
    ledger, reference = model[1].calls.as_dict(), uninterrupted[1].calls.as_dict()
    assert {k: v for k, v in ledger.items() if k != "seconds"} == {k: v for k, v in reference.items() if k != "seconds"}
    assert ledger["forward"] == 40 * 16
