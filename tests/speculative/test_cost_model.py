"""The cost model: hand-computed predictions, limits, the SSD paper's setting, and auto's choice."""

from __future__ import annotations

import statistics

import pytest

from paperclub.errors import UserError
from paperclub.speculative import auto
from paperclub.speculative import cost_model as cm


def flat_costs(target_s: float = 0.010, draft_s: float = 0.001, **kw) -> cm.Costs:
    """Step times that do not depend on the row count (a memory-bound step), for 1 and 2 threads alike."""
    t, d = cm.StepTimes({1: target_s, 64: target_s}), cm.StepTimes({1: draft_s, 64: draft_s})
    return cm.Costs(target={1: t, 2: t}, draft={1: d, 2: d}, **kw)


W = cm.Workload(new_tokens=101, prompt_tokens=0)  # 100 decode rounds after the prefill's token


def test_hand_computed_ar_and_sd():
    costs = cm.Costs(target={2: cm.StepTimes({1: 0.010, 3: 0.012})}, draft={2: cm.StepTimes({1: 0.001})})
    assert cm.predict_ar(costs, W, 2).tokens_per_s == pytest.approx(101 / (100 * 0.010))
    acc = cm.Acceptance([0.5, 0.25])
    sd = cm.predict_sd(costs, acc, 2, W, 2)
    assert sd.tokens_per_round == pytest.approx(1.75)
    assert sd.round_s == pytest.approx(2 * 0.001 + 0.012)
    assert sd.tokens_per_s == pytest.approx(101 / (100 / 1.75 * 0.014))


def test_hand_computed_sd_with_prompt_lookup_first():
    """ngram+draft: the rounds prompt lookup drafted cost no draft time, so a draft share of 0.4 pays 0.4 of SD's
    K draft steps; the acceptance is the combined one."""
    costs = cm.Costs(target={2: cm.StepTimes({1: 0.010, 3: 0.012})}, draft={2: cm.StepTimes({1: 0.001})})
    acc = cm.Acceptance([0.6, 0.4])
    p = cm.predict_sd(costs, acc, 2, W, 2, draft_share=0.4, drafter="ngram+draft")
    assert p.round_s == pytest.approx(0.4 * 2 * 0.001 + 0.012)
    assert p.tokens_per_s == pytest.approx(101 / (100 / 2.0 * p.round_s))
    assert cm.describe(p) == "SD n-gram+draft K=2" and p.detail["draft_share"] == 0.4
    assert cm.predict_sd(costs, acc, 2, W, 2, draft_share=0.0).round_s == pytest.approx(0.012)
    with pytest.raises(UserError, match="draft_share"):
        cm.predict_sd(costs, acc, 2, W, 2, draft_share=1.5)


def test_hand_computed_tree():
    """A tree round: the draft's share of (one catch-up forward + K - 1 forwards over w rows), then one target
    forward over the root and the nodes (StepTimes interpolates linearly in rows)."""
    costs = cm.Costs(target={2: cm.StepTimes({1: 0.010, 21: 0.020})},
                     draft={2: cm.StepTimes({1: 0.001, 4: 0.0016})})
    shape = cm.TreeShape(tokens_per_round=3.0, nodes=10, width=4, draft_share=0.5)
    tree = cm.predict_tree(costs, shape, 3, W, 2)
    verify = 0.010 + 0.010 * 10 / 20  # 11 rows
    draft = 0.5 * (0.001 + 2 * 0.0016)
    assert tree.round_s == pytest.approx(verify + draft)
    assert tree.tokens_per_s == pytest.approx(101 / (100 / 3.0 * (verify + draft)))
    no_draft = cm.predict_tree(costs, cm.TreeShape(2.0, 10, 0), 3, W, 2)  # n-gram guesses only: no draft cost
    assert no_draft.round_s == pytest.approx(verify)
    with pytest.raises(UserError, match="tokens_per_round >= 1"):
        cm.TreeShape(0.5, 10, 4)


def test_prefill_counts():
    costs = cm.Costs(target={2: cm.StepTimes({1: 0.010}, prefill_per_token_s=0.001)}, draft={})
    w = cm.Workload(new_tokens=101, prompt_tokens=50)
    assert cm.predict_ar(costs, w, 2).tokens_per_s == pytest.approx(101 / (0.05 + 1.0))


def test_zero_acceptance_costs_ar_plus_the_draft():
    costs = flat_costs()
    for k in (1, 3, 5):
        sd = cm.predict_sd(costs, cm.Acceptance([0.0] * 8), k, W, 2)
        assert sd.tokens_per_round == 1.0
        assert 1 / sd.tokens_per_s * W.new_tokens == pytest.approx(100 * (0.010 + k * 0.001))
        assert sd.tokens_per_s < cm.predict_ar(costs, W, 2).tokens_per_s


def test_perfect_acceptance_gives_k_plus_one_tokens_per_round():
    for k in (1, 4, 8):
        assert cm.Acceptance([1.0] * 3).tokens_per_round(k) == k + 1
    assert cm.Acceptance.geometric(0.5).tokens_per_round(2) == pytest.approx(1.75)


def test_sd_rises_with_acceptance_and_falls_with_draft_cost():
    tps = [cm.predict_sd(flat_costs(), cm.Acceptance.geometric(a), 4, W, 2).tokens_per_s for a in (0.2, 0.5, 0.8)]
    assert tps == sorted(tps) and tps[0] < tps[-1]
    tps = [cm.predict_sd(flat_costs(draft_s=d), cm.Acceptance.geometric(0.7), 4, W, 2).tokens_per_s
           for d in (0.0005, 0.001, 0.003)]
    assert tps == sorted(tps, reverse=True)


def test_ssd_on_its_own_device_hides_the_draft_on_hits():
    costs = cm.Costs(target={0: cm.StepTimes({1: 0.010})}, draft={0: cm.StepTimes({1: 0.001})})
    acc, place = cm.Acceptance.geometric(0.7), cm.Placement(1, 1, 5, separate_devices=True)
    all_hits = cm.predict_ssd(costs, acc, cm.HitRate({3: 1.0}), 4, 3, W, place)
    assert all_hits.round_s == pytest.approx(0.010)  # the build (5 draft steps) hides behind the verify
    half = cm.predict_ssd(costs, acc, cm.HitRate({3: 0.5}), 4, 3, W, place)
    assert half.round_s == pytest.approx(0.010 + 0.5 * 4 * 0.001)
    sd = cm.predict_sd(costs, acc, 4, W, 0)
    assert sd.tokens_per_s < half.tokens_per_s < all_hits.tokens_per_s


def test_ssd_waits_for_a_long_build_and_oversubscription_slows_both():
    costs = flat_costs(target_s=0.010, draft_s=0.004)
    acc, hits = cm.Acceptance.geometric(0.7), cm.HitRate({1: 1.0})
    p = cm.predict_ssd(costs, acc, hits, 4, 1, W, cm.Placement(1, 1, 2))
    assert p.round_s == pytest.approx(5 * 0.004)  # build (glue + 4 branch steps) > verify
    over = cm.predict_ssd(costs, acc, hits, 4, 1, W, cm.Placement(1, 2, 2))
    assert over.round_s == pytest.approx(1.5 * p.round_s)


def test_hit_rate_interpolates_and_extrapolates_as_a_power_law():
    h = cm.HitRate({1: 0.5, 2: 0.75})
    assert h.at(1.5) == pytest.approx(0.625)
    assert h.at(4) == pytest.approx(1 - 0.25 * 0.5)  # miss halves per doubling of F
    assert h.at(0.5) == 0.5


def test_paper_setting_lands_within_20_percent_of_the_published_figures():
    pred = cm.predict_paper()
    for mode, published in cm.PAPER_PUBLISHED.items():
        assert abs(pred[mode].tokens_per_s / published - 1) < 0.20, (mode, pred[mode].tokens_per_s, published)
    assert pred["ar"].tokens_per_s < pred["sd"].tokens_per_s < pred["ssd"].tokens_per_s


def test_choose_follows_the_costs():
    good, none = cm.Acceptance.geometric(0.8), cm.Acceptance([0.0] * 8)
    hits = cm.HitRate({1: 0.5, 3: 0.7})
    two_cores = flat_costs()  # one thread runs at half the speed of two, as on this machine
    two_cores.target[1], two_cores.draft[1] = two_cores.target[2].scaled(2), two_cores.draft[2].scaled(2)
    assert cm.choose(two_cores, good, hits, W, cores=2).best.mode == "sd"
    choice = cm.choose(flat_costs(), none, hits, W, cores=2)
    assert choice.best.mode == "ar" and "AR" in choice.reason
    assert cm.choose(flat_costs(), None, None, W, cores=2).best.mode == "ar"
    # a draft that costs as much as the target: speculation loses
    assert cm.choose(flat_costs(draft_s=0.010), cm.Acceptance.geometric(0.3), hits, W, cores=2).best.mode == "ar"
    # a barely faster SD is within the margin: AR
    slow = flat_costs(draft_s=0.0095)
    close = cm.choose(slow, cm.Acceptance([0.97, 0.0]), None, W, cores=2, ks=[1], margin=0.05)
    assert close.best.mode == "ar"
    # step times at 1 thread half as fast, draft cheap, every outcome predicted: SSD on (1 + 1) beats SD on 2
    t1, t2 = cm.StepTimes({1: 0.010, 64: 0.010}), cm.StepTimes({1: 0.009, 64: 0.009})
    d = cm.StepTimes({1: 0.0004, 64: 0.0004})
    costs = cm.Costs(target={1: t1, 2: t2}, draft={1: d, 2: d})
    best = cm.choose(costs, good, cm.HitRate({1: 1.0}), W, cores=2).best
    assert best.mode == "ssd"


def test_choose_weighs_other_drafters():
    """`extra` candidates (prompt lookup with the draft, trees) compete with AR, SD and SSD on their predictions;
    the winner's drafter is what auto installs."""
    costs = flat_costs(draft_s=0.004)
    weak = cm.Acceptance.geometric(0.3)  # the draft alone: SD loses to AR
    assert cm.choose(costs, weak, None, W, cores=2).best.mode == "ar"
    lookup = [cm.predict_sd(costs, cm.Acceptance.geometric(0.8), k, W, 2, 0.3, "ngram+draft") for k in (2, 4)]
    choice = cm.choose(costs, weak, None, W, cores=2, extra=lookup)
    assert (choice.best.mode, choice.best.drafter, choice.best.k) == ("sd", "ngram+draft", 4)
    assert choice.reason.startswith("SD n-gram+draft K=4 predicted")
    tree = cm.predict_tree(costs, cm.TreeShape(4.0, 15, 4, 0.5), 3, W, 2)  # 250 tok/s against 227
    choice = cm.choose(costs, weak, None, W, cores=2, extra=[*lookup, tree])
    assert (choice.best.mode, choice.best.drafter) == ("tree", "tree") and "SD trees K=3" in choice.reason
    assert "next best SD n-gram+draft K=4" in choice.reason


def test_auto_installs_the_stored_drafter(default_model_dir, tmp_path, monkeypatch):
    """A stored choice of prompt lookup with the draft (or trees) is built as such, with no calibration run."""
    from paperclub.engine.llm import LLM
    from paperclub.speculative.ngram import CombinedProposer
    from paperclub.speculative.tree_proposer import TreeProposer

    monkeypatch.setenv("PAPERCLUB_HOME", str(tmp_path))
    monkeypatch.setattr(auto, "calibrate_and_choose", lambda *a, **k: pytest.fail("calibrated again"))
    for drafter, kind in [("ngram+draft", CombinedProposer), ("tree", TreeProposer)]:
        monkeypatch.setattr(auto, "load", lambda key, d=drafter: auto.AutoChoice("sd", 5, None, "stored", {}, d))
        llm = LLM(model=str(default_model_dir), draft="default", dtype="float32", device="cpu")
        assert (llm.mode, llm.k) == ("sd", 5) and isinstance(llm.engine.decoder.proposer, kind)
        assert llm.draft_name.startswith("ngram+") and llm.draft_dir is not None
    monkeypatch.setattr(auto, "load", lambda key: auto.AutoChoice("sd", 3, None, "stored", {}, "draft"))
    llm = LLM(model=str(default_model_dir), draft="ngram+default", dtype="float32", device="cpu")
    assert (llm.k, llm.draft_name) == (3, str(llm.draft_dir))  # the draft's chain alone, though ngram+ was asked


def test_mode_sd_without_a_draft_is_prompt_lookup_with_the_shipped_draft(default_model_dir):
    from paperclub.engine.llm import LLM
    from paperclub.speculative.ngram import CombinedProposer

    llm = LLM(model=str(default_model_dir), mode="sd", dtype="float32", device="cpu")
    assert isinstance(llm.engine.decoder.proposer, CombinedProposer)
    assert llm.draft_name == f"ngram+{llm.draft_dir}"
    alone = LLM(model=str(default_model_dir), mode="sd", draft="default", dtype="float32", device="cpu")
    assert alone.draft_dir == llm.draft_dir and alone.draft_name == str(llm.draft_dir)


def test_mode_sd_without_a_draft_on_a_target_that_ships_none_is_prompt_lookup_alone(tmp_path):
    from paperclub.engine.llm import LLM
    from paperclub.engine.sampling import SamplingParams
    from tests.distill.test_train import make_target

    target = make_target(tmp_path / "target")
    sd = LLM(model=str(target), mode="sd", k=3, dtype="float32", device="cpu")
    assert (sd.mode, sd.draft_dir, sd.draft_name) == ("sd", None, "ngram")
    ar = LLM(model=str(target), mode="ar", dtype="float32", device="cpu")
    params = SamplingParams(max_tokens=12, ignore_eos=True)
    assert sd.generate(["a b a b a b"], params)[0].token_ids == ar.generate(["a b a b a b"], params)[0].token_ids


def test_bad_inputs_are_user_errors():
    with pytest.raises(UserError):
        cm.StepTimes({0: 0.01})
    with pytest.raises(UserError):
        cm.Acceptance([1.2])
    with pytest.raises(UserError):
        cm.HitRate({1: 2.0})
    with pytest.raises(UserError):
        cm.Workload(new_tokens=0)
    with pytest.raises(UserError, match="no target step times"):
        cm.predict_ar(cm.Costs(target={2: cm.StepTimes({1: 0.01})}, draft={}), W, 1)


def test_auto_choice_round_trips_through_its_store(tmp_path, monkeypatch):
    monkeypatch.setenv("PAPERCLUB_HOME", str(tmp_path))
    key = {"target": "t", "draft": "d", "threads": 2}
    choice = auto.AutoChoice("sd", 4, None, "because", {"AR": 1.0})
    assert auto.load(key) is None
    auto.save(key, choice, {})
    assert auto.load(key) == choice
    assert auto.load(key | {"threads": 1}) is None


def test_the_calibration_key_follows_the_drafts_weights_not_its_docs(default_model_dir, tmp_path, monkeypatch):
    """A draft retrained and saved over the old one (same path) must be calibrated again."""
    from paperclub.engine.llm import LLM
    from paperclub.models.draft import default_draft_dir, weights_digest

    keys = []
    monkeypatch.setattr(auto, "load", lambda key: keys.append(key) or auto.AutoChoice("ar", 0, None, "stored", {}))
    LLM(model=str(default_model_dir), draft="default", dtype="float32", device="cpu")
    shipped = default_draft_dir()
    assert keys[0]["draft_weights"] == weights_digest(shipped) and keys[0]["draft"] == str(shipped)

    d = tmp_path / "draft"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"weights-1")
    (d / "README.md").write_text("v1")
    first = weights_digest(d)
    (d / "README.md").write_text("v2, same weights")
    assert weights_digest(d) == first
    (d / "model.safetensors").write_bytes(b"weights-2")
    assert weights_digest(d) != first


@pytest.mark.slow
def test_auto_on_the_default_pair_picks_what_measures_fastest(default_model_dir, tmp_path, monkeypatch):
    """Calibrate from scratch, then measure AR, SD with each drafter (the draft's chain, prompt lookup with the
    draft, trees) and SSD on held-out prompts: auto's pick must not be measurably slower than the fastest (5% for
    noise)."""
    from paperclub.bench.bench import OurSystem, load_prompts
    from paperclub.engine.llm import LLM

    monkeypatch.setenv("PAPERCLUB_HOME", str(tmp_path))  # a fresh calibration (models come from default_model_dir)
    from paperclub.models.draft import default_draft_for
    from paperclub.speculative.tree_proposer import TreeConfig

    draft = default_draft_for(default_model_dir)
    picked = LLM(model=str(default_model_dir), draft=str(draft), dtype="bfloat16", device="cpu")
    k = picked.k if picked.mode != "ar" else 4
    common = {"model": str(default_model_dir), "dtype": "bfloat16", "device": "cpu"}
    systems = {"ar": LLM(mode="ar", **common),
               "sd-draft": LLM(mode="sd", draft=str(draft), k=k, **common),
               "sd-ngram+draft": LLM(mode="sd", draft="ngram+default", k=k, **common),
               "sd-tree": LLM(mode="sd", draft="ngram+default", k=auto.TREE_K, tree=TreeConfig(), **common),
               "ssd": LLM(mode="ssd", k=k, **common)}
    ids = [systems["ar"].encode(p) for p in load_prompts("instruct", 4)]
    runs = {n: [] for n in systems}
    for _ in range(3):
        for n, s in systems.items():
            r = OurSystem(s, n).run(ids, 1, 48, 0.0, 0)
            runs[n].append(r.tokens / r.wall_s)
    for s in [*systems.values(), picked]:
        s.close()
    tps = {n: statistics.median(v) for n, v in runs.items()}
    name = picked.mode if picked.mode != "sd" else f"sd-{picked.auto_choice.drafter}"
    assert tps[name] >= 0.95 * max(tps.values()), (picked.auto_choice, tps)
