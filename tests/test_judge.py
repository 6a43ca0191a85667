"""The LLM-as-a-judge component on a tiny model: one probability per reply, equal to a direct computation."""
import pytest
import torch

from conftest import write_random_gpt2
from judge import agreement, judge_prompt, judge_probabilities, make_judge, verdict_token_ids
from load_weights import load_model
from task import Prompt, WeightedReward


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, gpt2_tokenizer_files):
    folder = tmp_path_factory.mktemp("tiny_judge")
    write_random_gpt2(folder, gpt2_tokenizer_files, n_layer=1, n_embd=32, n_head=2, n_positions=128)
    return load_model(str(folder))


PROMPTS = [Prompt("What is 3 + 5? Answer with just the number.", 8, "add1"),
           Prompt("Which is larger, 42 or 57? Answer with just the number.", 57, "larger"),
           Prompt("What is 3 + 5? Answer with just the number.", 8, "add1")]
REPLIES = ["8", "57 is larger than 42.", "9? No, 8"]


def test_judge_matches_a_direct_computation(tiny):
    model, tok = tiny
    got = judge_probabilities(model, tok, PROMPTS, REPLIES, batch_size=2)     # padded batches of 2 and 1
    assert len(got) == 3 and all(0.0 <= p <= 1.0 for p in got)
    yes, no = verdict_token_ids(tok)
    assert tok.decode([yes]).strip() == "Yes" and tok.decode([no]).strip() == "No"
    for p, r, g in zip(PROMPTS, REPLIES, got):
        ids = torch.tensor([judge_prompt(tok, p.question, r)])
        logits = model(ids)[0, -1].double()                                  # one unpadded row, all logits
        probs = torch.softmax(logits, -1)
        assert g == pytest.approx((probs[yes] / (probs[yes] + probs[no])).item(), abs=1e-5)
    assert len(set(round(g, 6) for g in got)) > 1                           # it reads the reply


def test_judge_as_a_weighted_component(tiny):
    model, tok = tiny
    judge = make_judge(model, tok)
    reward = WeightedReward({"correct": 1, "judge": 1}, judge=judge)
    parts = reward.components(PROMPTS, REPLIES)
    assert set(parts) == {"correct", "judge"} and parts["correct"] == [1.0, 1.0, 0.0]
    assert reward.combine(parts) == pytest.approx([(c + j) / 2 for c, j in zip(parts["correct"], parts["judge"])])


def test_agreement_counts():
    a = agreement([0.9, 0.2, 0.7, 0.4], [True, True, False, False])
    assert a["agreement"] == 0.5 and a["judge_yes_verifier_no"] == 1 and a["judge_no_verifier_yes"] == 1
    assert a["mean_judge_if_right"] == pytest.approx(0.55) and a["mean_judge_if_wrong"] == pytest.approx(0.55)
    assert a["auc"] == 0.5                          # right 0.9 > both wrong, right 0.2 < both: 2 of 4 pairs
    assert agreement([0.9, 0.8, 0.1], [True, True, False])["auc"] == 1.0
    assert agreement([0.3, 0.3], [True, False])["auc"] == 0.5 and agreement([0.3], [True])["auc"] is None
