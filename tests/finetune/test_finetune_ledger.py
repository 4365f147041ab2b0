"""The local privacy ledger: budgets per data set, atomic writes, concurrent writers."""

from __future__ import annotations

import json
import multiprocessing

import pytest
from finetune_helpers import cfg

from xfer.client.finetune.errors import PrivacyBudgetExceededError
from xfer.client.finetune.ledger import LEDGER_NAME, PrivacyLedger
from xfer.client.finetune.privacy import PrivacyConfig
from xfer.client.finetune.trainer import finetune


def test_charges_add_up_and_the_budget_refuses(tmp_path):
    ledger = PrivacyLedger.in_cache(tmp_path)
    ledger.charge("ds", epsilon=1.5, delta=1e-5, budget=4.0)
    ledger.charge("ds", epsilon=2.0, delta=1e-5)  # the recorded budget still applies
    status = ledger.status("ds")
    assert (status.budget, status.spent, status.remaining) == (4.0, 3.5, 0.5)
    with pytest.raises(PrivacyBudgetExceededError, match=r"only 0\.5 of 4 is left"):
        ledger.charge("ds", epsilon=1.0, delta=1e-5)
    assert ledger.status("ds").spent == 3.5  # a refused charge leaves no trace
    # Other data sets have their own account.
    ledger.charge("other", epsilon=10.0, delta=1e-5)
    assert ledger.status("other").budget is None
    data = json.loads((tmp_path / LEDGER_NAME).read_text())
    assert set(data["datasets"]) == {"ds", "other"}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_settle_lowers_to_what_was_spent(tmp_path):
    ledger = PrivacyLedger.in_cache(tmp_path)
    entry = ledger.charge("ds", epsilon=2.0, delta=1e-5, budget=3.0)
    ledger.settle("ds", entry.entry_id, epsilon=1.2, delta=1e-5)
    assert ledger.status("ds").spent == pytest.approx(1.2)
    ledger.settle("ds", entry.entry_id, epsilon=5.0, delta=1e-5)  # never raised past the reservation
    assert ledger.status("ds").spent == pytest.approx(1.2)


def _charge_many(path: str, count: int) -> None:
    ledger = PrivacyLedger(path)
    for _ in range(count):
        try:
            ledger.charge("shared", epsilon=0.1, delta=1e-6, budget=3.05)
        except PrivacyBudgetExceededError:
            pass


def test_concurrent_writers_lose_nothing_and_respect_the_budget(tmp_path):
    path = str(tmp_path / LEDGER_NAME)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_charge_many, args=(path, 12)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    ledger = PrivacyLedger(path)
    # 48 attempts of 0.1 against 3.05: exactly 30 fit, whatever the interleaving.
    assert len(ledger.entries("shared")) == 30
    assert ledger.status("shared").spent == pytest.approx(3.0)


def test_finetune_refuses_an_over_budget_run_before_training(tmp_path, model, card, small_blur):
    ledger = PrivacyLedger.in_cache(tmp_path)
    ledger.charge("digits-target", epsilon=2.5, delta=1e-5, budget=3.0)
    with pytest.raises(PrivacyBudgetExceededError, match="only 0.5 of 3 is left"):
        finetune(
            model,
            train=small_blur.train,
            card=card,
            label_names=small_blur.label_names,
            ledger=ledger,
            dataset_id="digits-target",
            config=cfg(strategy="linear-probe", steps=6, privacy=PrivacyConfig(epsilon=3.0, accountant="rdp")),
        )
    result = finetune(
        model,
        train=small_blur.train,
        card=card,
        label_names=small_blur.label_names,
        ledger=ledger,
        dataset_id="digits-target",
        config=cfg(strategy="linear-probe", steps=6, privacy=PrivacyConfig(epsilon=0.4, accountant="rdp")),
    )
    # The reservation was settled to the accountant's figure.
    assert ledger.status("digits-target").spent == pytest.approx(2.5 + result.privacy.epsilon_spent)


def test_errors_share_the_package_root_and_exit_codes():
    from xfer.client.finetune.errors import DeviceError, FinetuneError, PrivacyError
    from xfer.errors import EXIT_CODES, XferError

    assert issubclass(PrivacyBudgetExceededError, PrivacyError) and issubclass(FinetuneError, XferError)
    assert PrivacyBudgetExceededError.exit_code == EXIT_CODES["privacy_budget"] == 14
    assert DeviceError.exit_code == 15 and FinetuneError.exit_code == 3


def test_the_config_and_ledger_layer_imports_no_torch():
    import subprocess
    import sys

    code = (
        "import sys; import xfer.client.finetune.ledger, xfer.client.finetune.config, "
        "xfer.client.finetune.budget, xfer.client.finetune.report, xfer.client.finetune.options; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0
