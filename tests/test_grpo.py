"""GRPO math and passes against independent oracles: hand-computed values, plain reference computations,
finite differences and Monte-Carlo estimates. Only tiny random models: the whole file runs in seconds."""
import copy
import math
from functools import partial

import pytest
import torch

from grpo import (GRPOConfig, Rollout, aggregate_loss, completion_logprobs, group_advantages, grpo_loss,
                  grpo_step, kl_per_token, logprobs_by_chunk, loss_normaliser,
                  plain_completion_logprobs, ppo_clip_loss, rollout, token_logprobs, zero_std_groups)
from batching import backward_by_chunk, chunks
from grpo import pick_groups, sample_groups, zero_std_groups
from configurator import validate
from fused import logprobs_from_hidden
from engine import generate, left_pad, shared_prefix_len
from model import GPT, GPTConfig
from task import Prompt
from train import TrainConfig

from conftest import one_line

EOS, PAD, TARGET = 1, 0, 5


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny ops run fastest on one thread (and do not fight other processes for cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(arch="llama", vocab=16, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    kv = 2 if arch == "llama" else 4
    model = GPT(GPTConfig(arch=arch, vocab_size=vocab, block_size=64, n_layer=2, n_head=4, n_kv_head=kv,
                          n_embd=32, n_inner=64))
    with torch.no_grad():
        model.embed.weight.mul_(0.2)        # logits of std ~1: samples vary (the tied N(0, 1) head is peaked)
    return model.to(dtype)


def perturbed(model, scale=0.05, seed=1):
    ref = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return ref


class FakeTok:
    """Just what rollout needs: characters -> ids in [2, V), EOS = 1, PAD = 0; decode = ids as words."""
    eos_id, pad_id, stop_ids = EOS, PAD, (EOS,)

    def __init__(self, vocab=16):
        self.vocab = vocab

    def chat_prompt(self, user, system=None, example=None):
        return [2 + ord(c) % (self.vocab - 2) for c in (system or "") + "".join(example or ()) + user][:8]

    def decode_completion(self, ids, mask):
        return " ".join(str(i) for i, m in zip(ids, mask) if m)


def frac_target(prompts, texts):
    """Reward: fraction of the completion's tokens equal to TARGET; a prompt whose answer is -1 scores 1."""
    out = []
    for p, t in zip(prompts, texts):
        words = t.split()
        out.append(1.0 if p.answer == -1 else sum(w == str(TARGET) for w in words) / max(len(words), 1))
    return out


def policy_loss(model, batch, cfg, normaliser=None):
    """grpo_loss of the batch under the model's log-probs (completion_logprobs, as train.py computes them)."""
    logprobs = completion_logprobs(model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                   cfg.group_size, batch.loss_mask)
    return grpo_loss(logprobs, batch, cfg, normaliser)


def grads(model):
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def full_row_logprobs(model, prompt_ids, prompt_mask, completion_ids, G):
    """Log-probs from full rows with our own log_softmax, in the model's dtype (fp64 for finite differences)."""
    ids = torch.cat([prompt_ids.repeat_interleave(G, 0), completion_ids], 1)
    mask = torch.cat([prompt_mask.repeat_interleave(G, 0), torch.ones_like(completion_ids)], 1)
    T = completion_ids.size(1)
    logits = model(ids, attention_mask=mask)[:, -T - 1:-1]
    return torch.log_softmax(logits, -1).gather(-1, completion_ids[..., None])[..., 0]


def toy_batch(vocab=16, T=5):
    """3 left-padded prompts (lengths 3, 5, 2), G = 2, completions with EOS then padding in some rows."""
    prompts = [[3, 4, 5], [6, 7, 8, 9, 10], [11, 12]]
    prompt_ids, prompt_mask = left_pad(prompts, PAD)
    g = torch.Generator().manual_seed(0)
    comp = torch.randint(2, vocab, (6, T), generator=g)
    eos_at = [1, T, 0, 3, T, 2]                    # T = no EOS
    for i, k in enumerate(eos_at):
        if k < T:
            comp[i, k] = EOS
            comp[i, k + 1:] = PAD
    mask = torch.tensor([[int(t <= k) for t in range(T)] for k in eos_at])
    return prompt_ids, prompt_mask, comp, mask


# ----------------------------------------------------------------------------- advantages


def test_group_advantages_one_winner_hand_computed():
    """Hand: mean .25, unbiased std .5 for [1, 0, 0, 0]."""
    eps = 1e-4
    A = group_advantages(torch.tensor([1.0, 0, 0, 0]), 4, eps=eps)
    want = torch.tensor([0.75, -0.25, -0.25, -0.25]) / (0.5 + eps)
    assert torch.allclose(A, want, rtol=1e-6, atol=0)


def test_group_advantages_all_equal_is_exactly_zero():
    """Hand: equal rewards carry no preference, A = 0 exactly (no NaN)."""
    A = group_advantages(torch.tensor([0.7, 0.7, 0.7, 1.0, 1.0, 1.0]), 3)
    assert A.tolist() == [0.0] * 6
    assert group_advantages(torch.zeros(4), 4, eps=0.0).isnan().all()  # eps is what keeps it finite


def test_group_advantages_single_outlier_and_independent_groups():
    """Hand: [0]*7 + [1] has mean 1/8, std sqrt(1/8); each group uses only its own statistics."""
    eps = 1e-4
    r = torch.tensor([0.0] * 7 + [1.0] + [2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0])
    A = group_advantages(r, 8, eps=eps)
    s1 = math.sqrt(1 / 8)
    want1 = [(-1 / 8) / (s1 + eps)] * 7 + [(7 / 8) / (s1 + eps)]
    s2 = math.sqrt(sum((x - 9.0) ** 2 for x in r[8:].tolist()) / 7)
    want2 = [(x - 9.0) / (s2 + eps) for x in r[8:].tolist()]
    assert torch.allclose(A, torch.tensor(want1 + want2), rtol=1e-6, atol=1e-7)


def test_group_advantages_unscaled_is_r_minus_mean():
    """Hand: scale=False (Dr. GRPO) gives r - group mean."""
    A = group_advantages(torch.tensor([1.0, 0, 0, 0, 3, 5]), 3, scale=False)
    want = torch.tensor([2 / 3, -1 / 3, -1 / 3, -8 / 3, 1 / 3, 7 / 3])
    assert torch.allclose(A, want, atol=1e-6)


def test_zero_std_groups_mixed():
    """Hand: groups [1,1], [0,1], [0,0], [.5,.5]."""
    z = zero_std_groups(torch.tensor([1.0, 1, 0, 1, 0, 0, 0.5, 0.5]), 2)
    assert z.tolist() == [True, True, False, False, True, True, True, True]


# ----------------------------------------------------------------------------- log-probs


def test_token_logprobs_equal_hand_loop():
    """Oracle: math.log of exp(l) / sum exp over a Python loop."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=g)
    ids = torch.randint(0, 5, (2, 3), generator=g)
    got = token_logprobs(logits, ids)
    for n in range(2):
        for t in range(3):
            row = logits[n, t].tolist()
            p = math.exp(row[ids[n, t]]) / sum(math.exp(x) for x in row)
            assert abs(got[n, t].item() - math.log(p)) <= 1e-6


@pytest.mark.parametrize("chunk_tokens", [1, 3, 8, 100])
def test_logprobs_from_hidden_values_and_grads_equal_plain(chunk_tokens):
    """Oracle: plain log_softmax(h @ W^T).gather, value and gradients wrt hidden and weight."""
    g = torch.Generator().manual_seed(0)
    N, T, C, V = 7, 4, 6, 11
    h = torch.randn(N, T, C, generator=g, requires_grad=True)
    W = torch.randn(V, C, generator=g, requires_grad=True)
    ids = torch.randint(0, V, (N, T), generator=g)
    coef = torch.randn(N, T, generator=g)                   # a generic upstream gradient
    got = logprobs_from_hidden(h, W, ids, chunk_tokens=chunk_tokens)
    gh, gW = torch.autograd.grad((got * coef).sum(), (h, W))
    want = torch.log_softmax(h @ W.t(), -1).gather(-1, ids[..., None])[..., 0]
    wh, wW = torch.autograd.grad((want * coef).sum(), (h, W))
    assert (got - want).abs().max() <= 1e-5
    assert (gh - wh).abs().max() <= 1e-5 and (gW - wW).abs().max() <= 1e-5
    with torch.no_grad():
        assert (logprobs_from_hidden(h, W, ids, chunk_tokens=chunk_tokens) - want).abs().max() <= 1e-5


def test_logprobs_from_hidden_bf16_confident_token_gradient():
    """Oracle: fp32 autograd on the same bf16 values. The token's own logit gradient g (1 - p) must keep its
    digits when p is near 1 (0.9995 here), where a bf16 1 - p is off by tens of percent."""
    g = torch.Generator().manual_seed(2)
    C, V = 16, 50
    h = torch.randn(1, 1, C, generator=g) + 0.05 * torch.randn(3, 1, C, generator=g)
    W = torch.randn(V, C, generator=g) * 0.1
    W[7] = h[0, 0] * 11.5 / h[0, 0].pow(2).sum()     # logit ~11.5: token 7 has p ~ 0.9995 in every row
    ids = torch.full((3, 1), 7)
    h, W = h.bfloat16(), W.bfloat16()
    p7 = torch.softmax((h @ W.t()).float(), -1)[..., 7]
    assert (p7 > 0.999).all() and (p7 < 0.9999).all()
    h32, W32 = h.float().requires_grad_(), W.float().requires_grad_()
    want = torch.log_softmax(h32 @ W32.t(), -1).gather(-1, ids[..., None])[..., 0]
    wh, wW = torch.autograd.grad(want.sum(), (h32, W32))
    hb, Wb = h.requires_grad_(), W.requires_grad_()
    got = logprobs_from_hidden(hb, Wb, ids)
    gh, gW = torch.autograd.grad(got.sum(), (hb, Wb))
    assert got.dtype == torch.float32 and (got - want).abs().max() <= 1e-3
    assert (gW[7].float() - wW[7]).norm() <= 0.02 * wW[7].norm()
    assert (gh.float() - wh).norm() <= 0.02 * wh.norm()


def test_logprobs_from_hidden_masked_positions():
    """Oracle: plain log_softmax + gather on the masked positions; zeros and no gradient elsewhere."""
    g = torch.Generator().manual_seed(1)
    N, T, C, V = 5, 6, 4, 9
    h = torch.randn(N, T, C, generator=g, requires_grad=True)
    W = torch.randn(V, C, generator=g, requires_grad=True)
    ids = torch.randint(0, V, (N, T), generator=g)
    mask = (torch.rand(N, T, generator=g) > 0.4).long()
    got = logprobs_from_hidden(h, W, ids, mask, chunk_tokens=4)
    want = torch.log_softmax(h @ W.t(), -1).gather(-1, ids[..., None])[..., 0] * mask
    assert (got - want).abs().max() <= 1e-5 and (got[mask == 0] == 0).all()
    gh, gW = torch.autograd.grad(got.sum(), (h, W))
    wh, wW = torch.autograd.grad(want.sum(), (h, W))
    assert (gh - wh).abs().max() <= 1e-5 and (gW - wW).abs().max() <= 1e-5
    assert (gh[mask == 0] == 0).all()


# ----------------------------------------------------------------------------- KL


def test_kl_per_token_hand_values():
    """Hand: p = .5, p_ref = .25 -> k1 = log 2, k3 = .5 - 1 - log .5."""
    lp, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    assert abs(kl_per_token(lp, ref, "k1").item() - math.log(2)) <= 1e-6
    assert abs(kl_per_token(lp, ref, "k3").item() - (0.5 - 1 - math.log(0.5))) <= 1e-6
    assert kl_per_token(lp, lp, "k3").item() == 0.0


def test_k3_is_nonnegative():
    """Oracle: r - 1 - log r >= 0 for every r > 0."""
    g = torch.Generator().manual_seed(0)
    lp, ref = 3 * torch.randn(50, 20, generator=g), 3 * torch.randn(50, 20, generator=g)
    assert (kl_per_token(lp, ref, "k3") >= 0).all()
    assert (kl_per_token(lp, ref, "k1") < 0).any()          # k1 is only unbiased, not positive


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_estimators_are_unbiased_monte_carlo(estimator):
    """Oracle: exact KL(pi || pi_ref) of two categoricals vs the sample mean over draws from pi."""
    pi = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05], dtype=torch.float64)
    ref = torch.tensor([0.1, 0.3, 0.2, 0.25, 0.15], dtype=torch.float64)
    exact = (pi * (pi / ref).log()).sum().item()
    g = torch.Generator().manual_seed(0)
    x = torch.multinomial(pi, 200_000, replacement=True, generator=g)
    est = kl_per_token(pi.log()[x][None], ref.log()[x][None], estimator)
    se = est.std().item() / math.sqrt(x.numel())
    assert abs(est.mean().item() - exact) <= 4 * se
    assert se < 0.01 * exact                                   # the check is sharp enough to fail


# ----------------------------------------------------------------------------- PPO clip loss


def test_ppo_clip_gradient_at_mu_one_is_minus_advantage():
    """Hand: with old = logprobs.detach() (ratio 1), d sum(L) / d logp_t = -A_i exactly."""
    g = torch.Generator().manual_seed(0)
    lp = torch.randn(4, 6, generator=g).requires_grad_()
    A = torch.tensor([1.5, -0.5, 0.0, -2.0])
    loss, clipped = ppo_clip_loss(lp, lp.detach(), A, 0.2)
    (grad,) = torch.autograd.grad(loss.sum(), lp)
    assert torch.equal(grad, (-A)[:, None].expand(4, 6))
    assert torch.equal(loss, (-A)[:, None].expand(4, 6)) and not clipped.any()


@pytest.mark.parametrize("A", [1.0, -1.0])
def test_ppo_clip_gradient_inside_and_outside_the_range(A):
    """Hand: dL/dlogp = -A * ratio unless ratio left [1-eps, 1+eps] on the side that A pushes it to."""
    eps = 0.2
    ratios = torch.tensor([0.5, 0.9, 1.1, 1.5], dtype=torch.float64)
    old = torch.tensor([-1.0, -2.0, -0.5, -3.0], dtype=torch.float64)
    lp = (old + ratios.log()).requires_grad_()
    loss, clipped = ppo_clip_loss(lp[None], old[None], torch.tensor([A], dtype=torch.float64), eps)
    (grad,) = torch.autograd.grad(loss.sum(), lp)
    cut = (ratios > 1 + eps) if A > 0 else (ratios < 1 - eps)
    want = torch.where(cut, torch.zeros_like(ratios), -A * ratios)
    assert torch.allclose(grad, want, atol=1e-12)
    assert clipped[0].tolist() == cut.tolist()
    want_loss = torch.where(cut, -A * ratios.clamp(1 - eps, 1 + eps), -A * ratios)
    assert torch.allclose(loss[0], want_loss, atol=1e-12)


@pytest.mark.parametrize("beta", [0.0, 0.3])
def test_grpo_loss_gradient_equals_analytic_and_finite_difference(beta):
    """Oracles: grad of mean_i 1/|o_i| sum_t m (-A_i log pi + beta k3) (autograd and central FD, fp64)."""
    model = tiny("gpt2", dtype=torch.float64)   # llama's RoPE runs in fp32 even in an fp64 model
    ref = perturbed(model, scale=0.2)
    prompt_ids, prompt_mask, comp, cmask = toy_batch()
    A = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0], dtype=torch.float64)
    with torch.no_grad():
        ref_lp = full_row_logprobs(ref, prompt_ids, prompt_mask, comp, 2)
    batch = Rollout(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=comp, completion_mask=cmask,
                    rewards=A.float(), texts=[], advantages=A.float(), loss_mask=cmask.clone(), ref_logprobs=ref_lp)
    cfg = GRPOConfig(group_size=2, beta=beta, max_new_tokens=comp.size(1))
    loss, _, _ = policy_loss(model, batch, cfg)
    loss.backward()
    got = grads(model)
    p, idx, h = model.blocks[0].attn.q_proj.weight, (3, 5), 1e-5
    got_entry = p.grad[idx].item()

    def surrogate():
        lp = full_row_logprobs(model, prompt_ids, prompt_mask, comp, 2)
        k3 = (ref_lp - lp).exp() - 1 - (ref_lp - lp)
        return ((-A[:, None] * lp + beta * k3) * cmask).sum(1).div(cmask.sum(1)).mean()

    model.zero_grad()
    surrogate().backward()
    want = grads(model)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    with torch.no_grad():
        p[idx] += h
        up = surrogate().item()
        p[idx] -= 2 * h
        down = surrogate().item()
        p[idx] += h
    fd = (up - down) / (2 * h)
    assert abs(got_entry - fd) <= 1e-6 * max(1.0, abs(fd)) and abs(fd) > 1e-6


# ----------------------------------------------------------------------------- aggregation


def test_aggregate_loss_modes_hand_computed():
    """Hand: a (2, 3) loss with 2 and 1 real tokens."""
    L = torch.tensor([[1.0, 2.0, 100.0], [4.0, 100.0, 100.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert aggregate_loss(L, m, "seq_mean").item() == pytest.approx((3 / 2 + 4 / 1) / 2)
    assert aggregate_loss(L, m, "token_mean").item() == pytest.approx(7 / 3)
    assert aggregate_loss(L, m, "seq_sum").item() == pytest.approx(7 / 2)
    assert aggregate_loss(L, m, "constant").item() == pytest.approx(7 / (2 * 3))
    assert aggregate_loss(L, m, "constant", max_tokens=10).item() == pytest.approx(7 / 20)
    with pytest.raises(ValueError) as e:
        aggregate_loss(L, m, "sum_of_squares")
    one_line(e, "sum_of_squares")


# ----------------------------------------------------------------------------- shared-prompt forward


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("T", [1, 2, 5])
def test_shared_prompt_logprobs_and_grads_equal_plain(arch, T):
    """Oracle: plain_completion_logprobs (prompt repeated in every row), values and parameter gradients."""
    prompt_ids, prompt_mask, comp, cmask = toy_batch(T=5)
    assert_equal_to_plain(tiny(arch), prompt_ids, prompt_mask, comp[:, :T], cmask[:, :T])


def assert_equal_to_plain(model, prompt_ids, prompt_mask, comp, cmask):
    """completion_logprobs (G = 2) and the gradients of their sum equal plain_completion_logprobs' (fp32, 1e-5)."""
    fast = completion_logprobs(model, prompt_ids, prompt_mask, comp, 2, cmask)     # post-EOS: not computed
    (fast * cmask).sum().backward()
    g_fast = grads(model)
    model.zero_grad()
    plain = plain_completion_logprobs(model, prompt_ids, prompt_mask, comp, 2)
    (plain * cmask).sum().backward()
    g_plain = grads(model)
    m = cmask.bool()
    assert fast.shape == plain.shape == comp.shape and fast.dtype == torch.float32
    assert (fast[m] - plain[m]).abs().max() <= 1e-5
    assert (g_fast - g_plain).abs().max() <= 1e-5 * g_plain.abs().max()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_tempered_logprobs_are_the_samplers_log_softmax_of_logits_over_T(arch):
    """Oracle: log_softmax(logits / T) of full rows (our own, not the fused head), values and parameter
    gradients, at T = 1.3; and T = 1 gives the untempered values to the bit."""
    prompt_ids, prompt_mask, comp, cmask = toy_batch()
    model = tiny(arch)
    fast = completion_logprobs(model, prompt_ids, prompt_mask, comp, 2, cmask, temperature=1.3)
    (fast * cmask).sum().backward()
    g_fast = grads(model)
    model.zero_grad()
    ids = torch.cat([prompt_ids.repeat_interleave(2, 0), comp], 1)
    mask = torch.cat([prompt_mask.repeat_interleave(2, 0), torch.ones_like(comp)], 1)
    logits = model(ids, attention_mask=mask)[:, -comp.size(1) - 1:-1] / 1.3
    oracle = torch.log_softmax(logits, -1).gather(-1, comp[..., None])[..., 0]
    (oracle * cmask).sum().backward()
    m = cmask.bool()
    assert (fast[m] - oracle[m]).abs().max() <= 1e-5
    assert (g_fast - grads(model)).abs().max() <= 1e-5 * grads(model).abs().max()
    untempered = completion_logprobs(model, prompt_ids, prompt_mask, comp, 2, cmask)
    assert torch.equal(completion_logprobs(model, prompt_ids, prompt_mask, comp, 2, cmask, temperature=1.0),
                       untempered)
    assert (untempered[m] - fast[m]).abs().max() > 1e-2          # the temperature is not ignored


def test_rollout_takes_the_reference_log_probs_at_the_sampling_temperature():
    """rollout's pi_ref (and pi_old) log-probs are of softmax(logits / T), T = cfg.temperature, as the policy's
    in the loss (train.optimize): k3 and the ratio compare the same tempered distributions."""
    policy = tiny()
    ref = perturbed(policy)
    cfg = GRPOConfig(group_size=2, max_new_tokens=4, temperature=1.5)
    batch = rollout(policy, FakeTok(), PROMPTS, frac_target, cfg, ref_model=ref, seeds=[0, 1, 2, 3],
                    need_old_logprobs=True)
    m = batch.completion_mask.bool()
    for model, got in ((ref, batch.ref_logprobs), (policy, batch.old_logprobs)):
        want = completion_logprobs(model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids, 2,
                                   batch.completion_mask, temperature=1.5)
        at_1 = completion_logprobs(model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids, 2,
                                   batch.completion_mask)
        assert torch.allclose(got[m], want[m], atol=1e-6) and not torch.allclose(got[m], at_1[m], atol=1e-3)


def test_shared_prefix_len_hand_cases():
    """Hand: the common first tokens of the real (unpadded) rows, at most the shortest row less one."""
    def L(rows):
        return shared_prefix_len(*left_pad(rows, PAD))
    assert L([[3, 4, 5, 6], [3, 4, 9], [3, 4, 5, 7, 8]]) == 2
    assert L([[3, 4, 5], [3, 4, 5], [3, 4, 5, 6]]) == 2          # every row keeps its last token
    assert L([[3, 4], [5, 4]]) == 0 and L([[3, 4, 5]]) == 0 and L([[3], [3, 4]]) == 0


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_shared_prefix_prompts_logprobs_and_grads_equal_plain(arch):
    """Oracle: plain_completion_logprobs, with prompts that share their first 3 tokens (one of them is the prefix
    and one more token): the prefix runs once, its gradient is the sum over the rows that read it."""
    model = tiny(arch)
    prompts = [[2, 3, 4, 5, 6], [2, 3, 4, 7], [2, 3, 4, 8, 9, 10, 11]]
    prompt_ids, prompt_mask = left_pad(prompts, PAD)
    assert shared_prefix_len(prompt_ids, prompt_mask) == 3
    _, _, comp, cmask = toy_batch(T=5)
    assert_equal_to_plain(model, prompt_ids, prompt_mask, comp, cmask)
    with torch.no_grad():                                        # and sampling from them: each prompt alone
        batch, _ = generate(model, prompts, num_samples=2, max_new_tokens=6, eos_id=EOS, pad_id=PAD, seeds=[5, 6, 7])
        for i, p in enumerate(prompts):
            alone, _ = generate(model, [p], num_samples=2, max_new_tokens=6, eos_id=EOS, pad_id=PAD, seeds=[5 + i])
            assert batch[2 * i:2 * i + 2, :alone.size(1)].tolist() == alone.tolist()


# ----------------------------------------------------------------------------- rollout and loss

PROMPTS = [Prompt("ab", 0), Prompt("hello", -1), Prompt("xyz", 1), Prompt("q", -1)]


def hand_loss(lp, ref_lp, A, mask, beta, agg, max_tokens):
    """GRPO loss value at ratio 1 over the rows in mask: -A + beta * k3, aggregated by hand."""
    L = (-A[:, None] + beta * ((ref_lp - lp).exp() - 1 - (ref_lp - lp))) * mask
    keep = mask.sum(1) > 0
    L, m = L[keep], mask[keep]
    if agg == "seq_mean":
        return (L.sum(1) / m.sum(1)).mean()
    if agg == "token_mean":
        return L.sum() / m.sum()
    if agg == "seq_sum":
        return L.sum(1).mean()
    return L.sum() / (keep.sum() * max_tokens)


def test_chunks_are_cut_to_their_own_lengths_and_give_the_same_logprobs():
    """Oracle: completion_logprobs of the whole batch (fp32); each part keeps only its own columns."""
    model = tiny()
    prompt_ids, prompt_mask, comp, cmask = toy_batch()
    z = torch.zeros(6)
    batch = Rollout(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=comp, completion_mask=cmask,
                    rewards=z, texts=list("abcdef"), advantages=z, loss_mask=cmask.clone())
    rows, pieces = zip(*chunks(batch, 1))
    # prompt lengths 3, 5, 2 and longest completions (EOS at 1/-, 0/3, -/2 of T = 5) -> 5, 4, 5 columns
    assert [tuple(c.prompt_ids.shape) for c in pieces] == [(1, 3), (1, 5), (1, 2)]
    assert [tuple(c.completion_ids.shape) for c in pieces] == [(2, 5), (2, 4), (2, 5)]
    assert [r.tolist() for r in rows] == [[0, 1], [2, 3], [4, 5]]
    assert pieces[1].texts == ["c", "d"] and torch.equal(pieces[1].completion_mask, cmask[2:4, :4])
    whole = completion_logprobs(model, prompt_ids, prompt_mask, comp, 2, cmask)
    for k in (1, 2, 3):
        assert (logprobs_by_chunk(model, batch, 2, k) - whole).abs().max() <= 1e-5


def test_groups_out_of_the_loss_are_not_run():
    """only_in_loss: the middle group has no token in the loss mask, so no chunk holds its prompt or rows;
    the others' log-probs are the whole batch's (oracle: completion_logprobs of all three), its rows 0."""
    model = tiny()
    prompt_ids, prompt_mask, comp, cmask = toy_batch()
    z = torch.zeros(6)
    loss_mask = cmask.clone()
    loss_mask[2:4] = 0
    batch = Rollout(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=comp, completion_mask=cmask,
                    rewards=z, texts=list("abcdef"), advantages=z, loss_mask=loss_mask)
    for k in (1, 2, 3):
        rows, pieces = zip(*chunks(batch, k, only_in_loss=True))
        assert sorted(sum((r.tolist() for r in rows), [])) == [0, 1, 4, 5]
        assert sum(c.prompt_ids.size(0) for c in pieces) == 2 and all("c" not in c.texts for c in pieces)
        whole = completion_logprobs(model, prompt_ids, prompt_mask, comp, 2, cmask)
        got = logprobs_by_chunk(model, batch, 2, k, only_in_loss=True)
        assert (got[[0, 1, 4, 5]] - whole[[0, 1, 4, 5]]).abs().max() <= 1e-5
        assert not got[2:4].any() and whole[2:4].any()


@pytest.mark.parametrize("agg", ["seq_mean", "token_mean", "seq_sum", "constant"])
def test_drop_zero_std_groups_leaves_them_out_of_loss_and_normaliser(agg):
    """Oracle: loss by hand over the kept groups only (plain log-probs, own k3, own group statistics)."""
    torch.manual_seed(0)
    policy = tiny()
    ref = perturbed(policy)
    cfg = GRPOConfig(group_size=4, max_new_tokens=4, beta=0.1, drop_zero_std_groups=True, loss_agg=agg)
    batch = rollout(policy, FakeTok(), PROMPTS, frac_target, cfg, ref_model=ref, seeds=[1, 2, 3, 4])
    r = batch.rewards.view(4, 4)
    flat = (r == r[:, :1]).all(1).repeat_interleave(4)
    assert flat.view(4, 4)[[1, 3], 0].all() and not flat.all()     # answer -1 groups are flat, others not
    assert batch.loss_mask[flat].sum() == 0
    assert torch.equal(batch.loss_mask[~flat], batch.completion_mask[~flat])
    loss, _, _ = policy_loss(policy, batch, cfg)
    args = (batch.prompt_ids, batch.prompt_mask, batch.completion_ids, 4)
    with torch.no_grad():
        lp, ref_lp = plain_completion_logprobs(policy, *args), plain_completion_logprobs(ref, *args)
    mask = batch.completion_mask.float() * (~flat)[:, None]
    want = hand_loss(lp, ref_lp, batch.advantages, mask, 0.1, agg, cfg.max_new_tokens)
    assert abs(loss.item() - want.item()) <= 1e-5 * max(1.0, abs(want.item()))


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_as_reward_penalty(estimator):
    """Oracle: A = group-normalised (r - beta * sum_t KL_t), with own log-probs, KL and mean/std."""
    torch.manual_seed(0)
    policy = tiny()
    ref = perturbed(policy, scale=0.1)
    beta, G = 0.5, 4
    cfg = GRPOConfig(group_size=G, max_new_tokens=6, beta=beta, kl_mode="reward", kl_estimator=estimator)
    prompts = [Prompt("ab", 0), Prompt("xyz", 1)]
    batch = rollout(policy, FakeTok(), prompts, frac_target, cfg, ref_model=ref, seeds=[7, 8])
    assert (batch.completion_mask == 0).any()                  # a row stopped at EOS: padding to mask out
    texts = [" ".join(str(i) for i, m in zip(ids, ms) if m)
             for ids, ms in zip(batch.completion_ids.tolist(), batch.completion_mask.tolist())]
    r = torch.tensor(frac_target([p for p in prompts for _ in range(G)], texts))
    assert torch.equal(batch.rewards, r)                        # the stored reward is the task reward
    args = (batch.prompt_ids, batch.prompt_mask, batch.completion_ids, G)
    with torch.no_grad():
        lp, ref_lp = full_row_logprobs(policy, *args), full_row_logprobs(ref, *args)
    kl = lp - ref_lp if estimator == "k1" else (ref_lp - lp).exp() - 1 - (ref_lp - lp)
    shaped = (r - beta * (kl * batch.completion_mask).sum(1)).view(-1, G)
    mean = shaped.mean(1, keepdim=True)
    std = ((shaped - mean) ** 2).sum(1, keepdim=True).div(G - 1).sqrt()
    want = ((shaped - mean) / (std + cfg.adv_eps)).reshape(-1)
    assert (batch.advantages - want).abs().max() <= 1e-4
    assert (batch.advantages - group_advantages(r, G)).abs().max() > 1e-3   # the penalty changed them
    loss, _, _ = policy_loss(policy, batch, cfg)                   # no KL term in the loss itself
    want_loss = aggregate_loss(-batch.advantages[:, None].expand_as(lp), batch.completion_mask, "seq_mean")
    assert abs(loss.item() - want_loss.item()) <= 1e-6


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("field,value", [("group_size", 1), ("kl_estimator", "k2"), ("kl_mode", "both"),
                                         ("loss_agg", "seq_max"), ("top_p", 1.5), ("top_k", 0),
                                         ("clip_eps", 0.0), ("adv_eps", 0.0)])
def test_config_validate_names_the_bad_value(field, value):
    """Oracle: one line naming the bad value."""
    with pytest.raises(ValueError) as e:
        validate(TrainConfig(grpo=GRPOConfig(**{field: value})))
    one_line(e, f"--{field}={value}")


@pytest.mark.parametrize("settings", [dict(beta=0.0), dict(beta=0.1), dict(beta=0.1, scale_rewards=False),
                                      dict(beta=0.1, prompts_per_pass=1)])
def test_written_out_step_equals_the_batched_path(settings):
    """Oracle: train.py's path, rollout + backward_by_chunk (one prompt pass per group, chunk by chunk, no
    log-prob after EOS), on the same seeds: the same completions, rewards, advantages, KL and loss, and the same
    parameter gradients (fp32, 1e-5)."""
    policy = tiny()
    ref = perturbed(policy, scale=0.1)
    cfg = GRPOConfig(group_size=4, max_new_tokens=5, **settings)
    prompts, seeds = [Prompt("ab", 0), Prompt("xyz", -1), Prompt("hello", 0)], [1, 2, 3]
    loss, kl, batch = grpo_step(policy, FakeTok(), prompts, frac_target, cfg, ref_model=ref, seeds=seeds)
    loss.backward()
    written = grads(policy).clone()
    policy.zero_grad()
    fast = rollout(policy, FakeTok(), prompts, frac_target, cfg, ref_model=ref, seeds=seeds)
    normaliser = loss_normaliser(fast.loss_mask, cfg.loss_agg, cfg.max_new_tokens)
    fast_loss, fast_kl, clipped = backward_by_chunk(partial(completion_logprobs, policy),
                                                    partial(grpo_loss, cfg=cfg, normaliser=normaliser), fast, cfg)
    assert batch.texts == fast.texts and torch.equal(batch.rewards, fast.rewards)
    assert torch.equal(batch.loss_mask, fast.loss_mask) and not clipped.any()
    assert (batch.advantages - fast.advantages).abs().max() <= 1e-5
    assert (kl is None) == (fast_kl is None) == (cfg.beta == 0)
    if kl is not None:
        m = batch.completion_mask.bool()
        assert torch.allclose(kl[m], fast_kl[m], rtol=1e-5, atol=1e-6)
    assert abs(loss.item() - fast_loss) <= 1e-5
    assert (written - grads(policy)).abs().max() <= 1e-5 * max(1.0, written.abs().max().item())


@pytest.mark.parametrize("option", [dict(kl_estimator="k1"), dict(kl_mode="reward"), dict(loss_agg="seq_sum"),
                                    dict(drop_zero_std_groups=True), dict(temperature=1.2)])
def test_grpo_step_refuses_what_it_does_not_write_out(option):
    """Oracle: one line naming the option, before any sampling (the batched path runs it)."""
    with pytest.raises(ValueError) as e:
        grpo_step(None, FakeTok(), PROMPTS, frac_target, GRPOConfig(**option))
    one_line(e, "=".join(map(str, next(iter(option.items())))))


def test_loss_normaliser_hand_values():
    """Hand: 2 sequences with 2 and 1 tokens in the loss, and a third with none (a dropped group)."""
    m = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    assert loss_normaliser(m, "token_mean") == 3.0
    assert loss_normaliser(m, "seq_mean") == loss_normaliser(m, "seq_sum") == 2.0
    assert loss_normaliser(m, "constant") == 6.0 and loss_normaliser(m, "constant", 10) == 20.0
    L = torch.randn(3, 3)
    for mode in ("seq_mean", "token_mean", "seq_sum", "constant"):     # a whole batch's normaliser, given
        assert aggregate_loss(L, m, mode, normaliser=4.0) * 4 == pytest.approx(
            aggregate_loss(L, m, mode) * loss_normaliser(m, mode), rel=1e-6)


def test_grpo_step_empty_prompt_list():
    """Oracle: one line saying the prompt list is empty."""
    with pytest.raises(ValueError) as e:
        grpo_step(tiny(), FakeTok(), [], frac_target, GRPOConfig(group_size=2))
    one_line(e, "empty prompt list")


# ----------------------------------------------------------------------------- end to end


def test_end_to_end_reward_rises():
    """Oracle: the reward itself; mean of the last 5 steps clearly beats the first 5."""
    policy = tiny(seed=1)
    torch.manual_seed(1)
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3, weight_decay=0.0)
    cfg = GRPOConfig(group_size=8, max_new_tokens=3, beta=0.0)
    prompts = [Prompt("ab", 0), Prompt("xyz", 1)]
    history = []
    for _ in range(30):
        loss, _, batch = grpo_step(policy, FakeTok(), prompts, frac_target, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert math.isfinite(loss.item()) and all(p.isfinite().all() for p in policy.parameters())
        history.append(batch.rewards.mean().item())
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert last > first + 0.5, history


def test_pick_groups_keeps_the_groups_that_differ_first_in_draw_order():
    r = torch.tensor([1., 1, 0, 1, 0, 0, 1, 0, 2, 2])      # G = 2: flat, differ, flat, differ, flat
    assert pick_groups(r, 2, 2) == [1, 3]
    assert pick_groups(r, 2, 3) == [0, 1, 3]                # too few differ: the first flat one fills up
    assert pick_groups(r, 2, 5) == [0, 1, 2, 3, 4]
    assert pick_groups(torch.ones(6), 3, 1) == [0]          # nothing differs: the first drawn


def test_oversample_keeps_b_groups_each_with_its_g_samples():
    """DAPO's dynamic sampling, oversample = 2: 4 prompts drawn, B = 2 groups kept. Oracle: sample_groups of all
    4 with the same seeds; the prompts whose answer is -1 (drawn first and third) score 1 whatever is sampled, so
    the kept groups are drawn groups 1 and 3, each row for row (its G samples together, in their order)."""
    torch.manual_seed(0)
    policy = tiny()
    cfg = GRPOConfig(group_size=4, max_new_tokens=4, beta=0.1, oversample=2, drop_zero_std_groups=True)
    prompts, seeds = [PROMPTS[1], PROMPTS[0], PROMPTS[3], PROMPTS[2]], [3, 4, 5, 6]
    drawn = sample_groups(policy, FakeTok(), prompts, frac_target, cfg, seeds)
    assert zero_std_groups(drawn.rewards, 4)[::4].tolist() == [True, False, True, False]
    batch = rollout(policy, FakeTok(), prompts, frac_target, cfg, ref_model=perturbed(policy), seeds=seeds)
    assert batch.kept == [1, 3] and batch.prompt_ids.size(0) == 2 and batch.completion_ids.size(0) == 8
    assert torch.equal(batch.drawn.rewards, drawn.rewards)
    T = batch.completion_ids.size(1)
    for k, g in enumerate(batch.kept):
        mine, theirs = slice(4 * k, 4 * k + 4), slice(4 * g, 4 * g + 4)
        assert batch.texts[mine] == drawn.texts[theirs]
        assert torch.equal(batch.rewards[mine], drawn.rewards[theirs])
        assert torch.equal(batch.completion_ids[mine], drawn.completion_ids[theirs, :T])
        assert not drawn.completion_mask[theirs, T:].any()
        P = batch.prompt_ids.size(1)
        assert torch.equal(batch.prompt_ids[k], drawn.prompt_ids[g, -P:]) and not drawn.prompt_mask[g, :-P].any()
    assert torch.equal(batch.loss_mask, batch.completion_mask)        # both kept groups differ: nothing dropped
    assert torch.equal(batch.advantages, group_advantages(batch.rewards, 4))
