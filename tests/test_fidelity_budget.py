"""Equal training budgets: every row says how many epochs its cell trained, and PTQ can take the same
float fine-tuning QAT gets, so "QAT beats PTQ" is not just extra training."""

from __future__ import annotations

from harness.testing import TINY_FINETUNE, run_method


def test_rows_record_the_epochs_their_cell_trained_and_ptq_can_match_qats_budget() -> None:
    plain = run_method("ptq", {"bits": 4}, sparsity=0.0).rows[-1]
    matched_job = run_method("ptq", {"bits": 4, "float_finetune": True}, sparsity=0.0)
    matched = matched_job.rows[-1]
    qat = run_method("qat", {"bits": 4}, sparsity=0.0).rows[-1]
    assert plain["train_epochs"] == 0
    assert matched["train_epochs"] == qat["train_epochs"] == TINY_FINETUNE.epochs
    assert len([e for e in matched_job.epochs if e["phase"].startswith("finetune")]) == TINY_FINETUNE.epochs
    assert matched["top1"] != plain["top1"] or matched["loss"] != plain["loss"]  # the fine-tuning changed the model


def test_an_iterative_method_counts_every_levels_epochs() -> None:
    job = run_method("imp", {"rounds": 2, "rate": 0.5}, sparsity=0.75, pretrain_recipe=TINY_FINETUNE)
    assert [row["train_epochs"] for row in job.rows] == [1, 2]  # one pretrain-recipe epoch per round
