"""The BTMLM generation diagnostic: its statistics, and generation from a (random) run."""

import types

import numpy as np
import pytest

from ernie_m_jax import files
from experiments import btmlm_generation as diag


def test_piece_statistics_score_against_the_reference_and_the_source():
    stats = diag.piece_statistics(
        generated=[[5, 6, 6, 9], [7]], sources=[[5, 8], [7, 1]], references=[[6, 9], [3]])
    # Row 1: 3 of 4 pieces in the reference, 1 copied, 3 distinct; row 2: 0, 1, 1.
    assert stats["reference_precision"] == pytest.approx((3 / 4 + 0) / 2)
    # Clipped: the reference holds one 6, so the second 6 of row 1 does not count.
    assert stats["clipped_precision"] == pytest.approx((2 / 4 + 0) / 2)
    assert stats["source_clipped_precision"] == pytest.approx(0.0)
    # Recall: row 1 matches both reference pieces (6 once, 9), row 2 none of its one.
    assert stats["clipped_recall"] == pytest.approx((2 / 2 + 0 / 1) / 2)
    assert stats["copied"] == pytest.approx((1 / 4 + 1) / 2)
    assert stats["distinct"] == pytest.approx((3 / 4 + 1) / 2)
    assert stats["source_precision"] == pytest.approx(0.0)
    assert stats["length_ratio"] == pytest.approx(((4 + 1) / 2) / ((2 + 1) / 2))
    assert stats["messages"] == 2
    with pytest.raises(ValueError, match="as many generated rows"):
        diag.piece_statistics([[1]], [[1], [2]], [[1]])


@pytest.mark.slow
def test_generation_fills_one_placeholder_per_source_piece_in_the_target_language(
        tiny_config, tiny_params):
    from ernie_m_jax.configs import BTMLMConfig, SpecialTokens

    tokens = SpecialTokens()
    run = types.SimpleNamespace(
        tokens=tokens, model=tiny_config, params=tiny_params,
        experiment=types.SimpleNamespace(btmlm=BTMLMConfig()))
    rows = [[10, 11, 12], [13], [14, 15]]
    greedy = diag.generate(run, rows, source_language=1, target_language=2, temperature=0.0,
                           batch_size=2)
    assert [len(g) for g in greedy] == [3, 1, 2]  # placeholder ratio 1: one per source piece
    specials = set(tokens.all_ids)
    assert not specials & {t for g in greedy for t in g}
    assert greedy == diag.generate(run, rows, 1, 2, temperature=0.0, batch_size=3)
    sampled = diag.generate(run, rows, 1, 2, temperature=1.0, seed=3)
    assert [len(s) for s in sampled] == [3, 1, 2] and sampled != greedy
    assert np.all([0 <= t < tiny_config.vocab_size for s in sampled for t in s])
    # Length factors: from language 1 (2 pieces per pivot piece) into 2 (1), half as many.
    halved = diag.generate(run, [[10, 11, 12, 13]], 1, 2, temperature=0.0,
                           length_factors=(1.0, 2.0, 1.0))
    assert [len(h) for h in halved] == [2]
    # Framed as a pair's second sentence, the separators are not reported as generated.
    framed = diag.generate(run, rows, 1, 2, temperature=0.0, pair_separators=True)
    assert [len(f) for f in framed] == [3, 1, 2]
    assert not specials & {t for f in framed for t in f}


def test_committed_generation_table_matches_the_committed_diagnostics():
    from experiments.paper_in_miniature import README

    knobs = README.parent / "results" / "paper_in_miniature" / "generation" / "knobs"
    table = diag.format_table(knobs)
    block = files.read_marked_block(README, "generation-knobs")
    assert block == table
    # A row is its JSON's mean over the languages with parallel data.
    import json

    plain = json.loads((knobs / "plain.json").read_text())
    per_language = plain["temperatures"]["1.0"]
    clipped = np.mean([per_language[lang]["clipped_precision"]
                       for lang in plain["languages"]["parallel"]])
    assert f"| plain | 1.0 | {clipped:.3f} / " in table


def test_format_table_without_diagnostics_says_so(tmp_path):
    assert diag.format_table(tmp_path) == "(no diagnostics yet)"
